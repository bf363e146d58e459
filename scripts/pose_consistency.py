"""How well a dataset's given poses agree with its images: the epipolar error of SuperPoint
matches between keyframe pairs under the given relative pose and under one fitted to them.

    python scripts/pose_consistency.py DATASET [--prefix image_0/] [--every 10] [--offset 0]
        [--json]

Pairs are consecutive keyframes (every Nth image with the prefix from the Kth on). The matches
of a pair are its mutual nearest neighbours within 4 px (Sampson) of the given pose's epipolar
geometry, as the map builder keeps them; an essential matrix is fitted to the same matches
(RANSAC at 1 px). Where the poses fit the images, the given pose is as good as the fitted one
(Strecha: x0.8, the fit chases noise); where it is clearly worse, the reference poses disagree
with the images, and errors measured against them include that disagreement (KITTI 01 frames 10
apart: x1.9, see README "Sparse maps").
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supergf_ros.datasets import Dataset  # noqa: E402
from supergf_ros.features import create_extractor  # noqa: E402
from supergf_ros.geometry import Pose  # noqa: E402
from supergf_ros.mapping.triangulation import (  # noqa: E402
    default_triangulation_conf,
    epipolar_filter,
)
from supergf_ros.matching import match_mutual_nn  # noqa: E402

MAP_GATE_PX = default_triangulation_conf["max_epipolar_error_px"]  # as the map builder gates
FIT_THRESHOLD_PX = 1.0


def sampson_px(x0: np.ndarray, x1: np.ndarray, E: np.ndarray, focal: float) -> np.ndarray:
    """(n,) Sampson distances in pixels of normalized points `x0` <-> `x1` under `E`."""
    h0, h1 = np.c_[x0, np.ones(len(x0))], np.c_[x1, np.ones(len(x1))]
    Ex0, Etx1 = h0 @ E.T, h1 @ E
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return focal * np.abs(np.sum(h1 * Ex0, axis=1)) / np.sqrt(np.maximum(den, 1e-30))


def essential(cam1_from_cam0: Pose) -> np.ndarray:
    t = cam1_from_cam0.tvec / np.linalg.norm(cam1_from_cam0.tvec)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return tx @ cam1_from_cam0.R


def pair_consistency(
    features0, features1, K0: np.ndarray, K1: np.ndarray, cam1_from_cam0: Pose
) -> dict[str, float]:
    """Median Sampson error (px) of two images' matches (`LocalFeatures`, intrinsics `K0`,
    `K1`) under the given relative pose and under an essential matrix fitted to them."""
    focal = 0.5 * (K0[0, 0] + K1[0, 0])
    m, _ = match_mutual_nn(features0.descriptors, features1.descriptors)
    x0 = cv2.undistortPoints(features0.keypoints[m[:, 0]][:, None].astype(np.float64), K0, None)
    x1 = cv2.undistortPoints(features1.keypoints[m[:, 1]][:, None].astype(np.float64), K1, None)
    x0, x1 = x0[:, 0], x1[:, 0]
    rows = np.arange(len(m))
    keep = epipolar_filter(x0, x1, np.c_[rows, rows], cam1_from_cam0, MAP_GATE_PX / focal)
    x0, x1 = x0[keep], x1[keep]
    if len(x0) < 8:
        raise ValueError(f"only {len(x0)} matches agree with the given pose: nothing to compare")
    E, _ = cv2.findEssentialMat(x0, x1, np.eye(3), cv2.RANSAC, 0.9999, FIT_THRESHOLD_PX / focal)
    fitted = min((sampson_px(x0, x1, E[i : i + 3], focal) for i in range(0, len(E), 3)),
                 key=np.median)  # fmt: skip
    given = sampson_px(x0, x1, essential(cam1_from_cam0), focal)
    return {"matches": int(keep.sum()), "given_px": float(np.median(given)),
            "fitted_px": float(np.median(fitted))}  # fmt: skip


def dataset_pair(dataset: Dataset, features: dict, a: str, b: str) -> dict[str, float]:
    """`pair_consistency` of images `a`, `b` of `dataset` under its poses."""
    rel = dataset.cam_from_world(b) * dataset.cam_from_world(a).inverse()
    return pair_consistency(features[a], features[b], dataset.camera(a).K, dataset.camera(b).K, rel)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--prefix", default="")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--weights", default=None, help="default: $SUPERGF_SUPERPOINT_WEIGHTS")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dataset = Dataset(args.dataset)
    names = sorted(n for n in dataset.names if n.startswith(args.prefix))[args.offset :: args.every]
    if len(names) < 2:
        raise ValueError(f"need two keyframes, got {len(names)}: lower --every or --offset")
    extractor = create_extractor("superpoint", weights=args.weights)
    features = {n: extractor.extract(dataset.read_image(n)) for n in names}
    rows = [{"pair": [a, b], **dataset_pair(dataset, features, a, b)}
            for a, b in pairwise(names)]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['pair'][0]} - {r['pair'][1]}: {r['matches']} matches, median Sampson error "
              f"given pose {r['given_px']:.2f} px, fitted {r['fitted_px']:.2f} px "
              f"(x{r['given_px'] / r['fitted_px']:.1f})")  # fmt: skip
    ratio = np.median([r["given_px"] / r["fitted_px"] for r in rows])
    print(f"median given / fitted: x{ratio:.2f} over {len(rows)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
