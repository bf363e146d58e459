"""The offline SuperGF trainer: soft-label AP loss, overlap labels, data sources, training loop.

Entry points: `train` (the loop), `load_source` / `load_project_dataset` / `load_built_map` /
`load_msls` / `load_image_sequence` (data), `FeatureCache` (frozen local features on disk), `APLoss`,
`decorrelation_loss`, the overlap functions in `labels`, and the `supergf-ros train` command.
Heavy dependencies (torch) load on first use of the loop or the loss.
"""

from __future__ import annotations

__all__ = [
    "APLoss",
    "CandidateSampler",
    "FeatureCache",
    "ImageSet",
    "decorrelation_loss",
    "default_conf",
    "estimate_scene_depths",
    "exact_average_precision",
    "load_built_map",
    "load_image_sequence",
    "load_msls",
    "load_project_dataset",
    "load_source",
    "msls_overlap",
    "overlap_from_depth",
    "overlap_from_points",
    "overlap_from_sequence",
    "recall_at_n",
    "train",
]

_WHERE = {
    "APLoss": "losses",
    "decorrelation_loss": "losses",
    "exact_average_precision": "losses",
    "CandidateSampler": "data",
    "ImageSet": "data",
    "load_built_map": "data",
    "load_image_sequence": "data",
    "load_msls": "data",
    "load_project_dataset": "data",
    "load_source": "data",
    "FeatureCache": "cache",
    "estimate_scene_depths": "labels",
    "msls_overlap": "labels",
    "overlap_from_depth": "labels",
    "overlap_from_points": "labels",
    "overlap_from_sequence": "labels",
    "default_conf": "trainer",
    "recall_at_n": "trainer",
    "train": "trainer",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
