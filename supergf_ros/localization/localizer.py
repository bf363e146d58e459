"""The hierarchical localizer: image + intrinsics -> 6-DoF `cam_from_world` against a map.

image -> local features -> global descriptor -> top-k keyframes (FAISS) -> mutual-NN (+ ratio)
matching against each keyframe -> 2D-3D via the keyframes' point ids -> pycolmap LO-RANSAC
absolute pose + non-linear refinement (with covariance). Optionally the top-k are re-ranked by
homography-RANSAC inlier counts first (the paper's second stage).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..features.base import LocalFeatures, validate_image
from ..geometry import Camera, Pose
from ..mapping.map_format import RUNTIME_OPTIONS, MapData, read_map
from .retrieval import GlobalIndex

logger = logging.getLogger(__name__)

TIMING_KEYS = ("extract", "global", "retrieval", "matching", "pose", "total")


@dataclass
class LocalizationResult:
    """Outcome of one query; a failure is a result with `success=False` and a `reason`.

    `covariance` is the 6x6 covariance of the refined pose from pycolmap, rotation first (3,
    axis-angle perturbation) then translation (3), in the `cam_from_world` parameterization.
    """

    success: bool
    reason: str = ""
    cam_from_world: Pose | None = None
    num_inliers: int = 0
    num_matches: int = 0
    num_correspondences: int = 0
    covariance: np.ndarray | None = None
    retrieved: list[str] = field(default_factory=list)
    retrieval_scores: list[float] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (pose as qvec w-first + tvec, cam_from_world)."""
        pose = None
        if self.cam_from_world is not None:
            pose = {
                "qvec": [float(v) for v in self.cam_from_world.qvec],
                "tvec": [float(v) for v in self.cam_from_world.tvec],
            }
        return {
            "success": bool(self.success),
            "reason": self.reason,
            "cam_from_world": pose,
            "num_inliers": int(self.num_inliers),
            "num_matches": int(self.num_matches),
            "num_correspondences": int(self.num_correspondences),
            "covariance": None if self.covariance is None else self.covariance.tolist(),
            "retrieved": list(self.retrieved),
            "retrieval_scores": [float(s) for s in self.retrieval_scores],
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
        }


class Localizer:
    """Localize images against a map. Build with `Localizer.from_map(path, conf)`.

    Options (`default_conf`, all optional):
        top_k: keyframes retrieved per query.
        rerank: re-rank the top-k by homography-RANSAC inliers before pose estimation.
        rerank_keep: after re-ranking, use only this many keyframes for the pose (None: all).
        rerank_threshold_px: homography RANSAC threshold.
        ratio_threshold: Lowe ratio test on top of mutual NN (None: mutual NN only).
        distance_threshold: max descriptor distance of a match (None: no limit).
        min_inliers: fewer PnP inliers is a failed localization.
        ransac_max_error_px: PnP RANSAC threshold.
        max_keypoints, resize_max: query extraction overrides (default: as the map).
        superpoint_weights: SuperPoint weights file (default: $SUPERGF_SUPERPOINT_WEIGHTS).
        supergf_weights: SuperGF checkpoint (default: the shipped one).
        backend: "auto" | "torch" | "onnxruntime" | "tensorrt" for SuperPoint and SuperGF;
            "auto" picks the fastest available (TensorRT > ONNX Runtime CUDA > PyTorch CUDA >
            ONNX Runtime CPU > PyTorch CPU). Any backend localizes against any map.
        device: "auto" | "cpu" | "cuda" | "cuda:N" for those networks.
        match_3d_only: match the query only against keyframe keypoints that have a 3D point
            (the others cannot become 2D-3D correspondences; about 40% less matching work).
        index: retrieval index "auto" | "flat" | "hnsw".
        match_backend: "auto" | "numpy" | "torch". "torch" keeps the keyframe descriptors on
            the networks' device (uploaded once, here; CPU when the networks run there) and
            matches the query's descriptors where the extractor left them, with one host copy
            of all matches per query; "numpy" matches on the host; "auto" is torch when the
            networks run on a CUDA device that PyTorch can use, numpy otherwise (faster on CPU).

    After construction, `backend_info` says what runs the networks and why:
    {"backend", "device", "reason"} (backend "none" when the map needs no network, e.g. SIFT).
    """

    default_conf: dict[str, Any] = {
        "top_k": 5,
        "rerank": False,
        "rerank_keep": None,
        "rerank_threshold_px": 8.0,
        "ratio_threshold": None,
        "distance_threshold": None,
        "min_inliers": 12,
        "ransac_max_error_px": 12.0,
        "max_keypoints": None,
        "resize_max": None,
        "superpoint_weights": None,
        "supergf_weights": None,
        "backend": "auto",
        "device": "auto",
        "match_3d_only": True,
        "index": "auto",
        "match_backend": "auto",
    }

    def __init__(self, map_data: MapData, conf: dict[str, Any] | None = None) -> None:
        conf = dict(conf or {})
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(
                f"unknown localizer option(s): {sorted(unknown)}; valid: {sorted(self.default_conf)}"
            )
        self.conf = {**self.default_conf, **conf}
        if int(self.conf["top_k"]) < 1:
            raise ValueError(f"top_k must be >= 1, got {self.conf['top_k']}")
        if int(self.conf["min_inliers"]) < 4:
            raise ValueError(f"min_inliers must be >= 4, got {self.conf['min_inliers']}")
        if self.conf["match_backend"] not in ("auto", "numpy", "torch"):
            raise ValueError(
                "match_backend must be 'auto', 'numpy' or 'torch', "
                f"got {self.conf['match_backend']!r}"
            )
        self.map = map_data
        self.backend_info = self._select_backend()
        self.extractor = self._build_extractor()
        self.aggregator = self._build_aggregator()
        self.index = GlobalIndex(map_data.global_descriptors, kind=self.conf["index"])
        self._prepare_keyframes()
        self._matcher = self._build_matcher()
        self._pycolmap_cameras: dict[Camera, Any] = {}
        info = self.backend_info
        logger.info(
            "localizer: %s features + %s global descriptor on %s (%s): %s",
            map_data.extractor["name"],
            map_data.aggregator["name"],
            info["backend"],
            info["device"],
            info["reason"],
        )

    @classmethod
    def from_map(cls, map_path: str | Path, conf: dict[str, Any] | None = None) -> Localizer:
        """Load a map and build the extractor + aggregator that match its identity."""
        return cls(read_map(map_path), conf)

    # -- construction -------------------------------------------------------------------------
    def _needs_network(self) -> bool:
        return self.map.extractor["name"] == "superpoint" or str(
            self.map.aggregator["name"]
        ).startswith("supergf")

    def _select_backend(self) -> dict[str, str]:
        """Resolve `backend`/`device` once for both networks; {"backend", "device", "reason"}."""
        from ..inference.backends import select_backend

        backend, device = self.conf["backend"], self.conf["device"]
        if not self._needs_network():
            select_backend(backend, device)  # still reject unknown or unavailable requests
            return {
                "backend": "none",
                "device": "cpu",
                "reason": "the map's local features and global descriptor need no network",
            }
        self._backend_choice = select_backend(backend, device)  # handed to both networks
        choice = self._backend_choice
        return {"backend": choice.backend, "device": choice.device, "reason": choice.reason}

    def _prepare_keyframes(self) -> None:
        """Per-keyframe matching arrays, prepared once (no per-query conversion or file access).

        With `match_3d_only`, each keyframe keeps the descriptors of its keypoints with a 3D
        point (one contiguous copy) and `_kf_sel` maps their rows back to keypoint indices.
        """
        m = self.map
        bounds = [
            (int(m.keypoint_offsets[i]), int(m.keypoint_offsets[i + 1]))
            for i in range(m.num_keyframes)
        ]
        self._kf_kp = [m.keypoints[a:b] for a, b in bounds]
        self._kf_pids = [m.point3D_ids[a:b] for a, b in bounds]
        if not self.conf["match_3d_only"]:
            self._kf_desc = [np.ascontiguousarray(m.descriptors[a:b]) for a, b in bounds]
            self._kf_sel: list[np.ndarray | None] = [None] * m.num_keyframes
            return
        rows = np.flatnonzero(m.point3D_ids >= 0)
        desc = np.ascontiguousarray(m.descriptors[rows], dtype=np.float32)
        cuts = np.searchsorted(rows, [a for a, _ in bounds] + [bounds[-1][1]])
        self._kf_desc = [desc[cuts[i] : cuts[i + 1]] for i in range(m.num_keyframes)]
        self._kf_sel = [rows[cuts[i] : cuts[i + 1]] - a for i, (a, _) in enumerate(bounds)]

    def _build_matcher(self):
        """A `DeviceMatcher` holding the keyframes' matching descriptors on the torch device of
        the networks (see `match_backend`), or None to match with numpy on the host."""
        choice = self.conf["match_backend"]
        device = str(self.backend_info["device"])
        on_cuda = device.startswith("cuda")
        if on_cuda:
            import torch

            on_cuda = torch.cuda.is_available()
        if choice == "numpy" or (choice == "auto" and not on_cuda):
            return None
        from ..matching import DeviceMatcher

        matcher = DeviceMatcher(self._kf_desc, device=device if on_cuda else "cpu")
        logger.info(
            "matching on %s: %d keyframes, %.1f MB of descriptors uploaded once",
            matcher.device,
            matcher.num_groups,
            matcher.nbytes / 2**20,
        )
        return matcher

    def _map_needs_dense(self) -> bool:
        """Whether the map's global descriptor reads the dense local descriptor map."""
        return self._build_aggregator().needs_dense

    def _build_extractor(self):
        from ..features import EXTRACTORS, create_extractor

        ident = self.map.extractor
        name = ident["name"]
        if name not in EXTRACTORS:
            raise ValueError(f"map was built with unknown local features '{name}'")
        # how the map's extractor ran (backend, device) is not part of its identity
        conf = {k: v for k, v in ident["config"].items() if k not in RUNTIME_OPTIONS}
        if name == "superpoint":
            weights = self.conf["superpoint_weights"] or os.environ.get(
                "SUPERGF_SUPERPOINT_WEIGHTS"
            )
            conf["weights"] = str(weights) if weights else None
            conf["backend"] = self._backend_choice
            conf["device"] = self._backend_choice.device
            if self.conf["resize_max"] is not None:
                conf["resize_max"] = int(self.conf["resize_max"])
            # the dense map is a second device -> host copy: only when retrieval reads it
            conf["return_dense"] = self._map_needs_dense()
        if self.conf["max_keypoints"] is not None:
            conf["max_keypoints"] = int(self.conf["max_keypoints"])
        extractor = create_extractor(name, **conf)
        sha = extractor.identity()["weights_sha256"]
        if sha != ident["weights_sha256"]:
            raise ValueError(
                f"the map was built with {name} weights sha256 {ident['weights_sha256'][:12]}..., "
                f"but the given weights have sha256 {sha[:12]}...; use the weights the map was built "
                "with or rebuild the map"
            )
        dim = self.map.descriptors.shape[1]
        if extractor.descriptor_dim != dim:
            raise ValueError(
                f"map descriptors are {dim}-D but extractor '{name}' gives "
                f"{extractor.descriptor_dim}-D"
            )
        return extractor

    def _build_aggregator(self):
        if getattr(self, "_aggregator", None) is not None:  # built early by _map_needs_dense
            return self._aggregator
        from ..models.aggregators import AGGREGATORS, create_aggregator

        ident = self.map.aggregator
        name = ident["name"]
        if name not in AGGREGATORS:
            raise ValueError(f"map was built with unknown global descriptor '{name}'")
        conf = {
            k: v for k, v in ident["config"].items() if k != "model" and k not in RUNTIME_OPTIONS
        }
        if name.startswith("supergf"):
            if self.conf["supergf_weights"]:
                conf["weights"] = str(self.conf["supergf_weights"])
            conf["backend"] = self._backend_choice
            conf["device"] = self._backend_choice.device
        aggregator = create_aggregator(name, **conf)
        if self.map.aggregator_state:
            aggregator.load_state(dict(self.map.aggregator_state))
        sha = aggregator.identity()["weights_sha256"]
        if sha != ident["weights_sha256"]:
            raise ValueError(
                f"the map's global descriptors ('{name}') were made with weights sha256 "
                f"{ident['weights_sha256'][:12]}..., but the loaded ones have {sha[:12]}...; "
                "pass the matching --supergf-weights or rebuild the map"
            )
        gdim = self.map.global_descriptors.shape[1]
        if aggregator.dim != gdim:
            raise ValueError(
                f"map global descriptors are {gdim}-D but '{name}' gives {aggregator.dim}-D"
            )
        self._aggregator = aggregator
        return aggregator

    # -- localization --------------------------------------------------------------------------
    def _camera_pc(self, camera: Camera):
        cam = self._pycolmap_cameras.get(camera)
        if cam is None:
            cam = self._pycolmap_cameras[camera] = camera.to_pycolmap()
        return cam

    def localize(
        self, image: np.ndarray, camera: Camera, top_k: int | None = None
    ) -> LocalizationResult:
        """Localize one image (HxW gray or HxWx3 RGB uint8) taken with `camera`.

        `top_k` overrides the configured number of retrieved keyframes for this call.
        Raises ValueError only for a malformed image or camera; failures are results.
        """
        image = validate_image(image)
        if not isinstance(camera, Camera):
            raise ValueError(f"camera must be a supergf_ros.geometry.Camera, got {type(camera)}")
        h, w = image.shape[:2]
        if (camera.width, camera.height) != (w, h):
            raise ValueError(
                f"image is {w}x{h} but the camera is {camera.width}x{camera.height}; "
                "scale the camera with Camera.scaled() to the image size"
            )
        t0 = time.perf_counter()
        features = self.extractor.extract(image)
        t_extract = (time.perf_counter() - t0) * 1e3
        result = self.localize_features(features, camera, top_k=top_k)
        result.timings_ms["extract"] = t_extract
        result.timings_ms["total"] += t_extract
        return result

    def localize_features(
        self, features: LocalFeatures, camera: Camera, top_k: int | None = None
    ) -> LocalizationResult:
        """Localize from already extracted query features (all stages after extraction)."""
        import pycolmap

        conf = self.conf
        top_k = int(conf["top_k"] if top_k is None else top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        timings = {k: 0.0 for k in TIMING_KEYS}
        t_start = time.perf_counter()

        def done(result: LocalizationResult) -> LocalizationResult:
            timings["total"] = (time.perf_counter() - t_start) * 1e3
            result.timings_ms = timings
            return result

        t = time.perf_counter()
        gdesc = self.aggregator(features)
        timings["global"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        idx, sims = self.index.search(gdesc, top_k)
        timings["retrieval"] = (time.perf_counter() - t) * 1e3
        retrieved = [self.map.keyframe_names[i] for i in idx]
        result = LocalizationResult(
            success=False, retrieved=retrieved, retrieval_scores=[float(s) for s in sims]
        )
        if len(features) == 0:
            result.reason = "no keypoints detected in the query image"
            return done(result)

        t = time.perf_counter()
        from ..matching import match_mutual_nn

        thresholds = {
            "ratio_threshold": conf["ratio_threshold"],
            "distance_threshold": conf["distance_threshold"],
        }
        if self._matcher is not None:  # all keyframes at once on the device, one host copy
            qdesc = features.descriptors_device
            if qdesc is None or tuple(qdesc.shape) != features.descriptors.shape:
                qdesc = features.descriptors  # uploaded once for all keyframes
            raw = self._matcher.match(qdesc, idx, **thresholds)
        else:
            qdesc = np.ascontiguousarray(features.descriptors, dtype=np.float32)
            raw = [match_mutual_nn(qdesc, self._kf_desc[i], **thresholds) for i in idx]
        per_kf = []
        for i, (m, _) in zip(idx, raw):
            sel = self._kf_sel[i]
            if sel is not None:  # rows of the 3D-only subset -> keypoint indices
                m[:, 1] = sel[m[:, 1]]
            per_kf.append((int(i), m))
        result.num_matches = int(sum(len(m) for _, m in per_kf))
        timings["matching"] = (time.perf_counter() - t) * 1e3

        if conf["rerank"]:
            t = time.perf_counter()
            counts = [self._homography_inliers(features.keypoints, i, m) for i, m in per_kf]
            order = np.argsort(-np.asarray(counts), kind="stable")
            per_kf = [per_kf[j] for j in order]
            if conf["rerank_keep"] is not None:
                per_kf = per_kf[: max(1, int(conf["rerank_keep"]))]
            result.retrieved = [self.map.keyframe_names[i] for i, _ in per_kf]
            result.retrieval_scores = [float(sims[j]) for j in order][: len(per_kf)]
            timings["rerank"] = (time.perf_counter() - t) * 1e3

        if result.num_matches == 0:
            result.reason = "no matches between the query and the retrieved keyframes"
            return done(result)

        t = time.perf_counter()
        q_idx, p_idx = [], []
        for i, m in per_kf:
            pids = self._kf_pids[i][m[:, 1]]
            valid = pids >= 0
            q_idx.append(m[valid, 0])
            p_idx.append(pids[valid])
        q_idx = np.concatenate(q_idx)
        p_idx = np.concatenate(p_idx)
        if len(q_idx):  # the same (query keypoint, 3D point) seen through several keyframes
            num_points = max(len(self.map.points3D), 1)
            keys = np.unique(q_idx * num_points + p_idx)
            q_idx, p_idx = keys // num_points, keys % num_points
        result.num_correspondences = len(q_idx)
        if len(q_idx) < max(4, int(conf["min_inliers"])):
            result.reason = (
                f"too few 2D-3D correspondences ({len(q_idx)} < {max(4, conf['min_inliers'])})"
            )
            timings["pose"] = (time.perf_counter() - t) * 1e3
            return done(result)
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = float(conf["ransac_max_error_px"])
        ref = pycolmap.AbsolutePoseRefinementOptions()
        try:
            ret = pycolmap.estimate_and_refine_absolute_pose(
                features.keypoints[q_idx].astype(np.float64),
                self.map.points3D[p_idx],
                self._camera_pc(camera),
                est,
                ref,
                return_covariance=True,
            )
        except Exception as err:  # numerical trouble inside pycolmap must not escape
            ret = None
            result.reason = f"pose estimation raised: {err}"
        timings["pose"] = (time.perf_counter() - t) * 1e3
        if ret is None:
            result.reason = result.reason or "pose estimation failed (RANSAC found no model)"
            return done(result)
        result.num_inliers = int(ret["num_inliers"])
        if result.num_inliers < int(conf["min_inliers"]):
            result.reason = f"too few PnP inliers ({result.num_inliers} < {conf['min_inliers']})"
            return done(result)
        result.cam_from_world = Pose.from_pycolmap(ret["cam_from_world"])
        cov = ret.get("covariance")
        result.covariance = None if cov is None else np.asarray(cov, dtype=np.float64)
        result.success = True
        return done(result)

    def _homography_inliers(self, q_kp: np.ndarray, kf: int, matches: np.ndarray) -> int:
        import cv2

        if len(matches) < 4:
            return 0
        src = q_kp[matches[:, 0]].astype(np.float32)
        dst = self._kf_kp[kf][matches[:, 1]].astype(np.float32)
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, float(self.conf["rerank_threshold_px"]))
        return 0 if mask is None else int(mask.sum())
