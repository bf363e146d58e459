"""End-to-end localization latency: supergf_ros vs a two-network hloc-style baseline, one run.

Both pipelines localize the same query images against maps of the same keyframes, on the same
CPU, one after the other per query:

- **ours**: the `Localizer` with the project defaults: SuperPoint (1024 keypoints) on the backend
  "auto" resolves to, the map's global descriptor (SuperGF-sparse when its weights ship, else the
  training-free VLAD) over the same local features, FAISS top-k, mutual-NN matching against the
  keyframe keypoints that have a 3D point, PnP-RANSAC.
- **baseline** (as hloc's pipeline): NetVLAD (VGG16 + NetVLAD, random weights: cost only) on the
  query resized to 1024 px, SuperPoint with 4096 keypoints at 1024 px, mutual-NN matching against
  every keypoint of the k retrieved keyframes, PnP-RANSAC; PyTorch for both networks (as hloc).
  Its retrieval itself uses the map's training-free VLAD (random NetVLAD weights would retrieve at
  random); the NetVLAD forward pass replaces that descriptor's cost in the timings.

Maps are built on the fly from a dataset (even images as keyframes, odd ones as queries) or from a
synthetic scene the project generates. Per-stage medians, accuracy against the reference poses,
and the end-to-end speedup are reported.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("extract", "global", "retrieval", "matching", "pose", "total")

default_pipeline_conf: dict[str, Any] = {
    "top_k": 5,
    "num_queries": None,  # at most this many queries (None: all)
    "repeats": 1,  # timed runs per query (after one untimed warm-up query)
    "ours_max_keypoints": 1024,  # SuperPoint's default
    "ours_resize_max": None,  # images as they come (Strecha: 1024 px)
    "ours_global": None,  # None: the best available (build-map's default)
    "baseline_max_keypoints": 4096,
    "baseline_resize_max": 1024,
    "baseline_backend": "torch",
    "baseline_global": "vlad",
    "synthetic_size": (640, 480),
    "synthetic_num_map": 12,
    "synthetic_num_queries": 4,
}


def _median_stages(timings: list[dict[str, float]]) -> dict[str, float]:
    return {
        k: round(float(np.median([t.get(k, 0.0) for t in timings])), 2)
        for k in STAGES
        if timings and any(k in t for t in timings)
    }


def _accuracy(errors: dict[str, tuple[float, float] | None]) -> dict[str, Any]:
    from .metrics import pose_metrics

    m = pose_metrics(errors)
    return {
        "recall": m["recall"],
        "median_translation_m": m["median_translation_m"],
        "median_rotation_deg": m["median_rotation_deg"],
        "num_queries": m["num_queries"],
        "num_localized": m["num_localized"],
    }


def _prepare_data(dataset: Path | None, work: Path, conf: dict, progress: bool) -> dict:
    """{"root", "map_names", "query_names", "source"}: even/odd split or a synthetic scene."""
    from ..datasets import Dataset, read_image_list

    if dataset is None:
        from ..datasets.synthetic import SceneConfig, generate_scene

        w, h = conf["synthetic_size"]
        root = work / "synthetic_scene"
        generate_scene(
            root,
            SceneConfig(
                width=int(w),
                height=int(h),
                num_map=int(conf["synthetic_num_map"]),
                num_queries=int(conf["synthetic_num_queries"]),
            ),
            seed=0,
            progress=progress,
        )
        map_names = read_image_list(root / "mapping.txt")
        query_names = read_image_list(root / "queries.txt")
        source = f"synthetic {w}x{h}"
    else:
        root = Path(dataset)
        names = Dataset(root).names
        if len(names) < 3:
            raise ValueError(f"dataset {root} has {len(names)} images; need at least 3")
        map_names, query_names = names[::2], names[1::2]
        source = str(root.name)
    if conf["num_queries"] is not None:
        query_names = query_names[: max(1, int(conf["num_queries"]))]
    if not Dataset(root).has_model:
        raise ValueError(f"dataset {root} has no COLMAP model with poses (sparse_gt/)")
    return {"root": root, "map_names": map_names, "query_names": query_names, "source": source}


class _NetVLADStage:
    """NetVLAD on the query (RGB, resized to `resize_max`), timed as the baseline's global stage."""

    def __init__(self, resize_max: int | None, backend: str, work: Path) -> None:
        import torch

        from ..inference.backends import create_runner, select_backend
        from ..models.netvlad import NetVLAD, netvlad_spec

        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"baseline backend must be 'torch' or 'onnxruntime', got {backend!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            spec = netvlad_spec(NetVLAD().eval())
        self.resize_max = resize_max
        self.runner = create_runner(spec, select_backend(backend, "cpu"), onnx_cache_dir=work)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        if self.resize_max and max(h, w) > self.resize_max:
            s = self.resize_max / max(h, w)
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        return self.runner(x)[0][0]


def run_pipeline_benchmark(
    superpoint_weights: str | Path,
    work_dir: str | Path,
    *,
    dataset: str | Path | None = None,
    backends: tuple[str, ...] = ("torch", "onnxruntime"),
    conf: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure ours vs the baseline end to end (see the module docstring).

    `superpoint_weights`: real weights (accuracy is measured too); `work_dir` keeps the maps and
    the synthetic scene; `dataset`: images/ + sparse_gt/ (None: synthetic); `backends`: our full
    localization step is timed with each; `conf`: overrides of `default_pipeline_conf`.
    Returns {"ours_ms", "baseline_ms", "speedup", "speedup_excluding_netvlad", "ours_stages_ms",
    "baseline_stages_ms", "localization_ms", "localization_stages_ms", "accuracy", "ours",
    "baseline", "data", "load_average"}.
    """
    from tqdm import tqdm

    from ..datasets import Dataset
    from ..inference.backends import select_backend

    conf = _check_conf(conf)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t_setup = time.perf_counter()
    data = _prepare_data(Path(dataset) if dataset else None, work, conf, progress)
    ds = Dataset(data["root"])
    weights = str(superpoint_weights)
    maps = _build_maps(data, work, conf, weights, progress)
    setup_s = time.perf_counter() - t_setup

    queries = _load_queries(ds, data["query_names"])
    top_k = int(conf["top_k"])
    ours_backend = select_backend("auto", "auto").backend  # what our default resolves to
    loc_backends = list(dict.fromkeys([*backends, ours_backend]))
    bar = tqdm(
        total=len(queries) * (len(loc_backends) + 1),
        desc="pipeline",
        unit="query",
        disable=not progress,
    )
    timer = _LocalizerTimer(queries, ds, int(conf["repeats"]), bar)
    localization, ours = _time_ours(timer, maps["ours"], weights, top_k, loc_backends, ours_backend)
    base_runs, base_errors = _time_baseline(timer, maps["baseline"], weights, conf, work)
    bar.close()
    base = {"runs": base_runs, "errors": base_errors}
    result = _result(ours, base, localization, maps, conf)
    result["data"] = {
        "source": data["source"],
        "num_keyframes": len(data["map_names"]),
        "num_queries": len(queries),
        "repeats": int(conf["repeats"]),
        "setup_s": round(setup_s, 1),
    }
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    return result


def _time_ours(timer, map_path, weights, top_k, backends, ours_backend) -> tuple[dict, dict]:
    """({backend: median stages}, {"runs", "errors", "backend_info"} of `ours_backend`)."""
    from ..localization import Localizer

    localization, ours = {}, {}
    for backend in backends:  # one Localizer at a time
        loc_conf = {"superpoint_weights": weights, "top_k": top_k, "backend": backend}
        loc = Localizer.from_map(map_path, loc_conf)
        runs, errors = timer(loc)
        localization[backend] = _median_stages(runs)
        if backend == ours_backend:
            ours = {"runs": runs, "errors": errors, "backend_info": loc.backend_info}
        del loc
    return localization, ours


def _time_baseline(timer, map_path, weights, conf, work) -> tuple[list[dict], dict]:
    """The hloc-style baseline: NetVLAD + the baseline map's Localizer on the CPU."""
    from ..localization import Localizer

    netvlad = _NetVLADStage(int(conf["baseline_resize_max"]), conf["baseline_backend"], work)
    base_loc = Localizer.from_map(
        map_path,
        {
            "superpoint_weights": weights,
            "top_k": int(conf["top_k"]),
            "backend": conf["baseline_backend"],
            "device": "cpu",
            "match_3d_only": False,  # hloc matches every keypoint of the retrieved images
        },
    )
    return timer(base_loc, extra_global=netvlad)


def _check_conf(conf: dict[str, Any] | None) -> dict[str, Any]:
    conf = {**default_pipeline_conf, **(conf or {})}
    unknown = set(conf) - set(default_pipeline_conf)
    if unknown:
        raise ValueError(
            f"unknown pipeline option(s) {sorted(unknown)}; valid: {sorted(default_pipeline_conf)}"
        )
    if int(conf["repeats"]) < 1 or int(conf["top_k"]) < 1:
        raise ValueError("pipeline repeats and top_k must be >= 1")
    return conf


def _build_maps(data: dict, work: Path, conf: dict, weights: str, progress: bool) -> dict:
    """Ours with the project defaults, the baseline's with hloc's extraction settings:
    {"ours", "baseline"} map paths and {"ours_summary", "baseline_summary"}."""
    from ..mapping.build_map import build_map

    ours_extractor = {"weights": weights, "max_keypoints": int(conf["ours_max_keypoints"])}
    if conf["ours_resize_max"]:
        ours_extractor["resize_max"] = int(conf["ours_resize_max"])
    base_extractor = {
        "weights": weights,
        "max_keypoints": int(conf["baseline_max_keypoints"]),
        "resize_max": int(conf["baseline_resize_max"]),
    }
    maps = {}
    for key, extractor_conf, global_name in (
        ("ours", ours_extractor, conf["ours_global"]),
        ("baseline", base_extractor, conf["baseline_global"]),
    ):
        maps[key] = work / f"map_{key}.h5"
        maps[f"{key}_summary"] = build_map(
            data["root"],
            maps[key],
            image_names=data["map_names"],
            features="superpoint",
            extractor_conf=extractor_conf,
            global_name=global_name,
            # hloc keeps every keypoint's descriptor (the baseline matches them all)
            conf={"format_version": 2} if key == "baseline" else None,
            backend="auto",  # map building is not timed; the map does not depend on it
            progress=progress,
        )
    return maps


def _load_queries(ds: Any, names: list[str]) -> list[tuple[str, np.ndarray, Any]]:
    """(name, image, camera scaled to the image) per query."""
    queries = []
    for name in names:
        image, cam = ds.read_image(name), ds.camera(name)
        if (cam.width, cam.height) != image.shape[1::-1]:
            cam = cam.scaled(image.shape[1] / cam.width, image.shape[0] / cam.height)
        queries.append((name, image, cam))
    return queries


class _LocalizerTimer:
    """Per-run stage timings (after one warm-up query) and the pose errors of the last run."""

    def __init__(self, queries: list, ds: Any, repeats: int, bar: Any) -> None:
        self.queries, self.ds, self.repeats, self.bar = queries, ds, repeats, bar

    def __call__(self, loc: Any, extra_global: Any = None) -> tuple[list[dict], dict]:
        from ..geometry import pose_error

        loc.localize(self.queries[0][1], self.queries[0][2])  # warm-up: lazy inits, caches
        if extra_global is not None:
            extra_global(self.queries[0][1])
        runs, errors = [], {}
        for name, image, camera in self.queries:
            for _ in range(self.repeats):
                g_ms = None
                if extra_global is not None:
                    t = time.perf_counter()
                    extra_global(image)
                    g_ms = (time.perf_counter() - t) * 1e3
                r = loc.localize(image, camera)
                t_ms = dict(r.timings_ms)
                if g_ms is not None:  # NetVLAD replaces the map descriptor's cost
                    t_ms["total"] += g_ms - t_ms["global"]
                    t_ms["global"] = g_ms
                runs.append(t_ms)
            gt = self.ds.cam_from_world(name)
            errors[name] = pose_error(r.cam_from_world, gt) if r.success else None
            self.bar.update()
        return runs, errors


def _result(ours: dict, base: dict, localization: dict, maps: dict, conf: dict) -> dict:
    """The summary of both pipelines (without "data" and "load_average")."""
    ours_stages, base_stages = _median_stages(ours["runs"]), _median_stages(base["runs"])
    ours_ms, base_ms = ours_stages["total"], base_stages["total"]
    base_no_nv = float(np.median([t["total"] - t["global"] for t in base["runs"]]))
    ours_no_global = float(np.median([t["total"] - t["global"] for t in ours["runs"]]))
    top_k = int(conf["top_k"])
    return {
        "ours_ms": ours_ms,
        "baseline_ms": base_ms,
        "speedup": round(base_ms / max(ours_ms, 1e-9), 3),
        "speedup_excluding_netvlad": round(base_no_nv / max(ours_no_global, 1e-9), 3),
        "ours_stages_ms": ours_stages,
        "baseline_stages_ms": base_stages,
        "localization_ms": {b: s["total"] for b, s in localization.items()},
        "localization_stages_ms": localization,
        "accuracy": {"ours": _accuracy(ours["errors"]), "baseline": _accuracy(base["errors"])},
        "ours": {
            **ours["backend_info"],
            "features": f"superpoint ({conf['ours_max_keypoints']} kp, resize_max "
            f"{conf['ours_resize_max']})",
            "global": maps["ours_summary"]["global"],
            "top_k": top_k,
            "match_3d_only": True,
            "map_keypoints_per_keyframe": maps["ours_summary"]["mean_keypoints_per_keyframe"],
        },
        "baseline": {
            "backend": conf["baseline_backend"],
            "features": f"superpoint ({conf['baseline_max_keypoints']} kp, resize_max "
            f"{conf['baseline_resize_max']})",
            "global": "netvlad (VGG16 conv5_3, 64 clusters, random weights: cost only; "
            f"retrieval by the map's {maps['baseline_summary']['global']})",
            "top_k": top_k,
            "match_3d_only": False,
            "map_keypoints_per_keyframe": maps["baseline_summary"]["mean_keypoints_per_keyframe"],
        },
    }


def format_pipeline(p: dict[str, Any]) -> str:
    """Readable per-stage table of `run_pipeline_benchmark`'s result."""
    rows = [("stage (median ms)", "ours", "baseline")]
    for k in STAGES:
        rows.append(
            (
                k,
                f"{p['ours_stages_ms'].get(k, float('nan')):.1f}",
                f"{p['baseline_stages_ms'].get(k, float('nan')):.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    d = p["data"]
    lines.insert(
        0,
        f"end-to-end localization on {d['source']}: {d['num_queries']} queries x {d['repeats']}, "
        f"{d['num_keyframes']} keyframes, top-{p['ours']['top_k']}",
    )
    lines.append(
        f"ours: {p['ours']['features']} + {p['ours']['global']} on {p['ours']['backend']} "
        f"({p['ours']['device']}); baseline: {p['baseline']['features']} + NetVLAD on "
        f"{p['baseline']['backend']}"
    )
    lines.append(
        f"speedup (baseline / ours): {p['speedup']:.2f}x end to end, "
        f"{p['speedup_excluding_netvlad']:.2f}x without the global stages"
    )
    lines.append(
        "full localization step by backend (median ms): "
        + ", ".join(f"{b} {v:.1f}" for b, v in p["localization_ms"].items())
    )
    for who in ("ours", "baseline"):
        a = p["accuracy"][who]
        med = a["median_translation_m"]
        lines.append(
            f"accuracy {who}: {a['num_localized']}/{a['num_queries']} localized, recall "
            + ", ".join(f"{k} {v:.2f}" for k, v in a["recall"].items())
            + (
                f", median {med:.4f} m / {a['median_rotation_deg']:.3f} deg"
                if med is not None
                else ""
            )
        )
    la = p["load_average"]
    lines.append(
        f"load average (1/5/15 min) before {la['before'][0]:.2f}/{la['before'][1]:.2f}/"
        f"{la['before'][2]:.2f}, after {la['after'][0]:.2f}/{la['after'][1]:.2f}/"
        f"{la['after'][2]:.2f} on {os.cpu_count()} CPUs"
    )
    return "\n".join(lines)
