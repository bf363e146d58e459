"""SuperPoint (DeTone, Malisiewicz, Rabinovich, CVPRW 2018): the MagicLeap network and extractor.

`SuperPointNet` is the plain network (export-friendly: no data-dependent control flow);
`SuperPoint` is the extractor registered as "superpoint": grayscale -> pad to a multiple of 8 ->
network (PyTorch or ONNX Runtime) -> NMS -> threshold -> border removal -> top-k -> bilinear
descriptor sampling from the dense map.

Coordinates follow the pixel-centre convention: the centre of the top-left pixel is (0, 0); a
coarse descriptor cell (i, j) of stride 8 covers pixels 8j .. 8j+7 and its centre is 8j + 3.5.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference.backends import create_runner, resolve_backend
from ..inference.runners import TorchRunner
from ..inference.spec import ModelSpec, Profile, round_up
from .base import Extractor, LocalFeatures, file_sha256, to_grayscale

WEIGHTS_ENV = "SUPERGF_SUPERPOINT_WEIGHTS"
STRIDE = 8

_WEIGHTS_HELP = (
    "SuperPoint expects the MagicLeap 'superpoint_v1.pth' file (a SuperPointNet state dict with "
    "keys conv1a ... convDb). Provide it with the extractor option weights=PATH, the environment "
    f"variable {WEIGHTS_ENV}=PATH, or the command-line option --superpoint-weights PATH. "
    "Weights are never downloaded automatically."
)


class SuperPointNet(nn.Module):
    """The MagicLeap SuperPoint network (state-dict keys conv1a ... convDb, 1,300,865 params).

    forward(image): image (B, 1, H, W) float32 in [0, 1], H and W multiples of 8 ->
        scores (B, H, W): keypoint probability per pixel (softmax over 65 channels, dustbin
            dropped, depth-to-space);
        descriptors (B, 256, H/8, W/8): dense descriptors, L2-normalized along channels.
    """

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, d1 = 64, 64, 128, 128, 256, 256
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv1a = nn.Conv2d(1, c1, kernel_size=3, stride=1, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, kernel_size=3, stride=1, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, kernel_size=3, stride=1, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, kernel_size=3, stride=1, padding=1)
        self.conv3a = nn.Conv2d(c2, c3, kernel_size=3, stride=1, padding=1)
        self.conv3b = nn.Conv2d(c3, c3, kernel_size=3, stride=1, padding=1)
        self.conv4a = nn.Conv2d(c3, c4, kernel_size=3, stride=1, padding=1)
        self.conv4b = nn.Conv2d(c4, c4, kernel_size=3, stride=1, padding=1)
        self.convPa = nn.Conv2d(c4, c5, kernel_size=3, stride=1, padding=1)
        self.convPb = nn.Conv2d(c5, 65, kernel_size=1, stride=1, padding=0)
        self.convDa = nn.Conv2d(c4, c5, kernel_size=3, stride=1, padding=1)
        self.convDb = nn.Conv2d(c5, d1, kernel_size=1, stride=1, padding=0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if image.ndim != 4 or image.shape[1] != 1:
                raise ValueError(f"SuperPointNet expects (B, 1, H, W), got {tuple(image.shape)}")
            if image.shape[2] % STRIDE or image.shape[3] % STRIDE:
                raise ValueError(
                    f"SuperPointNet needs H and W multiples of {STRIDE}, got {tuple(image.shape)}"
                )
        x = self.relu(self.conv1a(image))
        x = self.relu(self.conv1b(x))
        x = self.pool(x)
        x = self.relu(self.conv2a(x))
        x = self.relu(self.conv2b(x))
        x = self.pool(x)
        x = self.relu(self.conv3a(x))
        x = self.relu(self.conv3b(x))
        x = self.pool(x)
        x = self.relu(self.conv4a(x))
        x = self.relu(self.conv4b(x))

        semi = self.convPb(self.relu(self.convPa(x)))  # (B, 65, H/8, W/8)
        prob = torch.softmax(semi, dim=1)[:, :-1]  # drop the "no keypoint" dustbin
        scores = F.pixel_shuffle(prob, STRIDE)[:, 0]  # (B, H, W); channel k -> (k // 8, k % 8)

        desc = self.convDb(self.relu(self.convDa(x)))  # (B, 256, H/8, W/8)
        desc = F.normalize(desc, p=2.0, dim=1)
        return scores, desc


def resolve_weights(weights: str | Path | None) -> Path:
    """The SuperPoint weights file: conf `weights`, else $SUPERGF_SUPERPOINT_WEIGHTS.

    Raises FileNotFoundError naming where it looked and how to provide the file.
    """
    looked: list[str] = []
    if weights is not None and str(weights) != "":
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        looked.append(f"option weights={path} (file not found)")
    else:
        looked.append("option weights (not set)")
        env = os.environ.get(WEIGHTS_ENV, "")
        if env:
            path = Path(env).expanduser()
            if path.is_file():
                return path
            looked.append(f"${WEIGHTS_ENV}={path} (file not found)")
        else:
            looked.append(f"${WEIGHTS_ENV} (not set)")
    raise FileNotFoundError(
        "SuperPoint weights not found; looked at: " + "; ".join(looked) + ". " + _WEIGHTS_HELP
    )


def load_superpoint_net(path: str | Path) -> SuperPointNet:
    """A SuperPointNet in eval mode with the state dict at `path` (torch.load weights_only=True).

    Raises ValueError when the file is not a SuperPointNet state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SuperPoint weights file {path} does not exist. {_WEIGHTS_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read SuperPoint weights {path} with torch.load(weights_only=True): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. {_WEIGHTS_HELP}"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"SuperPoint weights {path} hold a {type(state).__name__}, not a state dict of "
            f"tensors. {_WEIGHTS_HELP}"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = SuperPointNet()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path} is not a SuperPointNet state dict: missing keys {missing[:6]}, unexpected "
            f"keys {unexpected[:6]}, wrong shapes {wrong_shape[:6]}. {_WEIGHTS_HELP}"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


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
    net: SuperPointNet, weights_sha256: str, *, profile: Profile | None = None
) -> ModelSpec:
    """ModelSpec for a SuperPointNet (its ONNX file is keyed by the weights' hash)."""
    return ModelSpec(
        name="superpoint",
        build_module=lambda: net,
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
    )


def _max_pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable (2r+1)x(2r+1) max filter with stride 1 on (B, H, W) (same result as max_pool2d)."""
    k = 2 * radius + 1
    x = F.max_pool2d(x[:, None], kernel_size=(1, k), stride=1, padding=(0, radius))
    x = F.max_pool2d(x, kernel_size=(k, 1), stride=1, padding=(radius, 0))
    return x[:, 0]


def simple_nms(scores: torch.Tensor, nms_radius: int) -> torch.Tensor:
    """Max-pool non-maximum suppression of (B, H, W) scores (as in SuperGlue); zeros elsewhere.

    Batched torch version, used by `postprocess_torch` (the GPU path); on CPU the extractor
    uses `simple_nms_np`, which is much faster there.
    """
    if nms_radius <= 0:
        return scores
    zeros = torch.zeros_like(scores)
    max_mask = scores == _max_pool(scores, nms_radius)
    for _ in range(2):
        supp_mask = _max_pool(max_mask.float(), nms_radius) > 0
        supp_scores = torch.where(supp_mask, zeros, scores)
        new_max_mask = supp_scores == _max_pool(supp_scores, nms_radius)
        max_mask = max_mask | (new_max_mask & (~supp_mask))
    return torch.where(max_mask, scores, zeros)


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


def sample_descriptors(
    keypoints: torch.Tensor, dense: torch.Tensor, stride: int = STRIDE
) -> torch.Tensor:
    """Bilinearly sample L2-normalized descriptors at pixel keypoints from a dense map.

    Args:
        keypoints: (N, 2) float (x, y) in pixels of the image the map was computed on
            (pixel-centre convention).
        dense: (D, h, w) descriptor map with cell (i, j) centred at pixel (stride*j + stride/2 - 0.5,
            stride*i + stride/2 - 0.5).
    Returns:
        (N, D) float32 descriptors, L2-normalized.
    """
    d, h, w = dense.shape
    if keypoints.shape[0] == 0:
        return dense.new_zeros((0, d))
    # align_corners=False maps this onto cell centres; scalar factors (no host -> device copy)
    grid = torch.stack(
        [
            (keypoints[:, 0] + 0.5) * (2.0 / (w * stride)) - 1.0,
            (keypoints[:, 1] + 0.5) * (2.0 / (h * stride)) - 1.0,
        ],
        dim=1,
    )
    desc = F.grid_sample(
        dense[None],
        grid[None, None].to(dense.dtype),
        mode="bilinear",
        align_corners=False,
        padding_mode="border",
    )  # (1, D, 1, N)
    return F.normalize(desc[0, :, 0].t(), p=2.0, dim=1)


def postprocess_torch(
    scores: torch.Tensor,
    dense: torch.Tensor,
    *,
    nms_radius: int = 4,
    detection_threshold: float = 0.005,
    max_keypoints: int = 1024,
    remove_borders: int = 4,
) -> dict[str, torch.Tensor]:
    """SuperPoint post-processing in torch, on whatever device the network outputs are.

    NMS (max-pool), border removal, threshold, top-k and bilinear descriptor sampling + L2 norm;
    the same result as the extractor's numpy/OpenCV path (up to the order of equal scores). With
    `max_keypoints` > 0 nothing here waits for the device: the top-k candidates are kept with a
    `valid` mask instead of a data-dependent selection, so the caller can copy everything to the
    host at once. With `max_keypoints` = -1 the threshold needs one synchronization (nonzero).

    Args:
        scores: (H, W) keypoint probabilities of the valid (unpadded) image area.
        dense: (D, h, w) dense descriptors of the (padded) image, cell stride 8.
        nms_radius, detection_threshold, max_keypoints, remove_borders: as `SuperPoint`.
    Returns:
        dict of tensors on the inputs' device, K = min(max_keypoints, H * W) candidates (all
        thresholded pixels with max_keypoints = -1), sorted by decreasing score:
        "keypoints" (K, 2) float32 (x, y) pixels; "scores" (K,) float32; "descriptors" (K, D)
        float32 L2-normalized; "valid" (K,) bool, score > detection_threshold (a prefix).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (H, W), got {tuple(scores.shape)}")
    if dense.ndim != 3:
        raise ValueError(f"dense must have shape (D, h, w), got {tuple(dense.shape)}")
    if max_keypoints == 0 or max_keypoints < -1:
        raise ValueError(f"max_keypoints must be -1 (all) or > 0, got {max_keypoints}")
    w = scores.shape[1]
    scores = scores.float()
    if nms_radius > 0:
        scores = simple_nms(scores[None], int(nms_radius))[0]  # a new tensor
    else:
        scores = scores.clone()
    b = int(remove_borders)
    if b > 0:
        scores[:b] = 0
        scores[-b:] = 0
        scores[:, :b] = 0
        scores[:, -b:] = 0
    flat = scores.reshape(-1)
    if max_keypoints > 0:
        top_scores, index = flat.topk(min(int(max_keypoints), flat.numel()), sorted=True)
        valid = top_scores > detection_threshold
    else:
        index = torch.nonzero(flat > detection_threshold).squeeze(1)  # row-major, as numpy
        top_scores, order = flat[index].sort(descending=True, stable=True)
        index = index[order]
        valid = torch.ones_like(top_scores, dtype=torch.bool)
    keypoints = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], 1).float()
    descriptors = sample_descriptors(keypoints, dense.float())
    return {
        "keypoints": keypoints,
        "scores": top_scores,
        "descriptors": descriptors,
        "valid": valid,
    }


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
        "backend": "torch",
        "device": "cpu",
        "onnx_cache_dir": None,
        "postprocess": "auto",
        "return_dense": True,
    }
    # options that change how features are computed, not what they are (kept out of identity)
    runtime_options = ("weights", "onnx_cache_dir", "postprocess", "return_dense")

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        choice = resolve_backend(c["backend"], c["device"])  # a given BackendChoice is kept
        if not isinstance(c["backend"], str):  # the conf (and identity) holds names
            c["backend"], c["device"] = choice.backend, choice.device
        self.backend = choice.backend
        self._check_conf()
        self.weights_path = resolve_weights(c["weights"])
        self.net = load_superpoint_net(self.weights_path)
        self._sha256: str | None = None
        self.device = torch.device(choice.device)
        gpu = choice.backend != "tensorrt" and self.device.type == "cuda"
        if gpu and not torch.cuda.is_available():
            raise ValueError(f"device {choice.device!r} requested but CUDA is not available here")
        max_side = int(c["resize_max"]) if c["resize_max"] is not None else 2048
        spec = superpoint_spec(self.net, self.weights_sha256, profile=superpoint_profile(max_side))
        self._runner = create_runner(spec, choice, onnx_cache_dir=c["onnx_cache_dir"])
        if c["postprocess"] == "auto":  # torch where the scores already are: on the GPU
            on_gpu = choice.backend == "torch" and self.device.type == "cuda"
            self.postprocess = "torch" if on_gpu else "numpy"
        else:
            self.postprocess = c["postprocess"]

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
        if c["postprocess"] not in ("auto", "numpy", "torch"):
            raise ValueError(
                f"postprocess must be 'auto', 'numpy' or 'torch', got {c['postprocess']!r}"
            )
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
        return {"name": self.name, "config": conf, "weights_sha256": self.weights_sha256}

    def run_network(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B, H, W), dense (B, 256, H/8, W/8)) for a (B, 1, H, W) [0, 1] batch."""
        runner = self._runner
        if isinstance(runner, TorchRunner):  # outputs stay on the device
            out = runner.run_torch([image.to(runner.device)])
            return out["scores"], out["descriptors"]
        out = runner({"image": np.ascontiguousarray(image.cpu().numpy(), np.float32)})
        return torch.from_numpy(out["scores"]), torch.from_numpy(out["descriptors"])

    def _extract(self, image: np.ndarray) -> LocalFeatures:
        c = self.conf
        gray = to_grayscale(image)
        in_h, in_w = gray.shape
        new_size = _resize_for((in_h, in_w), c["resize_max"])
        if new_size is not None:
            gray = cv2.resize(gray, new_size, interpolation=cv2.INTER_AREA)
        h, w = gray.shape
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE

        with torch.inference_mode():
            x = torch.from_numpy(gray).to(torch.float32).div_(255.0)[None, None]
            if pad_h or pad_w:  # replicate-pad right/bottom; the padded area is ignored below
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            scores, dense = self.run_network(x)
            on_device = None
            dense_host = None
            if self.postprocess == "torch":
                keypoints, kp_scores, descriptors, on_device = self._postprocess_torch(
                    scores[0, :h, :w], dense[0]
                )
                if c["return_dense"]:  # the only other device -> host copy
                    dense_host = dense[0].to("cpu", torch.float32).contiguous()
            else:
                dense_host = dense[0].to("cpu", torch.float32).contiguous()
                keypoints, kp_scores, descriptors = self._postprocess_numpy(
                    scores[0, :h, :w].to("cpu", torch.float32).numpy(), dense_host
                )
            dense_np = dense_host.numpy() if c["return_dense"] else None

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
        self, scores: np.ndarray, dense: torch.Tensor
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
        descriptors = sample_descriptors(torch.from_numpy(keypoints), dense).numpy()
        return keypoints, kp_scores, descriptors

    def _postprocess_torch(
        self, scores: torch.Tensor, dense: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """`postprocess_torch` where the tensors are, then ONE packed device -> host copy; the
        last item is the (N, D) descriptors left on the device."""
        c = self.conf
        out = postprocess_torch(
            scores,
            dense,
            nms_radius=int(c["nms_radius"]),
            detection_threshold=float(c["detection_threshold"]),
            max_keypoints=int(c["max_keypoints"]),
            remove_borders=int(c["remove_borders"]),
        )
        columns = [out["keypoints"], out["scores"][:, None], out["valid"][:, None].float()]
        packed = torch.cat([*columns, out["descriptors"]], dim=1)  # (K, 2 + 1 + 1 + D)
        host = packed.cpu().numpy()
        n = int(np.count_nonzero(host[:, 3]))  # valid candidates are a prefix
        keypoints = np.ascontiguousarray(host[:n, :2])
        kp_scores = np.ascontiguousarray(host[:n, 2])
        descriptors = np.ascontiguousarray(host[:n, 4:])
        return keypoints, kp_scores, descriptors, out["descriptors"][:n]
