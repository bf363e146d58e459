"""The hierarchical localizer: image + intrinsics -> 6-DoF `cam_from_world` against a map.

image -> local features -> global descriptor -> top-k keyframes (FAISS) -> mutual-NN (+ ratio)
matching against each keyframe -> 2D-3D via the keyframes' point ids -> pycolmap LO-RANSAC
absolute pose + non-linear refinement (with covariance). Optionally the top-k are re-ranked by
homography-RANSAC inlier counts first (the paper's second stage).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..features.base import LocalFeatures, validate_image
from ..features.contrast import normalize_contrast
from ..geometry import Camera, Pose, world_from_cam_covariance
from ..mapping.map_format import RUNTIME_OPTIONS, MapData, read_map
from ..mapping.map_store import LazyMap, is_v3, open_map
from ..mapping.spatial_index import KeyframeSpatialIndex
from ..tracking.gate import GateResult, gate
from .config import OPTIONS, check_conf, check_value
from .retrieval import GlobalIndex

logger = logging.getLogger(__name__)

TIMING_KEYS = ("extract", "global", "retrieval", "matching", "pose", "total")


@dataclass
class LocalizationResult:
    """Outcome of one query; a failure is a result with `success=False` and a `reason`.

    `covariance` is the 6x6 covariance of the refined pose from pycolmap, rotation first (3,
    axis-angle perturbation) then translation (3), in the `cam_from_world` parameterization;
    `map_covariance` the calibrated covariance of the camera in the map, order (x, y, z, rot_x,
    rot_y, rot_z) as ROS (`geometry.world_from_cam_covariance`). `mode` is "global" or
    "tracking" (a pose prior chose the candidates); `gate` the prior check of a tracking fix;
    `refined_keyframes` the keyframes whose matches the uncertainty-weighted refinement used
    (empty: the pose and covariance are PnP's).
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
    mode: str = "global"
    map_covariance: np.ndarray | None = None
    gate: GateResult | None = None
    refined_keyframes: list[str] = field(default_factory=list)

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
            "mode": self.mode,
            "map_covariance": None if self.map_covariance is None else self.map_covariance.tolist(),
            "gate": None if self.gate is None else self.gate._asdict(),
            "refined_keyframes": list(self.refined_keyframes),
        }


@dataclass(frozen=True)
class PosePrior:
    """Where the camera probably is: `cam_from_world` and the 6x6 covariance of the camera in
    the map, order (x, y, z, rot_x, rot_y, rot_z) as `LocalizationResult.map_covariance`."""

    cam_from_world: Pose
    covariance: np.ndarray


@dataclass
class PreparedQuery:
    """The prior-free stages of one query (`Localizer.prepare`): its local features, the camera
    they are in (downscaled with the image when it exceeded the pixel budget), its global
    descriptor and their timings (ms: "extract", "global")."""

    features: LocalFeatures
    camera: Camera
    global_descriptor: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)


class Localizer:
    """Localize images against a map: `Localizer.from_map(path, conf).localize(image, camera)`.

    Options: `config.OPTIONS` (defaults in `default_conf`); `update(**changes)` changes the
    run-time ones. `backend_info` says what runs the networks and why: {"backend", "device",
    "reason"} (backend "none" when the map needs no network, e.g. SIFT).
    """

    default_conf: dict[str, Any] = {name: opt.default for name, opt in OPTIONS.items()}

    def __init__(self, map_data: MapData | LazyMap, conf: dict[str, Any] | None = None) -> None:
        self.conf = {**self.default_conf, **check_conf(dict(conf or {}))}
        self.map = map_data
        self.backend_info = self._select_backend()
        self.aggregator = self._build_aggregator()  # first: it says whether it reads the dense map
        self.extractor = self._build_extractor(self.aggregator.needs_dense)
        self.index = self._build_index()
        self.spatial_index = KeyframeSpatialIndex(map_data.cam_from_world)
        self._point_covariances = getattr(map_data, "point_covariances", None)
        self._point_tri_angles = getattr(map_data, "point_tri_angles", None)
        self._map_pixels = max(c.width * c.height for c in map_data.cameras)
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

    def update(self, **changes: Any) -> None:
        """Change run-time options (`config.OPTIONS[name].runtime`) of a running localizer.

        All changes are checked before any applies; the new configuration replaces the old one
        in one assignment, so a localization in progress keeps the configuration it started with.
        """
        checked = check_conf(changes)
        fixed = sorted(n for n in checked if not OPTIONS[n].runtime)
        if fixed:
            raise ValueError(f"option(s) {fixed} are fixed at start-up; build a new Localizer")
        self.conf = {**self.conf, **checked}

    @classmethod
    def from_map(cls, map_path: str | Path, conf: dict[str, Any] | None = None) -> Localizer:
        """Load a map and build the extractor + aggregator that match its identity.

        A version-3 map is opened lazily (`mapping.map_store.open_map`): keyframe features are
        read per retrieved keyframe, `keyframe_cache_size` of them kept; older maps load whole.
        """
        size = check_conf(dict(conf or {})).get("keyframe_cache_size")
        return cls(load_map(map_path, size), conf)

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

    def _build_index(self) -> GlobalIndex:
        """The retrieval index: a lazy map's saved one where `index` allows it (auto or the
        saved kind), else built over the map's (projected) global descriptors."""
        kind = self.conf["index"]
        saved = getattr(self.map, "global_index", None)
        if saved is None:
            return GlobalIndex(self.map.global_descriptors, kind=kind)
        if kind in ("auto", saved.kind):
            return saved
        logger.info("retrieval index: the map's is %s, %s requested: building it", saved.kind, kind)
        rows = saved.index.reconstruct_batch(np.arange(len(saved)))
        return GlobalIndex(rows, kind=kind, params=saved.params, projection=saved.projection)

    def _prepare_keyframes(self) -> None:
        """Per-keyframe matching arrays: `_kf_kp`, `_kf_desc`, `_kf_pids`, `_kf_sel` (rows of
        the matched descriptors -> keypoint indices, None: the same).

        A lazy map (`LazyMap`) holds only keypoints that have a 3D point: the arrays are views
        that read a keyframe when asked, through the map's LRU cache (nothing converted here).
        An in-memory map is prepared once; with `match_3d_only`, each keyframe keeps the
        descriptors of its keypoints with a 3D point (one contiguous copy).
        """
        m = self.map
        if isinstance(m, LazyMap):
            self._kf_kp = _KeyframeColumn(m, "keypoints")
            self._kf_desc = _KeyframeColumn(m, "descriptors")
            self._kf_pids = _KeyframeColumn(m, "point3D_ids")
            self._kf_sel = _KeyframeColumn(m, None)
            return
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
        """A `DeviceMatcher` on the torch device of the networks (see `match_backend`), or None
        to match with numpy on the host. An in-memory map's descriptors are uploaded once; a
        lazy map's retrieved keyframes are uploaded per query (`_PerQueryDeviceMatcher`)."""
        choice = self.conf["match_backend"]
        device = str(self.backend_info["device"])
        # numpy, or auto without torch installed (a lean GPU robot): never import torch
        has_torch = choice == "torch" or importlib.util.find_spec("torch") is not None
        on_cuda = device.startswith("cuda") and choice != "numpy" and has_torch
        if on_cuda:
            import torch

            on_cuda = torch.cuda.is_available()
        if choice == "numpy" or (choice == "auto" and not on_cuda):
            return None
        from ..matching import DeviceMatcher

        device = device if on_cuda else "cpu"
        if isinstance(self.map, LazyMap):
            logger.info("matching on %s: retrieved keyframes uploaded per query", device)
            return _PerQueryDeviceMatcher(self._kf_desc, device)
        matcher = DeviceMatcher(self._kf_desc, device=device)
        logger.info(
            "matching on %s: %d keyframes, %.1f MB of descriptors uploaded once",
            matcher.device,
            matcher.num_groups,
            matcher.nbytes / 2**20,
        )
        return matcher

    def _build_extractor(self, needs_dense: bool):
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
            if self.conf["detection_threshold"] is not None:
                conf["detection_threshold"] = float(self.conf["detection_threshold"])
            # the dense map is a second device -> host copy: only when retrieval reads it
            conf["return_dense"] = needs_dense
            conf["precision"] = self.conf["superpoint_precision"]
            conf["int8_calibration"] = self.conf["superpoint_int8_calibration"]
            # a map's smaller scales meet near structure seen from afar; a query needs its own
            conf["scales"] = [1.0]
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
        return aggregator

    # -- localization --------------------------------------------------------------------------
    def _camera_pc(self, camera: Camera):
        cam = self._pycolmap_cameras.get(camera)
        if cam is None:
            cam = self._pycolmap_cameras[camera] = camera.to_pycolmap()
        return cam

    def localize(
        self,
        image: np.ndarray,
        camera: Camera,
        top_k: int | None = None,
        prior: PosePrior | None = None,
    ) -> LocalizationResult:
        """Localize one image (HxW gray or HxWx3 RGB uint8) taken with `camera`.

        `top_k` overrides the configured number of retrieved keyframes for this call; with a
        `prior` the candidates come from around it (tracking mode) and the fix is gated by it.
        Raises ValueError only for a malformed image or camera; failures are results.
        Equal to `localize_prepared(prepare(image, camera), top_k, prior)`.
        """
        return self.localize_prepared(self.prepare(image, camera), top_k=top_k, prior=prior)

    def prepare(self, image: np.ndarray, camera: Camera) -> PreparedQuery:
        """The stages that need no prior: local features and global descriptor of one image.

        A pipelined caller runs this on the next frame while `localize_prepared` matches the
        current one. ValueError for a malformed image or camera.
        """
        t0 = time.perf_counter()
        features, camera = self.extract(image, camera)
        t_extract = (time.perf_counter() - t0) * 1e3
        query = self.describe(features, camera)
        query.timings_ms["extract"] = t_extract
        return query

    def extract(self, image: np.ndarray, camera: Camera) -> tuple[LocalFeatures, Camera]:
        """The query's local features and the camera they are in (the image checked, within
        the pixel budget); `localize_features` takes it from here, e.g. once per top_k."""
        image = validate_image(image)
        if not isinstance(camera, Camera):
            raise ValueError(f"camera must be a supergf_ros.geometry.Camera, got {type(camera)}")
        h, w = image.shape[:2]
        if (camera.width, camera.height) != (w, h):
            raise ValueError(
                f"image is {w}x{h} but the camera is {camera.width}x{camera.height}; "
                "scale the camera with Camera.scaled() to the image size"
            )
        image, camera = self._within_pixel_budget(image, camera)
        method = self.conf["contrast_normalization"]
        if method != "none":
            image = normalize_contrast(image, method)
        return self.extractor.extract(image), camera

    def describe(self, features: LocalFeatures, camera: Camera) -> PreparedQuery:
        """A query of already extracted features: their global descriptor (timed)."""
        timings: dict[str, float] = {}
        with _timed(timings, "global"):
            global_descriptor = self.aggregator(features)
        return PreparedQuery(features, camera, global_descriptor, timings)

    def _within_pixel_budget(self, image: np.ndarray, camera: Camera) -> tuple[np.ndarray, Camera]:
        """`image` and `camera` downscaled (area filter) to at most `max_image_pixels`."""
        budget = self.conf["max_image_pixels"] or self._map_pixels
        h, w = image.shape[:2]
        if h * w <= budget:
            return image, camera
        import cv2

        scale = (budget / (h * w)) ** 0.5  # isotropic: every camera model scales this way
        small = cv2.resize(
            image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
        return small, camera.scaled(scale)

    def localize_features(
        self,
        features: LocalFeatures,
        camera: Camera,
        top_k: int | None = None,
        prior: PosePrior | None = None,
    ) -> LocalizationResult:
        """Localize from already extracted query features (all stages after extraction)."""
        return self.localize_prepared(self.describe(features, camera), top_k=top_k, prior=prior)

    def localize_prepared(
        self, query: PreparedQuery, top_k: int | None = None, prior: PosePrior | None = None
    ) -> LocalizationResult:
        """Localize a `prepare`d query: candidates, matching, pose, calibration and gate."""
        conf = self.conf  # one configuration for the whole query (update() may replace it)
        top_k = check_value("top_k", conf["top_k"] if top_k is None else top_k)
        features, camera, gdesc = query.features, query.camera, query.global_descriptor
        timings = {k: 0.0 for k in TIMING_KEYS}
        timings.update(query.timings_ms)
        t_start = time.perf_counter()
        with _timed(timings, "retrieval"):
            if prior is None:
                keyframe_ids, scores = self.retrieve(gdesc, top_k)
            else:
                keyframe_ids, scores = self.candidates_near(prior, gdesc, conf)
        result = LocalizationResult(
            success=False,
            retrieved=[self.map.keyframe_names[i] for i in keyframe_ids],
            retrieval_scores=[float(s) for s in scores],
            mode="global" if prior is None else "tracking",
        )
        if len(features) == 0:
            result.reason = "no keypoints detected in the query image"
        else:
            self._match_and_estimate(features, camera, keyframe_ids, scores, conf, result, timings)
        if result.success:
            self._calibrate_and_gate(result, prior, conf)
        elapsed = (time.perf_counter() - t_start) * 1e3
        timings["total"] = elapsed + timings["extract"] + timings["global"]
        result.timings_ms = timings
        return result

    def _match_and_estimate(
        self,
        features: LocalFeatures,
        camera: Camera,
        keyframe_ids: np.ndarray,
        scores: np.ndarray,
        conf: dict[str, Any],
        result: LocalizationResult,
        timings: dict[str, float],
    ) -> None:
        """Match against `keyframe_ids`, optionally re-rank, then estimate the pose into `result`."""
        with _timed(timings, "matching"):
            per_kf = self.match(features, keyframe_ids, conf)
        result.num_matches = int(sum(len(m) for _, m in per_kf))
        if conf["rerank"]:
            with _timed(timings, "rerank"):
                per_kf, scores = self.rerank(features, per_kf, scores, conf)
            result.retrieved = [self.map.keyframe_names[i] for i, _ in per_kf]
            result.retrieval_scores = [float(s) for s in scores]
        if result.num_matches == 0:
            result.reason = "no matches between the query and the retrieved keyframes"
            return
        with _timed(timings, "pose"):
            q_idx, p_idx = self.correspondences(per_kf)
            result.num_correspondences = len(q_idx)
            self.estimate_pose(features, camera, q_idx, p_idx, conf, result)
            if result.success:
                self.refine(features, camera, per_kf, conf, result)

    def _calibrate_and_gate(
        self, result: LocalizationResult, prior: PosePrior | None, conf: dict[str, Any]
    ) -> None:
        """The calibrated map-frame covariance of a fix, and its check against the prior."""
        if result.covariance is not None and np.isfinite(result.covariance).all():
            cov = world_from_cam_covariance(result.cam_from_world, result.covariance)
        else:  # no estimate from the refinement: "unknown but large", never certain
            cov = np.diag([1e3] * 6)
        floor = [conf["fix_sigma_floor_m"]] * 3 + [np.radians(conf["fix_sigma_floor_deg"])] * 3
        scale = conf["refined_fix_sigma_scale" if result.refined_keyframes else "fix_sigma_scale"]
        result.map_covariance = scale**2 * cov + np.diag(np.square(floor))
        if prior is None:
            return
        result.gate = gate(
            result.cam_from_world.inverse(),
            prior.cam_from_world.inverse(),
            prior.covariance,
            meas_cov=result.map_covariance,
            probability=conf["gate_probability"],
        )
        if not result.gate.accepted:
            offset = np.linalg.norm(result.cam_from_world.center - prior.cam_from_world.center)
            result.success = False
            result.reason = (
                f"fix disagrees with the prior: {offset:.2f} m away, Mahalanobis d2 "
                f"{result.gate.d2:.1f} > {result.gate.threshold:.1f}"
            )

    # -- stages (each usable on its own, e.g. with candidate keyframes from a pose prior) ------
    def retrieve(self, global_descriptor: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """(keyframe_ids, similarities) of the `top_k` most similar keyframes, best first."""
        return self.index.search(global_descriptor, top_k)

    def candidates_near(
        self, prior: PosePrior, global_descriptor: np.ndarray, conf: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keyframes nearest the prior and looking its way, then the best global results."""
        conf = conf or self.conf
        near = self.spatial_index.near_pose(
            prior.cam_from_world,
            max_angle_deg=conf["tracking_max_angle_deg"],
            k=conf["tracking_keyframes"],
        )
        ids = list(near)
        if conf["tracking_global_k"] > 0:
            best, _ = self.retrieve(global_descriptor, conf["tracking_global_k"])
            ids += [int(i) for i in best if int(i) not in ids]
        ids = np.asarray(ids, dtype=np.int64)
        gdesc = np.asarray(global_descriptor, dtype=np.float32).reshape(-1)
        return ids, self.map.global_descriptors[ids] @ gdesc

    def match(
        self, features: LocalFeatures, keyframe_ids: np.ndarray, conf: dict[str, Any] | None = None
    ) -> list[tuple[int, np.ndarray]]:
        """[(keyframe_id, (M, 2) matches query keypoint -> keyframe keypoint)] per keyframe."""
        from ..matching import match_mutual_nn

        conf = conf or self.conf
        thresholds = {
            "ratio_threshold": conf["ratio_threshold"],
            "distance_threshold": conf["distance_threshold"],
        }
        if self._matcher is not None:  # all keyframes at once on the device, one host copy
            qdesc = features.descriptors_device
            if qdesc is None or tuple(qdesc.shape) != features.descriptors.shape:
                qdesc = features.descriptors  # uploaded once for all keyframes
            raw = self._matcher.match(qdesc, keyframe_ids, **thresholds)
        else:
            qdesc = np.ascontiguousarray(features.descriptors, dtype=np.float32)
            raw = [match_mutual_nn(qdesc, self._kf_desc[i], **thresholds) for i in keyframe_ids]
        per_kf = []
        for i, (m, _) in zip(keyframe_ids, raw):
            sel = self._kf_sel[i]
            if sel is not None:  # rows of the 3D-only subset -> keypoint indices
                m[:, 1] = sel[m[:, 1]]
            per_kf.append((int(i), m))
        return per_kf

    def rerank(
        self,
        features: LocalFeatures,
        per_kf: list[tuple[int, np.ndarray]],
        scores: np.ndarray,
        conf: dict[str, Any] | None = None,
    ) -> tuple[list[tuple[int, np.ndarray]], list[float]]:
        """`per_kf` and `scores` re-ordered by homography-RANSAC inliers (`rerank_keep` kept)."""
        conf = conf or self.conf
        threshold = float(conf["rerank_threshold_px"])
        counts = [self._homography_inliers(features.keypoints, i, m, threshold) for i, m in per_kf]
        order = np.argsort(-np.asarray(counts), kind="stable")
        per_kf = [per_kf[j] for j in order]
        if conf["rerank_keep"] is not None:
            per_kf = per_kf[: max(1, int(conf["rerank_keep"]))]
        return per_kf, [float(scores[j]) for j in order][: len(per_kf)]

    def correspondences(
        self, per_kf: list[tuple[int, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unique 2D-3D correspondences (query keypoint ids, map point ids) of the matches."""
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
        return q_idx, p_idx

    def estimate_pose(
        self,
        features: LocalFeatures,
        camera: Camera,
        q_idx: np.ndarray,
        p_idx: np.ndarray,
        conf: dict[str, Any],
        result: LocalizationResult,
    ) -> None:
        """PnP-RANSAC + refinement on the correspondences; fills the pose fields of `result`."""
        min_inliers = int(conf["min_inliers"])
        if len(q_idx) < max(4, min_inliers):
            result.reason = f"too few 2D-3D correspondences ({len(q_idx)} < {max(4, min_inliers)})"
            return
        ret = self._absolute_pose(features.keypoints[q_idx], self.map.points3D[p_idx], camera, conf)
        if isinstance(ret, str):
            result.reason = ret
            return
        result.num_inliers = int(ret["num_inliers"])
        if result.num_inliers < min_inliers:
            result.reason = f"too few PnP inliers ({result.num_inliers} < {min_inliers})"
            return
        result.cam_from_world = Pose.from_pycolmap(ret["cam_from_world"])
        cov = ret.get("covariance")
        result.covariance = None if cov is None else np.asarray(cov, dtype=np.float64)
        result.success = True

    def refine(
        self,
        features: LocalFeatures,
        camera: Camera,
        per_kf: list[tuple[int, np.ndarray]],
        conf: dict[str, Any],
        result: LocalizationResult,
    ) -> None:
        """Refine a PnP fix on the matches of the `refine_keyframes` retrieved keyframes nearest
        it, weighted by map point uncertainty (`refinement.refine_pose`), where their points are
        weakly triangulated (`refine_max_tri_angle_deg`); a map without point quality, or a
        refinement that fails, keeps the PnP pose and covariance."""
        from ..mapping.point_quality import covariance_matrices
        from .refinement import nearest_keyframes, refine_pose

        if conf["refine_keyframes"] == 0 or self._point_covariances is None:
            return
        centers = self.spatial_index.centers[[i for i, _ in per_kf]]
        picked = nearest_keyframes(centers, result.cam_from_world.center, conf["refine_keyframes"])
        nearest = [per_kf[j] for j in picked]
        q_idx, p_idx = self.correspondences(nearest)
        angles = None if self._point_tri_angles is None else self._point_tri_angles[p_idx]
        if angles is None or not len(p_idx):
            return
        if np.median(angles) >= conf["refine_max_tri_angle_deg"]:  # well known: PnP's pose
            return
        refined = refine_pose(
            result.cam_from_world,
            self._camera_pc(camera),
            features.keypoints[q_idx],
            self.map.points3D[p_idx],
            covariance_matrices(self._point_covariances[p_idx]),
            conf["keypoint_sigma_px"],
            conf["ransac_max_error_px"],
            conf["min_inliers"],
        )
        if refined is None:
            return
        result.cam_from_world, result.covariance = refined.cam_from_world, refined.covariance
        result.refined_keyframes = [self.map.keyframe_names[i] for i, _ in nearest]

    def _absolute_pose(
        self, points2D: np.ndarray, points3D: np.ndarray, camera: Camera, conf: dict[str, Any]
    ) -> dict[str, Any] | str:
        """pycolmap's estimate, or the reason it failed."""
        import pycolmap

        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = float(conf["ransac_max_error_px"])
        ref = pycolmap.AbsolutePoseRefinementOptions()
        try:
            ret = pycolmap.estimate_and_refine_absolute_pose(
                points2D.astype(np.float64),
                points3D,
                self._camera_pc(camera),
                est,
                ref,
                return_covariance=True,
            )
        except Exception as err:  # numerical trouble inside pycolmap must not escape
            return f"pose estimation raised: {err}"
        return "pose estimation failed (RANSAC found no model)" if ret is None else ret

    def _homography_inliers(
        self, q_kp: np.ndarray, kf: int, matches: np.ndarray, threshold_px: float
    ) -> int:
        import cv2

        if len(matches) < 4:
            return 0
        src = q_kp[matches[:, 0]].astype(np.float32)
        dst = self._kf_kp[kf][matches[:, 1]].astype(np.float32)
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold_px)
        return 0 if mask is None else int(mask.sum())


class _KeyframeColumn:
    """`column[i]`: one array of keyframe `i` of a lazy map (read through its LRU cache);
    name None: always None (a lazy map's keyframes hold only matched keypoints)."""

    def __init__(self, lazy_map: LazyMap, name: str | None) -> None:
        self.map, self.name = lazy_map, name

    def __len__(self) -> int:
        return self.map.num_keyframes

    def __getitem__(self, i: int) -> np.ndarray | None:
        if self.name is None:
            return None
        return getattr(self.map.keyframe(int(i)), self.name)


class _PerQueryDeviceMatcher:
    """`DeviceMatcher.match` over the requested keyframes only, uploaded for the call."""

    def __init__(self, descriptors: _KeyframeColumn, device: str) -> None:
        import torch

        self.descriptors, self.device = descriptors, torch.device(device)
        self.num_groups = len(descriptors)  # any keyframe of the map, uploaded when asked

    def match(self, desc0: Any, group_ids: Any, **thresholds: Any) -> list:
        from ..matching import DeviceMatcher

        ids = [int(i) for i in group_ids]
        if not ids:
            return []
        matcher = DeviceMatcher([self.descriptors[i] for i in ids], device=self.device)
        return matcher.match(desc0, range(len(ids)), **thresholds)


def load_map(map_path: str | Path, keyframe_cache_size: int | None = None) -> MapData | LazyMap:
    """The map at `map_path`: a version-3 map opened lazily (`keyframe_cache_size` keyframes
    cached), older versions read whole. ValueError for a corrupt or incompatible file."""
    if is_v3(map_path):
        return open_map(map_path, keyframe_cache_size or OPTIONS["keyframe_cache_size"].default)
    return read_map(map_path)


@contextmanager
def _timed(timings: dict[str, float], key: str):
    """Add the wall time of the block to `timings[key]` (ms)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t) * 1e3
