"""Datasets in the project layout (images/ + COLMAP model), query lists and results files."""

from .colmap_dataset import (
    Dataset,
    atomic_write_text,
    read_image_list,
    read_results,
    write_image_list,
    write_results,
)

__all__ = [
    "Dataset",
    "atomic_write_text",
    "read_image_list",
    "read_results",
    "write_image_list",
    "write_results",
]
