"""SuperGF global descriptor models (Song et al., arXiv 2212.13105), dense and sparse variants.

Both aggregate the local features that the matching network already produced into one
L2-normalized global descriptor: a few pre-norm ViT encoder layers, GeM pooling, L2 norm.

- `SuperGFDense`: {"dense": (B, D, h, w)} -> tokenizer conv (stride 2) -> learned 2-D position
  embedding resized to the token grid -> encoder -> GeM -> L2 -> {"global_descriptor": (B, E)}.
  With ``aggregation="residual"`` the map's cells are aggregated by residual slots as below.
- `SuperGFSparse`: keypoints, descriptors, scores (+ padding mask) -> positional encoding of
  descriptor + normalized keypoint position + score -> slot attention to S tokens -> encoder ->
  GeM -> L2 -> {"global_descriptor": (B, E), "attention": (B, S, N)}.
  With ``aggregation="residual"`` the slots attend NetVLAD-style: each keypoint is softly
  assigned to S slots (logits from its descriptor, plus a position/score term), every slot token
  is the assignment-weighted sum of residuals to its slot centre, and the encoder output is
  intra-normalized and concatenated (E = S * latent_dim). `init_from_codebook` sets the slots
  from k-means centroids of training descriptors, and the encoder starts as the identity, so the
  untrained model is a soft-assignment VLAD and training starts from training-free quality.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EncoderLayer, GeM, PositionEmbedding2D, SlotAttention, mlp

BASE_CONF: dict[str, Any] = {
    "input_dim": 256,  # local descriptor dim: 256 SuperPoint, 128 SIFT
    "latent_dim": 512,  # token dim = global descriptor dim
    "mlp_dim": 1024,  # hidden dim of the encoder MLPs
    "num_layers": 3,
    "num_heads": 8,
    "gem_p": 3.0,
    "learn_gem_p": True,
}


def _is_exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or infinite values")


class SuperGFBase(nn.Module):
    """Shared config handling: `default_conf` merged with the user conf (unknown keys rejected)."""

    name: ClassVar[str] = ""
    default_conf: ClassVar[dict[str, Any]] = {}

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__()
        conf = dict(conf or {})
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(
                f"unknown option(s) for model '{self.name}': {sorted(unknown)}; "
                f"valid: {sorted(self.default_conf)}"
            )
        self.conf = {**self.default_conf, **conf}
        for key in ("input_dim", "latent_dim", "mlp_dim", "num_layers", "num_heads"):
            if int(self.conf[key]) < 1:
                raise ValueError(f"model option {key} must be >= 1, got {self.conf[key]}")

    @property
    def dim(self) -> int:
        """Size of the global descriptor."""
        return int(self.conf["latent_dim"])

    def _encoder(self) -> nn.ModuleList:
        c = self.conf
        return nn.ModuleList(
            EncoderLayer(c["latent_dim"], c["num_heads"], c["mlp_dim"])
            for _ in range(c["num_layers"])
        )

    # ONNX description, overridden by the variants.
    input_names: ClassVar[list[str]] = []
    output_names: ClassVar[list[str]] = []
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {}

    def example_inputs(self, **sizes: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def forward_positional(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """forward() over positional tensors in `input_names` order (used for ONNX export)."""
        out = self(dict(zip(self.input_names, inputs)))
        return tuple(out[k] for k in self.output_names)


class ResidualSlotsBase(SuperGFBase):
    """NetVLAD-like residual slots shared by both variants (``aggregation="residual"``).

    Each local descriptor x_n is softly assigned to S slots with logits
    ``x_n @ keys^T + bias + pos_mlp(p_n)`` (p_n: normalized position, plus the detection score for
    keypoints); slot s gets ``sum_n a_sn (x_n - c_s)``, intra-normalized, projected to latent_dim
    (identity at init when input_dim == latent_dim), passed through the pre-norm encoder (residual
    branches zero at init: the identity) and intra-normalized again; the tokens are concatenated and
    L2-normalized (dim S * latent_dim). `init_from_codebook` makes the untrained model a
    soft-assignment VLAD over a k-means codebook.
    """

    @property
    def residual(self) -> bool:
        return self.conf.get("aggregation") == "residual"

    @property
    def dim(self) -> int:
        """Size of the global descriptor (num_slots * latent_dim in residual mode)."""
        c = self.conf
        return int(c["num_slots"]) * int(c["latent_dim"]) if self.residual else int(c["latent_dim"])

    def _init_residual(self, position_dim: int) -> None:
        c = self.conf
        if int(c["num_slots"]) < 1:
            raise ValueError(f"num_slots must be >= 1, got {c['num_slots']}")
        s, d, e = int(c["num_slots"]), int(c["input_dim"]), int(c["latent_dim"])
        centroids = F.normalize(torch.randn(s, d), dim=-1)
        self.centroids = nn.Parameter(centroids.clone())  # slot centres (descriptor space)
        self.slot_keys = nn.Parameter(centroids.clone())  # assignment logits: x @ keys.T + bias
        self.slot_bias = nn.Parameter(torch.zeros(s))
        # position (+ score) -> per-slot logit offsets; zero at init (pure descriptor assignment)
        self.keypoint_encoder = mlp([position_dim, *c["keypoint_encoder"], s])
        nn.init.zeros_(self.keypoint_encoder[-1].weight)
        nn.init.zeros_(self.keypoint_encoder[-1].bias)
        self.token_proj = nn.Linear(d, e)
        if d == e:  # identity: tokens are the VLAD residuals
            with torch.no_grad():
                self.token_proj.weight.copy_(torch.eye(d))
                self.token_proj.bias.zero_()
        self.layers = self._encoder()
        for layer in self.layers:  # residual branches start at zero: the encoder is the identity
            for lin in (layer.attn.proj, layer.mlp[-1]):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    @torch.no_grad()
    def init_from_codebook(self, centroids: torch.Tensor, alpha: float) -> None:
        """Residual mode: slots from a k-means codebook (S, D); soft assignment
        softmax_s(-alpha * ||x - c_s||^2), i.e. keys 2 alpha c_s and bias -alpha ||c_s||^2."""
        if not self.residual:
            raise ValueError("init_from_codebook needs model option aggregation='residual'")
        c = torch.as_tensor(centroids, dtype=torch.float32)
        if c.shape != self.centroids.shape:
            raise ValueError(
                f"codebook must have shape {tuple(self.centroids.shape)} (num_slots, input_dim), "
                f"got {tuple(c.shape)}"
            )
        if not alpha > 0:
            raise ValueError(f"assignment sharpness alpha must be > 0, got {alpha}")
        self.centroids.copy_(c)
        self.slot_keys.copy_(2.0 * alpha * c)
        self.slot_bias.copy_(-alpha * (c * c).sum(-1))

    def _forward_residual(
        self, desc: torch.Tensor, position: torch.Tensor, mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """desc (B, N, D), position (B, N, P), mask (B, N) or None -> descriptor + attention."""
        logits = desc @ self.slot_keys.t() + self.slot_bias + self.keypoint_encoder(position)
        attn = torch.softmax(logits, dim=-1).transpose(1, 2)  # (B, S, N): slots compete
        if mask is not None:
            attn = attn * mask.unsqueeze(1).to(attn.dtype)
        # sum_n a_sn (x_n - c_s) = A X - (sum_n a_sn) c_s
        residuals = attn @ desc - attn.sum(-1, keepdim=True) * self.centroids.unsqueeze(0)
        p = float(self.conf["residual_power"])
        if p != 1.0:
            residuals = torch.sign(residuals) * (residuals.abs() + 1e-6).pow(p)
        tokens = self.token_proj(F.normalize(residuals, dim=-1))  # intra-normalization
        for layer in self.layers:
            tokens = layer(tokens)
        # + a tiny constant: an empty keypoint set (all residuals zero) still gives a unit vector
        g = F.normalize(tokens, dim=-1).flatten(1) + 1e-6
        weights = attn / (attn.sum(dim=-1, keepdim=True) + 1e-8)
        return {"global_descriptor": F.normalize(g, dim=-1), "attention": weights}


class SuperGFDense(ResidualSlotsBase):
    """Dense SuperGF.

    Input: {"dense": (B, D, h, w) float32 dense local descriptor map (h = H/8 for SuperPoint)}.
    Output: {"global_descriptor": (B, dim) unit L2 norm}; with ``aggregation="residual"`` also
    "attention" (B, num_slots, h * w).

    - ``aggregation="tokens"`` (the paper): tokenizer conv (tokens ceil(h/2) x ceil(w/2)) ->
      position embedding -> encoder -> GeM; dim = latent_dim.
    - ``aggregation="residual"``: every cell of the map is a local descriptor (L2-normalized) at
      its normalized grid position, aggregated by residual slots (`ResidualSlotsBase`);
      dim = num_slots * latent_dim.
    """

    name = "supergf-dense"
    default_conf = {
        **BASE_CONF,
        "aggregation": "tokens",  # "tokens" (the paper) | "residual" (NetVLAD-like slots)
        "tokenizer_kernel": 3,
        "tokenizer_stride": 2,
        "pos_grid": [30, 40],  # native position grid (640x480 SuperPoint input), resized as needed
        "pos_mode": "bicubic",
        # residual aggregation only: slots, position MLP hidden sizes, residual power
        "num_slots": 64,
        "keypoint_encoder": [32, 64, 128, 256],
        "residual_power": 1.0,
    }
    input_names = ["dense"]
    output_names = ["global_descriptor"]
    dynamic_axes = {
        "dense": {0: "batch", 2: "height", 3: "width"},
        "global_descriptor": {0: "batch"},
    }

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__(conf)
        c = self.conf
        if c["aggregation"] not in ("tokens", "residual"):
            raise ValueError(
                f"aggregation must be 'tokens' or 'residual', got {c['aggregation']!r}"
            )
        if c["aggregation"] == "residual":
            self._init_residual(position_dim=2)  # (x, y) of the cell
            return
        k, s = int(c["tokenizer_kernel"]), int(c["tokenizer_stride"])
        self.tokenizer = nn.Conv2d(c["input_dim"], c["latent_dim"], k, stride=s, padding=k // 2)
        self.pos_embedding = PositionEmbedding2D(
            c["latent_dim"], tuple(c["pos_grid"]), c["pos_mode"]
        )
        self.layers = self._encoder()
        self.pool = GeM(c["gem_p"], learn_p=c["learn_gem_p"])

    def check_inputs(self, data: dict[str, torch.Tensor]) -> None:
        """Raise ValueError on malformed input (skipped while tracing/exporting)."""
        if "dense" not in data:
            raise ValueError("SuperGFDense input needs key 'dense' (B, D, h, w)")
        x = data["dense"]
        if x.ndim != 4:
            raise ValueError(f"dense must have shape (B, D, h, w), got {tuple(x.shape)}")
        if x.shape[1] != self.conf["input_dim"]:
            raise ValueError(
                f"dense descriptor dim {x.shape[1]} does not match the model's input_dim "
                f"{self.conf['input_dim']} (features from another extractor?)"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"dense map is empty: {tuple(x.shape)}")
        _check_finite("dense descriptors", x)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not _is_exporting():
            self.check_inputs(data)
        if self.residual:
            return self._forward_dense_residual(data["dense"])
        x = self.tokenizer(data["dense"])  # (B, E, h', w')
        tokens = x.flatten(2).transpose(1, 2) + self.pos_embedding(x)
        for layer in self.layers:
            tokens = layer(tokens)
        return {"global_descriptor": F.normalize(self.pool(tokens), dim=-1)}

    def _forward_dense_residual(self, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = dense.shape
        desc = F.normalize(dense.flatten(2).transpose(1, 2), dim=-1)  # (B, h*w, D)
        # cell centres normalized as keypoints are: relative to the centre, half the long side;
        # integer ranges cast to float (TensorRT's ONNX Range takes float limits only as constants)
        ys = torch.arange(h, device=dense.device).to(dense.dtype) + 0.5
        xs = torch.arange(w, device=dense.device).to(dense.dtype) + 0.5
        size = torch.stack([xs[-1] + 0.5, ys[-1] + 0.5])  # (w, h) as tensors (dynamic in ONNX)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
        position = (grid - size / 2) / (size.max() / 2)
        return self._forward_residual(desc, position.unsqueeze(0).expand(b, -1, -1), None)

    def example_inputs(self, batch: int = 1, height: int = 60, width: int = 80) -> tuple:
        return (torch.rand(batch, self.conf["input_dim"], height, width),)


def normalize_keypoints(keypoints: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """Pixel (x, y) -> roughly [-1, 1] relative to the image centre (scale: half the long side)."""
    size = image_size.to(keypoints.dtype)
    shift = size / 2
    scale = size.max(-1).values / 2
    return (keypoints - shift[:, None]) / scale[:, None, None]


class SuperGFSparse(ResidualSlotsBase):
    """Sparse SuperGF over a variable-size keypoint set; invariant to keypoint order.

    Input: {"keypoints": (B, N, 2) pixels (x, y), "descriptors": (B, N, D), "scores": (B, N),
            "image_size": (B, 2) (width, height), "mask": (B, N) bool, optional (True = valid)}.
    Output: {"global_descriptor": (B, latent_dim) unit L2 norm,
             "attention": (B, num_slots, N) slot attention (rows sum to 1 over valid keypoints)}.
    N = 0 (or all keypoints masked) gives a defined, input-independent descriptor.
    """

    name = "supergf-sparse"
    default_conf = {
        **BASE_CONF,
        "num_slots": 64,
        "slot_iterations": 1,
        "keypoint_encoder": [32, 64, 128, 256],
        # "slots": slot attention + GeM (the paper); "residual": NetVLAD-like residual slots,
        # concatenated output (dim num_slots * latent_dim), initialisable from a k-means codebook
        "aggregation": "slots",
        "residual_power": 1.0,  # residual mode: signed power normalization of the slot residuals
    }
    input_names = ["keypoints", "descriptors", "scores", "image_size", "mask"]
    output_names = ["global_descriptor", "attention"]
    dynamic_axes = {
        "keypoints": {0: "batch", 1: "num_keypoints"},
        "descriptors": {0: "batch", 1: "num_keypoints"},
        "scores": {0: "batch", 1: "num_keypoints"},
        "image_size": {0: "batch"},
        "mask": {0: "batch", 1: "num_keypoints"},
        "global_descriptor": {0: "batch"},
        "attention": {0: "batch", 2: "num_keypoints"},
    }

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__(conf)
        c = self.conf
        if c["aggregation"] not in ("slots", "residual"):
            raise ValueError(f"aggregation must be 'slots' or 'residual', got {c['aggregation']!r}")
        if int(c["num_slots"]) < 1:
            raise ValueError(f"num_slots must be >= 1, got {c['num_slots']}")
        if c["aggregation"] == "residual":
            self._init_residual(position_dim=3)  # (x, y, score)
            return
        self.descriptor_proj = nn.Linear(c["input_dim"], c["latent_dim"])
        self.keypoint_encoder = mlp([3, *c["keypoint_encoder"], c["latent_dim"]])
        nn.init.constant_(self.keypoint_encoder[-1].bias, 0.0)
        self.slot_attention = SlotAttention(c["latent_dim"], c["num_slots"], c["slot_iterations"])
        self.layers = self._encoder()
        self.pool = GeM(c["gem_p"], learn_p=c["learn_gem_p"])

    def check_inputs(self, data: dict[str, torch.Tensor]) -> None:
        """Raise ValueError on malformed input (skipped while tracing/exporting)."""
        missing = {"keypoints", "descriptors", "scores", "image_size"} - set(data)
        if missing:
            raise ValueError(f"SuperGFSparse input is missing key(s) {sorted(missing)}")
        kpts, desc, scores = data["keypoints"], data["descriptors"], data["scores"]
        if kpts.ndim != 3 or kpts.shape[-1] != 2:
            raise ValueError(f"keypoints must have shape (B, N, 2), got {tuple(kpts.shape)}")
        b, n = kpts.shape[:2]
        if desc.ndim != 3 or desc.shape[:2] != (b, n):
            raise ValueError(f"descriptors must have shape ({b}, {n}, D), got {tuple(desc.shape)}")
        if desc.shape[-1] != self.conf["input_dim"]:
            raise ValueError(
                f"descriptor dim {desc.shape[-1]} does not match the model's input_dim "
                f"{self.conf['input_dim']} (features from another extractor?)"
            )
        if scores.shape != (b, n):
            raise ValueError(f"scores must have shape ({b}, {n}), got {tuple(scores.shape)}")
        if data["image_size"].shape != (b, 2):
            raise ValueError(
                f"image_size must have shape ({b}, 2), got {tuple(data['image_size'].shape)}"
            )
        if bool((data["image_size"] <= 0).any()):
            raise ValueError("image_size (width, height) must be positive")
        mask = data.get("mask")
        if mask is not None and mask.shape != (b, n):
            raise ValueError(f"mask must have shape ({b}, {n}), got {tuple(mask.shape)}")
        _check_finite("keypoints", kpts)
        _check_finite("descriptors", desc)
        _check_finite("scores", scores)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not _is_exporting():
            self.check_inputs(data)
        kpts = normalize_keypoints(data["keypoints"], data["image_size"])
        position = torch.cat([kpts, data["scores"].unsqueeze(-1).to(kpts.dtype)], dim=-1)
        if self.residual:
            return self._forward_residual(data["descriptors"], position, data.get("mask"))
        x = self.descriptor_proj(data["descriptors"]) + self.keypoint_encoder(position)
        mask = data.get("mask")
        tokens, attention = self.slot_attention(x, None if mask is None else mask.bool())
        for layer in self.layers:
            tokens = layer(tokens)
        return {
            "global_descriptor": F.normalize(self.pool(tokens), dim=-1),
            "attention": attention,
        }

    def example_inputs(self, batch: int = 1, num_keypoints: int = 128) -> tuple:
        g = torch.Generator().manual_seed(0)
        size = torch.tensor([[640.0, 480.0]]).repeat(batch, 1)
        kpts = torch.rand(batch, num_keypoints, 2, generator=g) * size[:, None]
        desc = F.normalize(
            torch.randn(batch, num_keypoints, self.conf["input_dim"], generator=g), dim=-1
        )
        scores = torch.rand(batch, num_keypoints, generator=g)
        mask = torch.ones(batch, num_keypoints, dtype=torch.bool)
        return (kpts, desc, scores, size, mask)


MODELS: dict[str, type[SuperGFBase]] = {
    SuperGFDense.name: SuperGFDense,
    SuperGFSparse.name: SuperGFSparse,
}


class PositionalSuperGF(nn.Module):
    """Positional-argument view of a dict-in/dict-out SuperGF model (ONNX export, runners)."""

    def __init__(self, model: SuperGFBase) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.forward_positional(*inputs)
