"""Maps: the HDF5 map format, pair selection, triangulation and the map builder.

Heavy dependencies (pycolmap, torch) load only when a builder function runs.
"""

from .map_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    RUNTIME_OPTIONS,
    MapData,
    MapFormatError,
    read_map,
    strip_runtime_options,
    write_map,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "RUNTIME_OPTIONS",
    "MapData",
    "MapFormatError",
    "read_map",
    "strip_runtime_options",
    "write_map",
]
