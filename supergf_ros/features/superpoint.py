"""SuperPoint (DeTone, Malisiewicz, Rabinovich, CVPRW 2018): the extractor and its model spec.

`SuperPoint` is the extractor registered as "superpoint": grayscale -> pad to a multiple of 8 ->
network (PyTorch, ONNX Runtime fp32 or int8, TensorRT) -> NMS -> threshold -> border removal ->
top-k -> bilinear descriptor sampling from the dense map. The network itself, its weights loader
and the torch post-processing live in `superpoint_torch` (re-exported here, imported on first
use): with ONNX Runtime and a cached ONNX file nothing imports torch.

Coordinates follow the pixel-centre convention: the centre of the top-left pixel is (0, 0); a
coarse descriptor cell (i, j) of stride 8 covers pixels 8j .. 8j+7 and its centre is 8j + 3.5.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..inference.backends import create_runner, resolve_backend
from ..inference.quantize import Calibration, Int8Settings
from ..inference.runners import TorchRunner
from ..inference.spec import ModelSpec, Profile, round_up
from .base import Extractor, LocalFeatures, file_sha256, to_grayscale
from .superpoint_common import STRIDE, WEIGHTS_ENV, resolve_weights

__all__ = ["STRIDE", "WEIGHTS_ENV", "SuperPoint", "resolve_weights", "superpoint_spec"]
_TORCH_NAMES = (
    "SuperPointNet",
    "load_superpoint_net",
    "postprocess_torch",
    "sample_descriptors",
    "simple_nms",
)
PRECISIONS = ("fp32", "int8")


def __getattr__(name: str) -> Any:
    """The torch parts (`superpoint_torch`), imported when first asked for."""
    if name in _TORCH_NAMES:
        from . import superpoint_torch

        return getattr(superpoint_torch, name)
    raise AttributeError(name)


def superpoint_profile(
    max_image_size: int = 1024, opt_size: tuple[int, int] = (640, 480), max_batch: int = 1
) -> Profile:
    """TensorRT profile of "image" (B, 1, H, W) up to `max_image_size` (the longest side fed),
    optimal at `opt_size` (width, height); sides padded to multiples of 8."""
    if max_image_size < 16:
        raise ValueError(f"max_image_size must be >= 16, got {max_image_size}")
    side = round_up(max_image_size, STRIDE)
    ow, oh = (min(round_up(v, STRIDE), side) for v in opt_size)
    return {"image": ((1, 1, 16, 16), (1, 1, oh, ow), (int(max_batch), 1, side, side))}


def superpoint_spec(
    net: Any,
    weights_sha256: str,
    *,
    profile: Profile | None = None,
    calibration: Calibration | None = None,
) -> ModelSpec:
    """ModelSpec for a SuperPointNet, or for the weights file `net` (str or Path: loaded only when
    a backend needs the torch module, i.e. not for a cached ONNX file). The ONNX file is keyed by
    the weights' hash; `calibration` (default `superpoint_calibration()`) and
    `SUPERPOINT_INT8` make its INT8 version."""
    if isinstance(net, (str, Path)):
        path = Path(net)

        def build() -> Any:
            from .superpoint_torch import load_superpoint_net

            return load_superpoint_net(path)
    else:

        def build() -> Any:
            return net

    return ModelSpec(
        name="superpoint",
        build_module=build,
        example_inputs=lambda: (np.zeros((1, 1, 64, 96), np.float32),),
        input_names=["image"],
        output_names=["scores", "descriptors"],
        dynamic_axes={
            "image": {0: "batch", 2: "height", 3: "width"},
            "scores": {0: "batch", 1: "height", 2: "width"},
            "descriptors": {0: "batch", 2: "height_8", 3: "width_8"},
        },
        key=f"{weights_sha256}-superpointnet-v1",
        profile=profile if profile is not None else superpoint_profile(),
        channels_last=True,  # oneDNN convolutions are ~1.5x faster in channels_last on CPU
        calibration=calibration if calibration is not None else superpoint_calibration(),
        int8_settings=SUPERPOINT_INT8,
    )


# INT8 SuperPoint (ONNX Runtime, CPU): QDQ, per-channel int8 weights, uint8 activations with
# percentile ranges; the first convolution (raw pixels) and the descriptor head's last one stay
# fp32. See `superpoint_calibration` for the calibration set; measurements in ARCHITECTURE.md.
SUPERPOINT_INT8 = Int8Settings(
    method="percentile", percentile=99.99, exclude=("/conv1a/Conv", "/convDb/Conv")
)
CALIBRATION_SIZE = (640, 480)
CALIBRATION_SYNTHETIC = {"seeds": (0, 1, 2), "frames": 6}  # rooms of `datasets.synthetic`
CALIBRATION_VERSION = 1


def superpoint_calibration(folder: str | Path | None = None) -> Calibration:
    """The INT8 calibration set: frames of synthetic rooms (`datasets.synthetic`, procedural
    textures, fixed seeds) plus the photos in `folder` (sorted, if given), all at 640x480 gray.

    Identity: the synthetic settings plus each photo's name and SHA-256 (photos are read and
    rendered only when the INT8 model is built).
    """
    photos = _calibration_photos(folder)
    ident = {
        "version": CALIBRATION_VERSION,
        "size": CALIBRATION_SIZE,
        "synthetic": CALIBRATION_SYNTHETIC,
        "photos": [[p.name, file_sha256(p)] for p in photos],
    }
    text = json.dumps(ident, sort_keys=True)

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for image in _calibration_images(photos):
            gray = to_grayscale(image).astype(np.float32) / np.float32(255.0)
            yield {"image": gray[None, None]}

    return Calibration(identity=hashlib.sha256(text.encode()).hexdigest(), feeds=feeds)


def _calibration_photos(folder: str | Path | None) -> list[Path]:
    if folder is None or str(folder) == "":
        return []
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"INT8 calibration folder {folder} does not exist")
    from ..datasets.synthetic import IMAGE_EXTENSIONS

    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not photos:
        raise ValueError(f"INT8 calibration folder {folder} holds no images")
    return photos


def _calibration_images(photos: list[Path]) -> Iterator[np.ndarray]:
    from ..datasets.synthetic import SceneConfig, build_scene, make_trajectories

    width, height = CALIBRATION_SIZE
    config = SceneConfig(
        width=width,
        height=height,
        num_map=CALIBRATION_SYNTHETIC["frames"],
        num_queries=0,
        num_points=0,
    )
    for seed in CALIBRATION_SYNTHETIC["seeds"]:
        scene = build_scene(config, seed)
        for pose in make_trajectories(config, seed)["mapping"]:
            yield scene.render(config.camera(), pose)["image"]
    for path in photos:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"could not read calibration image {path}")
        yield cv2.resize(image, CALIBRATION_SIZE, interpolation=cv2.INTER_AREA)


def sample_descriptors_np(keypoints: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """`superpoint_torch.sample_descriptors` in numpy: bilinear (border-clamped) sampling of
    (N, 2) pixel keypoints from a (D, h, w) map of stride 8, L2-normalized (N, D) float32."""
    d, h, w = dense.shape
    if keypoints.shape[0] == 0:
        return np.zeros((0, d), np.float32)
    x = np.clip((keypoints[:, 0].astype(np.float32) + 0.5) / STRIDE - 0.5, 0, w - 1)
    y = np.clip((keypoints[:, 1].astype(np.float32) + 0.5) / STRIDE - 0.5, 0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = x - x0, y - y0
    flat = dense.reshape(d, h * w)
    desc = (
        flat[:, y0 * w + x0] * ((1 - ax) * (1 - ay))
        + flat[:, y0 * w + x1] * (ax * (1 - ay))
        + flat[:, y1 * w + x0] * ((1 - ax) * ay)
        + flat[:, y1 * w + x1] * (ax * ay)
    ).T
    norm = np.linalg.norm(desc, axis=1, keepdims=True)
    return np.ascontiguousarray(desc / np.maximum(norm, 1e-12), dtype=np.float32)


def simple_nms_np(scores: np.ndarray, nms_radius: int) -> np.ndarray:
    """`simple_nms` for one (H, W) float32 map with OpenCV dilation (about 100x faster on CPU)."""
    if nms_radius <= 0:
        return scores
    kernel = np.ones((2 * nms_radius + 1, 2 * nms_radius + 1), np.uint8)
    max_mask = scores == cv2.dilate(scores, kernel)
    for _ in range(2):
        supp_mask = cv2.dilate(max_mask.view(np.uint8), kernel).view(bool)
        supp_scores = np.where(supp_mask, np.float32(0), scores)
        new_max_mask = supp_scores == cv2.dilate(supp_scores, kernel)
        max_mask |= new_max_mask & ~supp_mask
    return np.where(max_mask, scores, np.float32(0))


def check_scales(scales: Any) -> list[float]:
    """`scales` as a list of floats: 1.0 first, then decreasing values in (0, 1)."""
    try:
        values = [float(v) for v in scales]
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a list of numbers, got {scales!r}") from None
    if (
        not values
        or values[0] != 1.0
        or any(not 0.0 < v < u for u, v in itertools.pairwise(values))
    ):
        raise ValueError(
            f"scales must start with 1.0 and decrease within (0, 1), e.g. [1.0, 0.5]; got {scales!r}"
        )
    return values


def _with_scales(full: LocalFeatures, extra: list[tuple[np.ndarray, LocalFeatures]]):
    """`full`'s features followed by each further scale's (keypoints already in input-image
    coordinates); the dense map and details of the full scale."""
    return LocalFeatures(
        keypoints=np.concatenate([full.keypoints, *(kp for kp, _ in extra)]).astype(np.float32),
        scores=np.concatenate([full.scores, *(f.scores for _, f in extra)]),
        descriptors=np.concatenate([full.descriptors, *(f.descriptors for _, f in extra)]),
        dense=full.dense,
        image_size=full.image_size,
        extra={**full.extra, "scale_counts": [len(full), *(len(f) for _, f in extra)]},
    )


def _resize_for(shape: tuple[int, int], resize_max: int | None) -> tuple[int, int] | None:
    """(w, h) to resize an (H, W) image to so that max(w, h) = resize_max; None if not needed."""
    h, w = shape
    if resize_max is None or resize_max <= 0 or max(h, w) <= resize_max:
        return None
    scale = resize_max / max(h, w)
    return max(round(w * scale), 1), max(round(h * scale), 1)


class SuperPoint(Extractor):
    """SuperPoint keypoints, scores, sparse and dense descriptors (registered as "superpoint").

    Options (`default_conf`):
        weights: path to MagicLeap `superpoint_v1.pth`; None -> $SUPERGF_SUPERPOINT_WEIGHTS.
        nms_radius: radius of the max-pool NMS in pixels (0 disables NMS).
        detection_threshold: minimum keypoint probability.
        max_keypoints: keep the top-k by score; -1 keeps all.
        remove_borders: drop keypoints closer than this many pixels to the (resized) image border.
        resize_max: resize so that the longer edge is at most this (None: no resize). Keypoints
            are always returned in input-image coordinates.
        scales: image scales extracted, 1.0 first (default [1.0]). Further scales (e.g. 0.5)
            add their keypoints (`max_keypoints` each) in input-image coordinates after the
            first scale's: a map's keyframes then also hold a near structure's features at the
            size a camera further back sees them. Queries are extracted at 1.0 only (the
            Localizer's choice). Left out of `identity()` at its default.
        backend: "torch", "onnxruntime" (network through ONNX Runtime, same post-processing),
            "tensorrt" (cached engine, see supergf_ros.inference), "auto" (best available,
            see `supergf_ros.inference.backends.select_backend`), or a resolved `BackendChoice`
            (used as is, nothing is probed again; the conf then holds its names).
        device: "cpu", "cuda[:i]" or "auto" (torch device; with "onnxruntime", "cuda" selects
            the CUDA execution provider).
        onnx_cache_dir: where the "onnxruntime" backend caches its exported model (None: default).
        postprocess: where NMS, threshold, border removal, top-k and descriptor sampling run:
            "numpy" (OpenCV/numpy on the host; fastest on CPU), "torch" (`postprocess_torch` on
            the tensors where the network left them) or "auto" (torch when the PyTorch network
            runs on a GPU, numpy otherwise). With torch on a GPU the frame crosses from device to
            host once: one packed copy of (keypoints, scores, descriptors), plus the dense map
            only when `return_dense`.
        precision: "fp32", or "int8" (ONNX Runtime on the CPU only: the statically quantized
            network, built once from the fp32 ONNX file and cached, see `SUPERPOINT_INT8`). A
            runtime option: int8 queries localize against maps built in fp32.
        int8_calibration: folder of photos added to the synthetic INT8 calibration set (None:
            synthetic frames only); part of the INT8 cache key.
        return_dense: also return the dense descriptor map (SuperGF-dense and dense GeM need it;
            SuperGF-sparse, VLAD and the matching do not). Neither this nor `postprocess` changes
            the sparse features, so both stay out of `identity()`.

    Output `LocalFeatures`: keypoints (N, 2), scores (N,), descriptors (N, 256), dense
    (256, ceil(h/8), ceil(w/8)) for the processed (resized, padded to a multiple of 8) image (None
    without `return_dense`), and `extra` with `processed_size` (w, h) before padding, `scale`
    (sx, sy) = input / processed and `postprocess` ("numpy" or "torch"). After torch
    post-processing `descriptors_device` holds the descriptors on the network's device as well.
    """

    name = "superpoint"
    default_conf: dict[str, Any] = {
        "weights": None,
        "nms_radius": 4,
        "detection_threshold": 0.005,
        "max_keypoints": 1024,
        "remove_borders": 4,
        "resize_max": None,
        "scales": [1.0],
        "backend": "torch",
        "device": "cpu",
        "onnx_cache_dir": None,
        "postprocess": "auto",
        "return_dense": True,
        "precision": "fp32",
        "int8_calibration": None,
    }
    # options that change how features are computed, not what they are (kept out of identity)
    runtime_options = (
        "weights",
        "onnx_cache_dir",
        "postprocess",
        "return_dense",
        "precision",
        "int8_calibration",
    )

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        choice = resolve_backend(c["backend"], c["device"])  # a given BackendChoice is kept
        if not isinstance(c["backend"], str):  # the conf (and identity) holds names
            c["backend"], c["device"] = choice.backend, choice.device
        self.backend = choice.backend
        self._check_conf()
        self.weights_path = resolve_weights(c["weights"])
        self._sha256: str | None = None
        self.device = choice.device
        gpu = choice.backend == "torch" and choice.device_kind == "cuda"
        if gpu:
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    f"device {choice.device!r} requested but CUDA is not available here"
                )
        max_side = int(c["resize_max"]) if c["resize_max"] is not None else 2048
        self.spec = superpoint_spec(
            self.weights_path,
            self.weights_sha256,
            profile=superpoint_profile(max_side),
            calibration=superpoint_calibration(c["int8_calibration"]),
        )
        self._runner = create_runner(
            self.spec, choice, onnx_cache_dir=c["onnx_cache_dir"], int8=c["precision"] == "int8"
        )
        if c["postprocess"] == "auto":  # torch where the scores already are: on the GPU
            self.postprocess = "torch" if gpu else "numpy"
        else:
            self.postprocess = c["postprocess"]

    @property
    def net(self) -> Any:
        """The torch SuperPointNet (loaded from the weights on first use)."""
        return self.spec.module()

    def _check_conf(self) -> None:
        c = self.conf
        if int(c["nms_radius"]) < 0:
            raise ValueError(f"nms_radius must be >= 0, got {c['nms_radius']}")
        if int(c["max_keypoints"]) == 0 or int(c["max_keypoints"]) < -1:
            raise ValueError(f"max_keypoints must be -1 (all) or > 0, got {c['max_keypoints']}")
        if int(c["remove_borders"]) < 0:
            raise ValueError(f"remove_borders must be >= 0, got {c['remove_borders']}")
        if c["resize_max"] is not None and int(c["resize_max"]) < 16:
            raise ValueError(f"resize_max must be None or >= 16, got {c['resize_max']}")
        c["scales"] = check_scales(c["scales"])
        if c["postprocess"] not in ("auto", "numpy", "torch"):
            raise ValueError(
                f"postprocess must be 'auto', 'numpy' or 'torch', got {c['postprocess']!r}"
            )
        if c["precision"] not in PRECISIONS:
            raise ValueError(f"precision must be 'fp32' or 'int8', got {c['precision']!r}")
        if not isinstance(c["return_dense"], bool):
            raise ValueError(f"return_dense must be True or False, got {c['return_dense']!r}")

    @property
    def descriptor_dim(self) -> int:
        return 256

    @property
    def weights_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256

    def identity(self) -> dict[str, Any]:
        conf = {k: v for k, v in self.conf.items() if k not in self.runtime_options}
        if conf["scales"] == [1.0]:  # maps built before the option keep their identity
            del conf["scales"]
        return {"name": self.name, "config": conf, "weights_sha256": self.weights_sha256}

    def run_network(self, image: Any) -> tuple[Any, Any]:
        """(scores (B, H, W), dense (B, 256, H/8, W/8)) for a (B, 1, H, W) [0, 1] batch: torch
        tensors for a torch tensor (on the network's device with the torch backend), numpy
        arrays for a numpy array."""
        runner = self._runner
        if isinstance(runner, TorchRunner):  # outputs stay on the device
            import torch

            x = torch.as_tensor(image).to(runner.device)
            out = runner.run_torch([x])
            if isinstance(image, np.ndarray):
                return tuple(out[k].float().cpu().numpy() for k in ("scores", "descriptors"))
            return out["scores"], out["descriptors"]
        as_numpy = isinstance(image, np.ndarray)
        x = image if as_numpy else image.cpu().numpy()
        out = runner({"image": np.ascontiguousarray(x, np.float32)})
        if as_numpy:
            return out["scores"], out["descriptors"]
        import torch

        return torch.from_numpy(out["scores"]), torch.from_numpy(out["descriptors"])

    def _extract(self, image: np.ndarray) -> LocalFeatures:
        gray = to_grayscale(image)
        features = self._extract_gray(gray)
        if len(self.conf["scales"]) == 1:
            return features
        h, w = gray.shape
        base_w, base_h = _resize_for((h, w), self.conf["resize_max"]) or (w, h)
        extra = []
        for scale in self.conf["scales"][1:]:  # of the size the first scale is processed at
            # at least 16 px a side: the smallest image of SuperPoint's TensorRT profile
            size = (max(16, round(base_w * scale)), max(16, round(base_h * scale)))
            small = self._extract_gray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA))
            factor = np.array([w / size[0], h / size[1]], np.float32)
            extra.append(((small.keypoints + 0.5) * factor - 0.5, small))
        return _with_scales(features, extra)

    def _extract_gray(self, gray: np.ndarray) -> LocalFeatures:
        """The features of one scale: a 2-D uint8 image."""
        c = self.conf
        in_h, in_w = gray.shape
        new_size = _resize_for((in_h, in_w), c["resize_max"])
        if new_size is not None:
            gray = cv2.resize(gray, new_size, interpolation=cv2.INTER_AREA)
        h, w = gray.shape
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        x = gray.astype(np.float32) / np.float32(255.0)
        if pad_h or pad_w:  # replicate-pad right/bottom; the padded area is ignored below
            x = np.pad(x, ((0, pad_h), (0, pad_w)), mode="edge")
        x = x[None, None]
        on_device = None
        if self.postprocess == "torch":
            keypoints, kp_scores, descriptors, on_device, dense_np = self._postprocess_torch(
                x, h, w
            )
        else:
            scores, dense = self.run_network(x)
            dense_np = np.ascontiguousarray(dense[0], dtype=np.float32)
            keypoints, kp_scores, descriptors = self._postprocess_numpy(
                np.array(scores[0, :h, :w], dtype=np.float32), dense_np
            )
            if not c["return_dense"]:
                dense_np = None
        scale = (in_w / w, in_h / h)
        if new_size is not None:
            keypoints = (keypoints + 0.5) * np.array(scale, dtype=np.float32) - 0.5
        return LocalFeatures(
            keypoints=np.ascontiguousarray(keypoints, dtype=np.float32),
            scores=kp_scores.astype(np.float32, copy=False),
            descriptors=descriptors.astype(np.float32, copy=False),
            dense=dense_np,
            image_size=(in_w, in_h),
            extra={
                "processed_size": (w, h),
                "scale": scale,
                "postprocess": self.postprocess,
            },
            descriptors_device=on_device,
        )

    def _postprocess_numpy(
        self, scores: np.ndarray, dense: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keypoints (N, 2), scores (N,), descriptors (N, 256)) with OpenCV/numpy on the host.

        `scores` is the (H, W) probability map, `dense` the (256, h, w) CPU descriptor map.
        """
        c = self.conf
        scores = simple_nms_np(np.ascontiguousarray(scores), int(c["nms_radius"]))
        b = int(c["remove_borders"])
        if b > 0:
            scores[:b] = 0
            scores[-b:] = 0
            scores[:, :b] = 0
            scores[:, -b:] = 0
        rows, cols = np.nonzero(scores > float(c["detection_threshold"]))
        kp_scores = scores[rows, cols]
        k = int(c["max_keypoints"])
        if 0 < k < kp_scores.shape[0]:
            top = np.argpartition(-kp_scores, k - 1)[:k]
            rows, cols, kp_scores = rows[top], cols[top], kp_scores[top]
        order = np.argsort(-kp_scores, kind="stable")
        keypoints = np.stack([cols[order], rows[order]], axis=1).astype(np.float32)
        kp_scores = kp_scores[order]
        descriptors = sample_descriptors_np(keypoints, dense)
        return keypoints, kp_scores, descriptors

    def _postprocess_torch(
        self, x: np.ndarray, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, np.ndarray | None]:
        """Network and `postprocess_torch` where the tensors are, then ONE packed device -> host
        copy (plus the dense map when `return_dense`): keypoints, scores, descriptors, the (N, D)
        descriptors left on the device, the host dense map or None."""
        import torch

        from .superpoint_torch import postprocess_torch

        c = self.conf
        with torch.inference_mode():
            scores, dense = self.run_network(torch.from_numpy(x))
            out = postprocess_torch(
                scores[0, :h, :w],
                dense[0],
                nms_radius=int(c["nms_radius"]),
                detection_threshold=float(c["detection_threshold"]),
                max_keypoints=int(c["max_keypoints"]),
                remove_borders=int(c["remove_borders"]),
            )
            columns = [out["keypoints"], out["scores"][:, None], out["valid"][:, None].float()]
            packed = torch.cat([*columns, out["descriptors"]], dim=1)  # (K, 2 + 1 + 1 + D)
            host = packed.cpu().numpy()
            dense_np = None
            if c["return_dense"]:  # the only other device -> host copy
                dense_np = dense[0].to("cpu", torch.float32).contiguous().numpy()
        n = int(np.count_nonzero(host[:, 3]))  # valid candidates are a prefix
        keypoints = np.ascontiguousarray(host[:n, :2])
        kp_scores = np.ascontiguousarray(host[:n, 2])
        descriptors = np.ascontiguousarray(host[:n, 4:])
        return keypoints, kp_scores, descriptors, out["descriptors"][:n], dense_np
