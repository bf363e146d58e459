"""NetVLAD (Arandjelovic et al., CVPR 2016) on a VGG16 conv5_3 backbone, written without
torchvision. Used as the "two networks" cost baseline in the benchmark (random weights)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..inference.spec import ModelSpec
from .checkpoint import model_key

# VGG16 "D" configuration up to conv5_3 (+ ReLU); the last max-pool is dropped, as in NetVLAD.
VGG16_CONV5 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class NetVLADLayer(nn.Module):
    """Soft-assignment VLAD pooling: (B, C, h, w) -> (B, K * C), intra- and L2-normalized."""

    def __init__(self, num_clusters: int = 64, dim: int = 512, alpha: float = 100.0) -> None:
        super().__init__()
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        with torch.no_grad():  # the paper's initialization from the centroids
            self.conv.weight.copy_((2.0 * alpha * self.centroids)[..., None, None])
            self.conv.bias.copy_(-alpha * self.centroids.norm(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)  # descriptor-wise L2
        b = x.shape[0]
        assign = torch.softmax(self.conv(x).flatten(2), dim=1)  # (B, K, hw)
        x = x.flatten(2)  # (B, C, hw)
        # sum_i a_k(x_i) (x_i - c_k) = a @ x^T - (sum_i a_k(x_i)) c_k
        vlad = assign @ x.transpose(1, 2) - assign.sum(-1, keepdim=True) * self.centroids[None]
        vlad = F.normalize(vlad, dim=2)  # intra-normalization
        return F.normalize(vlad.reshape(b, -1), dim=1)


class NetVLAD(nn.Module):
    """VGG16 conv5_3 + NetVLAD. Input {"image": (B, 3, H, W) in [0, 1]} ->
    {"global_descriptor": (B, num_clusters * 512)}."""

    name: ClassVar[str] = "netvlad"
    default_conf: ClassVar[dict[str, Any]] = {"num_clusters": 64}

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__()
        unknown = set(conf or {}) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown NetVLAD option(s) {sorted(unknown)}")
        self.conf = {**self.default_conf, **(conf or {})}
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16_CONV5:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.backbone = nn.Sequential(*layers)
        self.pool = NetVLADLayer(self.conf["num_clusters"], channels)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @property
    def dim(self) -> int:
        return int(self.conf["num_clusters"]) * 512

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"NetVLAD expects images (B, 3, H, W), got {tuple(image.shape)}")
        x = self.backbone((image - self.mean) / self.std)
        return {"global_descriptor": self.pool(x)}


class NetVLADPositional(nn.Module):
    """Tensor-in/tensor-out view of `NetVLAD` for ONNX export ("image" -> "global_descriptor")."""

    def __init__(self, net: NetVLAD) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net({"image": image})["global_descriptor"]


def netvlad_spec(net: NetVLAD) -> ModelSpec:
    """ModelSpec for a NetVLAD ("image" (B, 3, H, W) in [0, 1] -> "global_descriptor")."""
    wrapped = NetVLADPositional(net).eval()
    return ModelSpec(
        name="netvlad",
        build_module=lambda: wrapped,
        example_inputs=lambda: (torch.zeros(1, 3, 64, 64).numpy(),),
        input_names=["image"],
        output_names=["global_descriptor"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}},
        key=model_key(net),
    )
