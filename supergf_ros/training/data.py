"""Training data sources, each giving images with soft labels (field-of-view overlap).

An `ImageSet` is one scene: image paths, an (N, N) overlap matrix over them, and which images act
as queries and as database. Images of different sets never overlap (label 0), so other scenes
provide easy negatives. Sources:

- `load_project_dataset(root)`: ``images/`` + COLMAP model with poses. Overlap from exact depth
  maps in ``depth/<stem>.npy`` when every image has one (synthetic scenes), else from co-visible
  3D points when the model has points, else from camera frusta and a scene depth estimated from
  the poses (`labels.estimate_scene_depths`).
- `load_built_map(map_path, images_dir)`: a map from ``supergf-ros build-map``; overlap from the
  co-visibility of its triangulated points (self-supervised fine-tuning on the robot's own map).
- `load_msls(root, cities)`: the Mapillary SLS layout, overlap from UTM + compass heading.
- `load_image_sequence(folder, window)`: a folder of time-ordered frames without poses (a mapping
  run exported from a rosbag); overlap from frame distance (`labels.overlap_from_sequence`).
- `load_source(spec)`: dispatch on a path (map file, MSLS root, dataset folder, image sequence).

`sample_candidates` draws the per-query candidate lists (positives, soft negatives, negatives).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import labels as _labels

POSITIVE_THRESHOLD = 0.5


@dataclass
class ImageSet:
    """One scene's images and their pairwise soft labels.

    Attributes:
        name: a label for logs.
        paths: (N,) image files.
        overlap: (N, N) float32 symmetric soft labels in [0, 1].
        query_ids: indices into `paths` used as training queries.
        db_ids: indices into `paths` that may be ranked for a query (the query itself never is).
    """

    name: str
    paths: list[Path]
    overlap: np.ndarray
    query_ids: np.ndarray
    db_ids: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.overlap = np.asarray(self.overlap, np.float32)
        if self.overlap.shape != (n, n):
            raise ValueError(f"{self.name}: overlap must be ({n}, {n}), got {self.overlap.shape}")
        self.query_ids = np.asarray(self.query_ids, np.int64)
        self.db_ids = np.asarray(self.db_ids, np.int64)
        for ids, what in ((self.query_ids, "query_ids"), (self.db_ids, "db_ids")):
            if len(ids) and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"{self.name}: {what} out of range [0, {n})")


def _depth_file(root: Path, name: str) -> Path | None:
    stem = Path(name).with_suffix("")
    for cand in (root / "depth" / f"{stem}.npy", root / "depth" / f"{Path(name).stem}.npy"):
        if cand.is_file():
            return cand
    return None


def load_project_dataset(
    root: str | Path,
    names: Sequence[str] | None = None,
    *,
    depth: str = "auto",
    grid: tuple[int, int] = (32, 24),
) -> ImageSet:
    """A dataset in the project layout as an ImageSet (all images are queries and database).

    Args:
        root: dataset folder (``images/`` + ``sparse_gt/`` or ``sparse/``).
        names: restrict to these image names (default: all images with a pose).
        depth: "auto" (depth maps, else points, else estimated), "points", "maps" or "estimate".
        grid: pixel grid for the depth-based overlap.
    """
    import pycolmap

    from ..datasets import Dataset

    if depth not in ("auto", "points", "maps", "estimate"):
        raise ValueError(f"depth must be auto, points, maps or estimate, got '{depth}'")
    root = Path(root)
    ds = Dataset(root)
    if not ds.has_model:
        raise ValueError(
            f"dataset {root} has no COLMAP model (sparse_gt/ or sparse/): training needs poses"
        )
    names = ds.check_names(names if names is not None else sorted(ds.poses), need_pose=True)
    method = depth
    if method == "auto":  # exact depth maps, else co-visible points, else estimated depth
        if all(_depth_file(root, n) for n in names):
            method = "maps"
        elif pycolmap.Reconstruction(str(ds.model_dir)).num_points3D() > 0:
            method = "points"
        else:
            method = "estimate"
    if method == "points":
        rec = pycolmap.Reconstruction(str(ds.model_dir))
        by_name = {im.name: im for im in rec.images.values()}
        ids = [
            np.array([p.point3D_id for p in by_name[n].points2D if p.has_point3D()], np.int64)
            for n in names
        ]
        if sum(len(i) for i in ids) == 0:
            raise ValueError(f"the model of {root} has no observed 3D points; use depth='estimate'")
        overlap = _labels.overlap_from_points(ids)
    else:
        cameras = [ds.camera(n) for n in names]
        poses = [ds.cam_from_world(n) for n in names]
        if method == "maps":
            files = [_depth_file(root, n) for n in names]
            missing = [n for n, f in zip(names, files) if f is None]
            if missing:
                raise ValueError(f"no depth map depth/<stem>.npy in {root} for {missing[:5]}")
            depths = [np.load(f).astype(np.float32) for f in files]
        else:
            depths = list(_labels.estimate_scene_depths(poses))
        overlap = _labels.overlap_from_depth(cameras, poses, depths, grid=grid)
    ids = np.arange(len(names))
    return ImageSet(
        name=root.name,
        paths=[ds.image_path(n) for n in names],
        overlap=overlap,
        query_ids=ids,
        db_ids=ids,
        info={"labels": method, "names": list(names)},
    )


def load_built_map(map_path: str | Path, images_dir: str | Path) -> ImageSet:
    """A map from ``supergf-ros build-map`` as an ImageSet: overlap from co-visible 3D points.

    Args:
        map_path: the map file (HDF5).
        images_dir: folder holding the keyframe images under their map names.
    """
    from ..mapping.map_format import read_map

    data = read_map(map_path)
    images_dir = Path(images_dir)
    names = [str(n) for n in data.keyframe_names]
    paths = [images_dir / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} keyframe image(s) of map {map_path} not found under {images_dir} "
            f"(e.g. {missing[0]}); pass the image folder the map was built from"
        )
    point_ids = []
    for i in range(len(names)):
        pid = np.asarray(data.point3D_ids_of(i))
        point_ids.append(pid[pid >= 0])
    if sum(len(p) for p in point_ids) == 0:
        raise ValueError(f"map {map_path} has no triangulated points: no co-visibility labels")
    ids = np.arange(len(names))
    return ImageSet(
        name=Path(map_path).stem,
        paths=paths,
        overlap=_labels.overlap_from_points(point_ids),
        query_ids=ids,
        db_ids=ids,
        info={"labels": "map-covisibility", "names": names},
    )


def _read_msls_split(folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Images, (N, 2) UTM easting/northing and (N,) compass angles of one MSLS query/database
    folder (``images/<key>.jpg``, ``postprocessed.csv`` with utm, ``raw.csv`` with ca)."""

    def read(path: Path) -> list[dict]:
        if not path.is_file():
            raise ValueError(f"MSLS folder {folder} lacks {path.name}")
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    post = {r["key"]: r for r in read(folder / "postprocessed.csv")}
    raw = {r["key"]: r for r in read(folder / "raw.csv")}
    keys = [k for k in post if k in raw and (folder / "images" / f"{k}.jpg").is_file()]
    if not keys:
        raise ValueError(f"MSLS folder {folder}: no key with an image, utm and compass angle")
    east_key = "easting" if "easting" in post[keys[0]] else "utm_east"
    north_key = "northing" if "northing" in post[keys[0]] else "utm_north"
    xy = np.array([[float(post[k][east_key]), float(post[k][north_key])] for k in keys])
    heading = np.array([float(raw[k]["ca"]) for k in keys])
    return [folder / "images" / f"{k}.jpg" for k in keys], xy, heading


def load_msls(
    root: str | Path,
    cities: Sequence[str] | None = None,
    *,
    fov_deg: float = 90.0,
    radius_m: float = 50.0,
) -> list[ImageSet]:
    """Mapillary Street-Level Sequences: one ImageSet per city.

    Layout: ``root/train_val/<city>/{query,database}/{images/<key>.jpg, postprocessed.csv
    (key, easting, northing, ...), raw.csv (key, lon, lat, ca, ...)}`` (``root`` may also be the
    ``train_val`` folder itself). Queries come from ``query/``, the database from ``database/``;
    labels are `labels.msls_overlap` of UTM positions and compass headings.
    """
    root = Path(root)
    base = root / "train_val" if (root / "train_val").is_dir() else root
    available = (
        sorted(d.name for d in base.iterdir() if (d / "query").is_dir()) if base.is_dir() else []
    )
    if not available:
        raise ValueError(f"{root} is not an MSLS folder (expected train_val/<city>/query/)")
    cities = list(cities) if cities else available
    unknown = sorted(set(cities) - set(available))
    if unknown:
        raise ValueError(f"MSLS cities {unknown} not found in {base}; available: {available}")
    sets = []
    for city in cities:
        q_paths, q_xy, q_head = _read_msls_split(base / city / "query")
        d_paths, d_xy, d_head = _read_msls_split(base / city / "database")
        xy = np.concatenate([q_xy, d_xy])
        head = np.concatenate([q_head, d_head])
        overlap = _labels.msls_overlap(xy, head, xy, head, fov_deg=fov_deg, radius_m=radius_m)
        overlap = 0.5 * (overlap + overlap.T)
        np.fill_diagonal(overlap, 1.0)
        nq = len(q_paths)
        sets.append(
            ImageSet(
                name=f"msls-{city}",
                paths=q_paths + d_paths,
                overlap=overlap,
                query_ids=np.arange(nq),
                db_ids=np.arange(nq, nq + len(d_paths)),
                info={"labels": "msls-utm-heading"},
            )
        )
    return sets


def load_image_sequence(folder: str | Path, window: float) -> ImageSet:
    """A time-ordered image sequence (frames sorted by file name) as an ImageSet.

    Args:
        folder: the frames, in ``folder/images/`` or directly in ``folder``; names must sort in
            time order (e.g. zero-padded frame numbers or timestamps).
        window: frame distance at which the overlap label reaches 0 (see
            `labels.overlap_from_sequence`); choose it from the frame rate and speed, e.g. the
            number of frames over which the view changes completely.
    """
    from ..datasets.colmap_dataset import IMAGE_EXTENSIONS

    folder = Path(folder)
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    paths = sorted(
        p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if len(paths) < 3:
        raise ValueError(
            f"image sequence {image_dir} needs at least 3 frames ({', '.join(IMAGE_EXTENSIONS)}), "
            f"found {len(paths)}"
        )
    ids = np.arange(len(paths))
    return ImageSet(
        name=folder.name,
        paths=paths,
        overlap=_labels.overlap_from_sequence(len(paths), window),
        query_ids=ids,
        db_ids=ids,
        info={"labels": "sequence", "window": float(window), "names": [p.name for p in paths]},
    )


def load_source(
    spec: str | Path,
    images_dir: str | Path | None = None,
    sequence_window: float | None = None,
) -> list[ImageSet]:
    """ImageSets from a path: a map file (.h5, needs `images_dir`), an MSLS root, a dataset with a
    COLMAP model, or (with `sequence_window`) a folder of time-ordered frames without a model."""
    from ..datasets import Dataset

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"training data not found: {path}")
    if path.is_file():
        if images_dir is None:
            raise ValueError(f"map {path}: pass the folder of its keyframe images (--map-images)")
        return [load_built_map(path, images_dir)]
    if (path / "train_val").is_dir() or any(
        (d / "query").is_dir() and (d / "database").is_dir() for d in path.iterdir() if d.is_dir()
    ):
        return load_msls(path)
    if not ((path / "images").is_dir() and Dataset(path).has_model):
        if sequence_window is None:
            raise ValueError(
                f"{path} has no COLMAP model (sparse_gt/ or sparse/), so no overlap labels: give "
                "a dataset with poses, a built map (.h5 with --map-images), or, for frames of "
                "one recording in time order, a sequence window (--sequence-window FRAMES)"
            )
        return [load_image_sequence(path, sequence_window)]
    return [load_project_dataset(path)]


@dataclass
class Sample:
    """One training query: global image indices of the query and its candidates with labels."""

    query: int
    candidates: np.ndarray  # (C,) global image indices
    labels: np.ndarray  # (C,) soft labels


class CandidateSampler:
    """Per-query candidate lists over several ImageSets (global indexing across sets).

    Per query: `num_positives` with S >= `positive_threshold`, `num_soft_negatives` with
    0 < S < threshold, `num_negatives` with S = 0 (from the same scene or, as easy negatives,
    from other scenes). Queries without any positive are not used.
    """

    def __init__(
        self,
        sets: Sequence[ImageSet],
        num_positives: int = 1,
        num_soft_negatives: int = 2,
        num_negatives: int = 100,
        positive_threshold: float = POSITIVE_THRESHOLD,
    ) -> None:
        if not sets:
            raise ValueError("no training data: give at least one image set")
        if num_positives < 1 or num_soft_negatives < 0 or num_negatives < 0:
            raise ValueError("need num_positives >= 1, num_soft_negatives >= 0, num_negatives >= 0")
        self.sets = list(sets)
        self.num_positives = num_positives
        self.num_soft_negatives = num_soft_negatives
        self.num_negatives = num_negatives
        self.threshold = positive_threshold
        self.offsets = np.cumsum([0] + [len(s.paths) for s in self.sets])
        self.paths = [p for s in self.sets for p in s.paths]
        self.queries: list[tuple[int, int]] = []  # (set index, local query index)
        for k, s in enumerate(self.sets):
            for q in s.query_ids:
                row = s.overlap[q, s.db_ids]
                if ((row >= self.threshold) & (s.db_ids != q)).any():
                    self.queries.append((k, int(q)))
        if not self.queries:
            raise ValueError(
                f"no query has a positive (overlap >= {self.threshold}) in the training data"
            )

    def __len__(self) -> int:
        return len(self.queries)

    def label(self, a: int, b: int) -> float:
        """Soft label between two global image indices (0 across scenes)."""
        ka = int(np.searchsorted(self.offsets, a, side="right") - 1)
        kb = int(np.searchsorted(self.offsets, b, side="right") - 1)
        if ka != kb:
            return 0.0
        o = self.offsets[ka]
        return float(self.sets[ka].overlap[a - o, b - o])

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        """Candidates for query number `index` drawn with `rng`."""
        k, q = self.queries[index]
        s, off = self.sets[k], int(self.offsets[k])
        db = s.db_ids[s.db_ids != q]
        row = s.overlap[q, db]
        pos = db[row >= self.threshold]
        soft = db[(row > 0) & (row < self.threshold)]
        neg = db[row <= 0]

        def pick(pool: np.ndarray, n: int) -> np.ndarray:
            return rng.choice(pool, size=min(n, len(pool)), replace=False) if n else pool[:0]

        chosen = [pick(pos, self.num_positives) + off, pick(soft, self.num_soft_negatives) + off]
        negs = pick(neg, self.num_negatives) + off
        short = self.num_negatives - len(negs)
        if short > 0 and len(self.sets) > 1:  # easy negatives from other scenes
            others = np.concatenate(
                [
                    self.sets[j].db_ids + self.offsets[j]
                    for j in range(len(self.sets))
                    if j != k and len(self.sets[j].db_ids)
                ]
            )
            negs = np.concatenate([negs, pick(others, short)])
        cand = np.concatenate([*chosen, negs]).astype(np.int64)
        lab = np.array([self.label(off + q, int(c)) for c in cand], np.float32)
        return Sample(query=off + q, candidates=cand, labels=lab)
