"""Datasets in the project layout, query lists and results files.

A *dataset* is a folder with ``images/<name>`` and, optionally, a COLMAP model (text or binary) in
``sparse_gt/`` (or ``sparse/``) holding the cameras and the ``cam_from_world`` pose of each image.
Names are paths relative to ``images/`` (they may contain sub-folders).

Results files hold one line per localized query, ``name qw qx qy qz tx ty tz`` (cam_from_world),
as hloc writes them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import numpy as np

from ..geometry import Camera, Pose
from ..io_utils import atomic_write_text as atomic_write_text  # re-exported by the package

MODEL_DIRS = ("sparse_gt", "sparse", "sparse/0")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")


def _find_model_dir(root: Path) -> Path | None:
    for sub in MODEL_DIRS:
        d = root / sub
        if (d / "images.txt").exists() or (d / "images.bin").exists():
            return d
    return None


class Dataset:
    """A dataset folder: ``images/`` plus an optional COLMAP model with poses.

    Args:
        root: the dataset folder.
        model_dir: the COLMAP model folder; default: the first of sparse_gt/, sparse/, sparse/0/
            that holds a model (None if there is none: images only).
    """

    def __init__(self, root: str | Path, model_dir: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        self.images_dir = self.root / "images"
        if not self.images_dir.is_dir():
            raise ValueError(
                f"dataset {self.root} has no images/ folder (expected DATASET/images/<name>)"
            )
        self.model_dir = Path(model_dir) if model_dir is not None else _find_model_dir(self.root)
        self.cameras: dict[str, Camera] = {}
        self.poses: dict[str, Pose] = {}
        if self.model_dir is not None:
            self._load_model()

    def _load_model(self) -> None:
        import pycolmap

        try:
            rec = pycolmap.Reconstruction(str(self.model_dir))
        except Exception as err:  # pycolmap raises RuntimeError/ValueError on bad models
            raise ValueError(f"cannot read COLMAP model in {self.model_dir}: {err}") from err
        for image in rec.images.values():
            cam = image.camera
            self.cameras[image.name] = Camera(
                cam.model.name, int(cam.width), int(cam.height), tuple(cam.params)
            )
            if image.has_pose:
                self.poses[image.name] = Pose.from_pycolmap(image.cam_from_world())

    @property
    def has_model(self) -> bool:
        return self.model_dir is not None

    @property
    def names(self) -> list[str]:
        """Sorted image names: from the model if there is one, else the files in images/."""
        if self.cameras:
            return sorted(self.cameras)
        return sorted(
            p.relative_to(self.images_dir).as_posix()
            for p in self.images_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )

    def image_path(self, name: str) -> Path:
        path = self.images_dir / name
        if not path.is_file():
            raise ValueError(f"image '{name}' is not in dataset {self.root} (no file {path})")
        return path

    def camera(self, name: str) -> Camera:
        if name not in self.cameras:
            raise ValueError(
                f"image '{name}' has no camera in the model of dataset {self.root}"
                + ("" if self.has_model else " (the dataset has no COLMAP model)")
            )
        return self.cameras[name]

    def cam_from_world(self, name: str) -> Pose:
        if name not in self.poses:
            raise ValueError(f"image '{name}' has no pose in the model of dataset {self.root}")
        return self.poses[name]

    def read_image(self, name: str, grayscale: bool = False) -> np.ndarray:
        """The image as HxWx3 uint8 RGB (or HxW gray)."""
        import cv2

        from ..io_utils import decode_image_bytes

        path = self.image_path(name)
        flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
        if path.suffix.lower() in (
            ".jpg",
            ".jpeg",
            ".png",
        ):  # truncation is an error, not a warning
            image = decode_image_bytes(path.read_bytes(), f"image {path}", flags)
        else:
            image = cv2.imread(str(path), flags)
        if image is None:
            raise ValueError(f"cannot decode image {path}")
        return image if grayscale else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def check_names(self, names: Iterable[str], need_pose: bool = False) -> list[str]:
        """Validate that every name exists (file, camera, and pose if `need_pose`)."""
        names = list(names)
        if not names:
            raise ValueError("the list of image names is empty")
        missing = [n for n in names if not (self.images_dir / n).is_file()]
        if missing:
            raise ValueError(
                f"{len(missing)} image(s) missing from {self.images_dir}: {missing[:5]}"
            )
        if self.has_model:
            no_cam = [n for n in names if n not in self.cameras]
            if no_cam:
                raise ValueError(
                    f"{len(no_cam)} image(s) not in the COLMAP model {self.model_dir}: {no_cam[:5]}"
                )
        if need_pose:
            no_pose = [n for n in names if n not in self.poses]
            if no_pose:
                raise ValueError(f"{len(no_pose)} image(s) without pose: {no_pose[:5]}")
        return names


def _show(name: str, limit: int = 120) -> str:
    """`name` quoted for an error message, cut to `limit` characters."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} chars)"


def read_text_lines(path: str | Path, what: str = "file") -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank, non-'#' lines of a UTF-8 text file.

    Raises:
        FileNotFoundError: no such file (the message says which `what`).
        ValueError: not UTF-8 text (binary data), naming the file and the byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: not a UTF-8 text {what} (undecodable byte at offset {err.start}; "
            "binary data?)"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ValueError(f"{path}:{line}: not a text {what} (contains NUL bytes; binary data?)")
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((i, line))
    return out


def _check_name(
    path: Path, lineno: int, name: str, seen: dict[str, int], known, known_in: str
) -> None:
    if name in seen:
        raise ValueError(
            f"{path}:{lineno}: duplicate name {_show(name)} (first on line {seen[name]})"
        )
    seen[name] = lineno
    if known is not None and name not in known:
        raise ValueError(f"{path}:{lineno}: {_show(name)} is not in {known_in}")


def read_image_list(
    path: str | Path, known_names: Collection[str] | None = None, known_in: str = "the dataset"
) -> list[str]:
    """Image names, one per line (blank lines and '#' comments skipped; a trailing part after
    whitespace, e.g. intrinsics as in hloc query lists, is ignored).

    Raises ValueError naming the file and line for a duplicate name, a name not in
    `known_names` (when given; `known_in` says where they come from), or binary input.
    """
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, line in read_text_lines(path, "image list"):
        name = line.split()[0]
        _check_name(path, i, name, seen, known_names, known_in)
        names.append(name)
    if not names:
        raise ValueError(f"image list {path} is empty")
    return names


def write_image_list(path: str | Path, names: Iterable[str]) -> None:
    atomic_write_text(path, "".join(f"{n}\n" for n in names))


def format_results(poses: Mapping[str, Pose]) -> str:
    lines = []
    for name, pose in poses.items():
        if " " in name:
            raise ValueError(f"image name '{name}' contains a space; results files cannot hold it")
        q, t = pose.qvec, pose.tvec
        lines.append(name + " " + " ".join(f"{v:.10g}" for v in (*q, *t)) + "\n")
    return "".join(lines)


def write_results(path: str | Path, poses: Mapping[str, Pose]) -> None:
    """Write ``name qw qx qy qz tx ty tz`` lines (cam_from_world) atomically."""
    atomic_write_text(path, format_results(poses))


def read_results(
    path: str | Path, known_names: Collection[str] | None = None, known_in: str = "the dataset"
) -> dict[str, Pose]:
    """Read a results file into {name: cam_from_world}.

    Raises ValueError naming the file and line for a malformed line, a duplicate name, a name
    not in `known_names` (when given; `known_in` says where they come from) or binary input.
    """
    path = Path(path)
    poses: dict[str, Pose] = {}
    seen: dict[str, int] = {}
    for i, line in read_text_lines(path, "results file"):
        parts = line.split()
        if len(parts) != 8:
            raise ValueError(
                f"{path}:{i}: expected 'name qw qx qy qz tx ty tz', got {len(parts)} fields"
            )
        try:
            values = np.array([float(v) for v in parts[1:]])
            pose = Pose(values[:4], values[4:])
        except ValueError as err:
            raise ValueError(f"{path}:{i}: bad pose values: {err}") from err
        _check_name(path, i, parts[0], seen, known_names, known_in)
        poses[parts[0]] = pose
    return poses
