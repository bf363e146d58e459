"""Building blocks of the SuperGF aggregators: GeM, pre-norm ViT encoder, slot attention, and a
learned 2-D position embedding that is resized to any token grid.

All blocks are plain PyTorch ops that export to ONNX with dynamic token counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalized-mean pooling with a learnable exponent p over one dimension.

    forward(x (B, T, C), mask (B, T) bool | None) -> (B, C); masked-out tokens are ignored.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.clamp(min=self.eps).pow(self.p)
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            m = mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return pooled.clamp(min=self.eps).pow(1.0 / self.p)


class MultiHeadSelfAttention(nn.Module):
    """Standard multi-head self-attention written with matmuls (exports cleanly to ONNX)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"latent dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, head_dim)
        attn = torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(out)


class EncoderLayer(nn.Module):
    """Pre-norm ViT encoder layer: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SlotAttention(nn.Module):
    """Cluster a variable-size, masked set of features into S learned slots.

    Learned slots are the queries; keys and values come from the LayerNorm'd features through
    linear projections. The softmax runs over slots (slots compete for each feature), then each
    slot takes the attention-weighted mean of the values of the valid features.

    forward(x (B, N, C), mask (B, N) bool | None) ->
        tokens (B, S, C), attention (B, S, N): per-slot weights over features, rows sum to 1 over
        valid features (all zero when a sample has no valid feature; its tokens are then the
        learned slots plus a constant, a defined output for N = 0).
    """

    def __init__(self, dim: int, num_slots: int, iterations: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        if num_slots < 1 or iterations < 1:
            raise ValueError("num_slots and slot iterations must be >= 1")
        self.slots = nn.Parameter(torch.randn(num_slots, dim))
        self.norm_features = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.iterations = iterations
        self.scale = dim**-0.5
        self.eps = eps

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm_features(x)
        k, v = self.to_k(x), self.to_v(x)  # (B, N, C)
        slots = self.slots.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, S, C)
        for _ in range(self.iterations):  # >= 1, checked in __init__
            q = self.to_q(self.norm_slots(slots))
            logits = (q * self.scale) @ k.transpose(1, 2)  # (B, S, N)
            attn = torch.softmax(logits, dim=1)  # slots compete for each feature
            if mask is not None:
                attn = attn * mask.unsqueeze(1).to(attn.dtype)
            weights = attn / (attn.sum(dim=-1, keepdim=True) + self.eps)
            slots = self.slots.unsqueeze(0) + self.out(weights @ v)
        return slots, weights


class PositionEmbedding2D(nn.Module):
    """Learned 2-D position embedding on a (gh, gw) grid, resized to any token grid.

    forward(height, width taken from a (B, C, h, w) tensor) -> (1, h * w, C).
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], mode: str = "bicubic") -> None:
        super().__init__()
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"position embedding mode must be bicubic or bilinear, got {mode}")
        self.embedding = nn.Parameter(torch.zeros(1, dim, int(grid_size[0]), int(grid_size[1])))
        nn.init.trunc_normal_(self.embedding, std=0.02)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always interpolate (identity at the native size) so the ONNX graph stays size-dynamic.
        pos = F.interpolate(self.embedding, size=x.shape[-2:], mode=self.mode, align_corners=False)
        return pos.flatten(2).transpose(1, 2)


def mlp(channels: list[int], norm: bool = True) -> nn.Sequential:
    """Linear layers with LayerNorm + ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(nn.Linear(channels[i - 1], channels[i]))
        if i < len(channels) - 1:
            if norm:
                layers.append(nn.LayerNorm(channels[i]))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
