"""`supergf-ros eval-vpr DIR`: place-recognition Recall@1/5/10 of a global descriptor.

Layout (as `vpr/corridor`): ``DIR/query/*``, ``DIR/ref/*`` (images, sorted by name = index) and
``DIR/ground_truth_new.npy`` with rows ``(query_index, [matching reference indices])``.
Descriptors: a global aggregator over a local extractor (VLAD fits its codebook on the reference
images), or the raw-pixel baseline (`--raw-pixels`: 32x24 gray, mean-centred, cosine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.colmap_dataset import IMAGE_EXTENSIONS

RECALL_NS = (1, 5, 10)


def read_vpr_dataset(root: str | Path) -> tuple[list[Path], list[Path], list[list[int]]]:
    """(query paths, reference paths, positives per query) of a VPR folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VPR dataset folder not found: {root}")
    lists = []
    for sub in ("query", "ref"):
        d = root / sub
        if not d.is_dir():
            raise ValueError(f"VPR dataset {root} lacks the {sub}/ folder (expected query/, ref/)")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"no images in {d}")
        lists.append(files)
    gt_path = root / "ground_truth_new.npy"
    if not gt_path.is_file():
        raise ValueError(f"VPR dataset {root} lacks ground_truth_new.npy")
    positives = read_ground_truth(gt_path, len(lists[0]), len(lists[1]))
    return lists[0], lists[1], positives


def _index(value: Any, path: Path, what: str) -> int:
    """A plain integer index (Python/numpy int or integral float), else a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, np.integer, float, np.floating)
    ):
        raise ValueError(f"{path}: {what} must be an integer, got {type(value).__name__}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise ValueError(f"{path}: {what} must be an integer, got {value!r}")
    return int(value)


def read_ground_truth(path: str | Path, num_queries: int, num_refs: int) -> list[list[int]]:
    """Positives per query from ``ground_truth_new.npy`` (rows ``(query, [references])``).

    The file is read without running code: a plain integer array of shape (N, 2), or an object
    array whose pickle only rebuilds numpy arrays of plain ints and lists (`load_npy_safely`);
    a file naming anything else (a planted payload) is refused with a ValueError.
    """
    from ..io_utils import load_npy_safely

    path = Path(path)
    gt = load_npy_safely(path)
    if gt.ndim != 2 or gt.shape[1] != 2:
        raise ValueError(
            f"{path}: expected rows (query_index, [reference indices]), shape {gt.shape}"
        )
    positives: list[list[int]] = [[] for _ in range(num_queries)]
    for row in gt:
        q = _index(row[0], path, "a query index")
        if not 0 <= q < num_queries:
            raise ValueError(f"{path}: query index {q} out of range (0..{num_queries - 1})")
        cell = row[1]
        items = cell.tolist() if isinstance(cell, np.ndarray) else cell
        if not isinstance(items, (list, tuple)):
            items = [items]
        refs = [_index(r, path, f"a reference index of query {q}") for r in items]
        if any(not 0 <= r < num_refs for r in refs):
            raise ValueError(f"{path}: reference index out of range for query {q}")
        positives[q] = refs
    return positives


def _read(path: Path, grayscale: bool) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path}")
    return image if grayscale else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def raw_pixel_descriptors(paths: list[Path], size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """(N, w*h) unit descriptors: gray image area-resized to `size`, mean-centred."""
    import cv2

    out = []
    for p in paths:
        x = cv2.resize(_read(p, True), size, interpolation=cv2.INTER_AREA).astype(np.float32)
        x = x.ravel() - x.mean()
        out.append(x / max(float(np.linalg.norm(x)), 1e-12))
    return np.stack(out)


def evaluate_vpr(
    root: str | Path,
    *,
    features: str = "superpoint",
    extractor_conf: dict | None = None,
    global_name: str | None = "vlad",
    global_conf: dict | None = None,
    raw_pixels: bool = False,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Recall@1/5/10 on a VPR folder. Returns {"recall": {"1","5","10"}, "method",
    "num_queries", "num_references"}.

    `backend` / `device` run SuperPoint and SuperGF unless `extractor_conf` / `global_conf`
    name a backend ("auto": the fastest available, see `select_backend`)."""
    from ..localization.retrieval import GlobalIndex
    from .metrics import recall_at_n

    queries, refs, positives = read_vpr_dataset(root)
    if raw_pixels:
        method = "raw-pixels-32x24"
        q_desc, r_desc = raw_pixel_descriptors(queries), raw_pixel_descriptors(refs)
    else:
        from ..features import create_extractor
        from ..mapping.build_map import apply_backend, default_global_name
        from ..models.aggregators import create_aggregator

        global_name = global_name or default_global_name(features)
        method = f"{features}+{global_name}"
        extractor_conf, global_conf = dict(extractor_conf or {}), dict(global_conf or {})
        apply_backend(features, global_name, extractor_conf, global_conf, backend, device)
        extractor = create_extractor(features, **extractor_conf)
        aggregator = create_aggregator(global_name, **{"features": features, **global_conf})
        paths = refs + queries
        if progress:
            from tqdm import tqdm

            paths = tqdm(paths, desc="features", unit="img")
        feats = [extractor.extract(_read(p, False)) for p in paths]
        ref_feats, q_feats = feats[: len(refs)], feats[len(refs) :]
        if aggregator.needs_fit:
            aggregator.fit(ref_feats)
        r_desc, q_desc = aggregator.batch(ref_feats), aggregator.batch(q_feats)
    index = GlobalIndex(r_desc, kind="flat")
    k = min(max(RECALL_NS), len(refs))
    ranked = np.stack([index.search(q, k)[0] for q in q_desc])
    recall = recall_at_n(ranked, positives, [n for n in RECALL_NS if n <= k])
    return {
        "recall": {str(n): v for n, v in recall.items()},
        "method": method,
        "num_queries": len(queries),
        "num_references": len(refs),
    }


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-vpr",
        help="place recognition Recall@1/5/10 of a global descriptor",
        description="Recall@N on a folder with query/, ref/ and ground_truth_new.npy.",
    )
    p.add_argument("dataset", type=Path, help="VPR folder (query/, ref/, ground_truth_new.npy)")
    p.add_argument("--features", default="superpoint", choices=["superpoint", "sift"])
    p.add_argument(
        "--global",
        dest="global_name",
        help="supergf-sparse, supergf-dense, vlad, gem (default: best available)",
    )
    p.add_argument("--raw-pixels", action="store_true", help="raw 32x24 pixel baseline instead")
    p.add_argument("--superpoint-weights", type=Path, help="default: $SUPERGF_SUPERPOINT_WEIGHTS")
    p.add_argument("--supergf-weights", type=Path, help="default: the shipped checkpoint")
    p.add_argument("--max-keypoints", type=int, help="local features per image")
    from ..mapping.build_map import add_backend_arguments

    add_backend_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    extractor_conf: dict[str, Any] = {}
    if args.features == "superpoint" and args.superpoint_weights is not None:
        extractor_conf["weights"] = str(args.superpoint_weights)
    if args.max_keypoints is not None:
        extractor_conf["max_keypoints"] = args.max_keypoints
    global_conf = {}
    if args.supergf_weights is not None:
        global_conf["weights"] = str(args.supergf_weights)
    out = evaluate_vpr(
        args.dataset,
        features=args.features,
        extractor_conf=extractor_conf,
        global_name=args.global_name,
        global_conf=global_conf,
        raw_pixels=args.raw_pixels,
        backend=args.backend,
        device=args.device,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        recall = ", ".join(f"R@{n} {v:.3f}" for n, v in out["recall"].items())
        print(f"{out['method']} on {out['num_queries']} queries: {recall}")
    return 0
