"""SuperPoint in PyTorch: the MagicLeap network, its weights loader and the torch post-processing.

Imported only by the torch backend, the ONNX export (when the ONNX file is not cached yet) and
the GPU post-processing; ONNX Runtime runs the extractor without importing torch at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .superpoint_common import STRIDE, WEIGHTS_HELP


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


def load_superpoint_net(path: str | Path) -> SuperPointNet:
    """A SuperPointNet in eval mode with the state dict at `path` (torch.load weights_only=True).

    Raises ValueError when the file is not a SuperPointNet state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SuperPoint weights file {path} does not exist. {WEIGHTS_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read SuperPoint weights {path} with torch.load(weights_only=True): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. {WEIGHTS_HELP}"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"SuperPoint weights {path} hold a {type(state).__name__}, not a state dict of "
            f"tensors. {WEIGHTS_HELP}"
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
            f"keys {unexpected[:6]}, wrong shapes {wrong_shape[:6]}. {WEIGHTS_HELP}"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


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
