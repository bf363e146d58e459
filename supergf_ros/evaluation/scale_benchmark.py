"""`supergf-ros benchmark --map-scale 100,1000,10000,50000 [--json]`: cost of localization vs
the number of keyframes.

A real map (fountain-P11, even images, SuperPoint + VLAD) is replicated on a grid through the map
API (`map_store.MapWriter`): copy c of every keyframe and its 3D points is shifted by c grid cells
(50 m apart). A copy is another place that looks alike from afar: its global descriptor is the
original's perturbed inside a fixed random 128-D subspace (so the map's descriptors keep the
low-rank structure of real ones; isotropic 16,384-D noise would be discarded by any learned
projection), close enough that copies of the best keyframe outrank the second true one. Its
local features are another place's: each copy's 3D points carry real SuperPoint descriptors of
another scene (Herz-Jesus-P8, drawn at random per copy), so matching a copy costs what matching a
real keyframe costs and yields what a wrong place yields (mutual nearest neighbours without a
consistent pose). Identical descriptors would make every copy a perfect double of the true
keyframe, 50 m away, which no localizer can tell apart. Queries are the odd images, localized in
copy 0's frame: a fix on a copy is 50 m away, so `correct_fraction` counts retrieval and
verification mistakes. Each map is opened and queried in a fresh process (clean RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import atomic_output

SCENE = "fountain-P11"
DISTRACTOR_SCENE = "Herz-Jesus-P8"  # local descriptors of the copies
GRID_SPACING_M = 50.0
PERTURB_DIM, PERTURB_SCALE = 128, 1.0
KEYS = ("keyframes", "file_mb", "bytes_per_keyframe", "open_s", "rss_mb_before_open",
        "rss_mb_after_open", "rss_mb_after_queries", "retrieval_ms", "matching_ms", "total_ms",
        "correct_fraction")  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def default_data_dir() -> Path:
    """$SUPERGF_SHARED_DIR/data, else ../shared/data beside the repository."""
    shared = os.environ.get("SUPERGF_SHARED_DIR")
    root = Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared"
    return root / "data"


def base_map(data_dir: Path, weights: Path, out: Path):
    """(MapData of the real map, (features, cameras, gt poses) of the queries, (M, D)
    descriptors of the distractor scene's images)."""
    from ..datasets import Dataset
    from ..localization import Localizer
    from ..mapping import read_map
    from ..mapping.build_map import build_map

    ds = Dataset(data_dir / "strecha" / SCENE)
    build_map(ds.root, out, image_names=ds.names[::2], features="superpoint",
              extractor_conf={"weights": str(weights), "resize_max": 640, "max_keypoints": 1024},
              global_name="vlad", progress=False)  # fmt: skip
    loc = Localizer.from_map(out, {"superpoint_weights": weights, "backend": "onnxruntime"})
    queries = [(loc.extractor.extract(ds.read_image(n)), ds.camera(n), ds.cam_from_world(n))
               for n in ds.names[1::2]]  # fmt: skip
    other = Dataset(data_dir / "strecha" / DISTRACTOR_SCENE)
    pool = np.concatenate([loc.extractor.extract(other.read_image(n)).descriptors
                           for n in other.names])  # fmt: skip
    return read_map(out), queries, np.asarray(pool, np.float32)


def synthesize(base, n: int, path: Path, pool: np.ndarray, seed: int = 0,
               progress: bool = False) -> int:  # fmt: skip
    """Write a map of `n` keyframes replicated from `base`, the copies' point descriptors drawn
    from `pool` (see the module doc); its size in bytes."""
    from tqdm import tqdm

    from ..mapping.map_store import MapWriter

    rng = np.random.default_rng(seed)
    g = base.global_descriptors.shape[1]
    basis, _ = np.linalg.qr(rng.standard_normal((g, min(g, PERTURB_DIM))).astype(np.float32))
    writer = MapWriter(path, extractor=base.extractor, aggregator=base.aggregator,
                       descriptor_dim=base.descriptors.shape[1],
                       aggregator_state=base.aggregator_state, build_conf=base.build_conf,
                       summary={"synthetic": f"{SCENE} x {n}"})  # fmt: skip
    k0, p0 = base.num_keyframes, len(base.points3D)
    if len(pool) < p0:
        raise ValueError(f"{len(pool)} distractor descriptors cannot give {p0} points each")
    side = int(np.ceil(np.sqrt(np.ceil(n / k0))))
    bar = tqdm(total=n, desc=f"writing a {n}-keyframe map", unit="kf", disable=not progress)
    copy, written = 0, 0
    while written < n:
        shift = GRID_SPACING_M * np.array([copy % side, 0.0, copy // side])
        count = min(k0, n - written)
        _write_copy(writer, base, copy, count, shift, _copy_globals(base, copy, basis, rng))
        reps = _point_descriptors(base) if copy == 0 else pool[rng.choice(len(pool), p0, False)]
        writer.add_points(base.points3D + shift, reps, base.track_lengths, base.point_errors)
        copy, written = copy + 1, written + count
        bar.update(count)
    bar.close()
    return writer.close()


def _copy_globals(base, copy: int, basis: np.ndarray, rng) -> np.ndarray:
    """(k0, G) global descriptors of copy `copy`: the originals, perturbed unless copy 0."""
    glob = base.global_descriptors
    if copy == 0:
        return glob
    dim = basis.shape[1]
    noise = rng.standard_normal((len(glob), dim)).astype(np.float32) @ basis.T
    glob = glob + PERTURB_SCALE * noise / np.sqrt(dim)
    return glob / np.linalg.norm(glob, axis=1, keepdims=True)


def _write_copy(writer, base, copy: int, count: int, shift: np.ndarray, glob) -> None:
    """The first `count` keyframes of copy `copy`: poses moved by `shift`, point ids offset."""
    from ..geometry import Pose

    off, p0 = base.keypoint_offsets, len(base.points3D)
    for j in range(count):
        pose = base.cam_from_world[j]
        moved = Pose(pose.qvec, pose.tvec - pose.R @ shift)
        sl = slice(int(off[j]), int(off[j + 1]))
        writer.add_keyframe(f"c{copy:05d}/{base.keyframe_names[j]}", base.cameras[j], moved,
                            base.keypoints[sl], base.point3D_ids[sl] + copy * p0,
                            base.scores[sl], glob[j])  # fmt: skip


def _point_descriptors(base) -> np.ndarray:
    """(P, D) one descriptor per point of a format-3 map in memory (all observations share it)."""
    out = np.zeros((len(base.points3D), base.descriptors.shape[1]), np.float32)
    out[base.point3D_ids] = base.descriptors
    return out


def save_queries(path: Path, queries: list) -> None:
    """The (features, camera, cam_from_world) queries as arrays in an NPZ file (no pickles)."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, (f, cam, gt) in enumerate(queries):
        arrays.update({f"kp{i}": f.keypoints, f"sc{i}": f.scores, f"de{i}": f.descriptors})
        if f.dense is not None:
            arrays[f"dn{i}"] = f.dense
        extra = {k: v for k, v in f.extra.items() if isinstance(v, str | int | float | tuple)}
        meta.append({"image_size": list(f.image_size), "extra": extra, "camera": [cam.model,
                     cam.width, cam.height, list(cam.params)], "qvec": list(map(float, gt.qvec)),
                     "tvec": list(map(float, gt.tvec))})  # fmt: skip
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def load_queries(path: Path) -> list:
    """The queries `save_queries` wrote."""
    from ..features.base import LocalFeatures
    from ..geometry import Camera, Pose

    with np.load(path, allow_pickle=False) as z:
        out = []
        for i, m in enumerate(json.loads(str(z["meta"]))):
            dense = z[f"dn{i}"] if f"dn{i}" in z.files else None
            feats = LocalFeatures(z[f"kp{i}"], z[f"sc{i}"], z[f"de{i}"], dense,
                                  tuple(m["image_size"]), m["extra"])  # fmt: skip
            model, w, h, params = m["camera"]
            gt = Pose(np.array(m["qvec"]), np.array(m["tvec"]))
            out.append((feats, Camera(model, w, h, tuple(params)), gt))
    return out


def measure(map_path: Path, queries_path: Path, num_queries: int, cache_size: int) -> dict:
    """In this process: open `map_path`, localize `num_queries` queries; the measurements."""
    from ..geometry import pose_error
    from ..localization import Localizer

    queries = load_queries(queries_path)
    weights = os.environ.get("SUPERGF_SUPERPOINT_WEIGHTS")
    rss0 = _rss_mb()
    t = time.perf_counter()
    loc = Localizer.from_map(map_path, {"superpoint_weights": weights, "backend": "onnxruntime",
                                        "keyframe_cache_size": cache_size})  # fmt: skip
    open_s = time.perf_counter() - t
    rss1 = _rss_mb()
    rows, ok, true_kf = [], [], []
    for q in range(num_queries):
        features, camera, gt = queries[q % len(queries)]
        r = loc.localize_features(features, camera)
        rows.append(r.timings_ms)
        err = pose_error(r.cam_from_world, gt) if r.success else (np.inf, np.inf)
        ok.append(bool(err[0] <= 0.25 and err[1] <= 2.0))
        true_kf.append(sum(name.startswith("c00000/") for name in r.retrieved))
    med = {k: float(np.median([r[k] for r in rows])) for k in ("retrieval", "matching", "total")}
    return {"open_s": open_s, "rss_mb_before_open": rss0, "rss_mb_after_open": rss1,
            "rss_mb_after_queries": _rss_mb(), "retrieval_ms": med["retrieval"],
            "matching_ms": med["matching"], "total_ms": med["total"],
            "correct_fraction": float(np.mean(ok)), "index": loc.index.kind,
            "correct": ok, "true_keyframes_retrieved": true_kf,
            "cache_misses": loc.map.cache_misses, "cache_hits": loc.map.cache_hits}  # fmt: skip


def run_scale_benchmark(scales: list[int], data_dir: Path, weights: Path, num_queries: int = 20,
                        cache_size: int = 128, plot: Path | None = None,
                        log=print) -> dict[str, Any]:  # fmt: skip
    """Synthesize a map per N in `scales` (in a temporary folder, removed after), then measure
    each twice, in order and in reverse (a change of the machine's load over the run falls on
    every N alike); per N the two measurements merged (`merge_passes`) and the acceptance
    figures of the largest map against the smallest (`acceptance`)."""
    out: dict[str, Any] = {"scene": SCENE, "distractor_scene": DISTRACTOR_SCENE,
                           "num_queries": num_queries, "map_scale": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="supergf-scale-") as tmp:
        tmp = Path(tmp)
        base, queries, pool = base_map(data_dir, weights, tmp / "base.h5")
        qpath = tmp / "queries.npz"
        save_queries(qpath, queries)
        rows = {}
        for n in scales:
            t = time.perf_counter()
            size = synthesize(base, n, tmp / f"map_{n}.h5", pool, progress=True)
            rows[n] = {"keyframes": n, "file_mb": size / 1e6, "bytes_per_keyframe": size / n,
                       "write_s": time.perf_counter() - t, "passes": []}  # fmt: skip
        for n in [*scales, *scales[::-1]]:
            rows[n]["passes"].append(_measure_in_subprocess(tmp / f"map_{n}.h5", qpath,
                                                            num_queries, cache_size, weights))  # fmt: skip
            if len(rows[n]["passes"]) == 2:
                (tmp / f"map_{n}.h5").unlink()
        for n in scales:
            out["map_scale"].append({**rows[n], **merge_passes(rows[n]["passes"])})
            log(format_row(out["map_scale"][-1]))
    out["acceptance"] = acceptance(out["map_scale"])
    log(format_acceptance(out["acceptance"]))
    if plot is not None:
        plot_costs(out, plot)
        out["plot"] = str(plot)
    return out


def merge_passes(passes: list[dict]) -> dict:
    """One row of measurements: the worst open time and RSS, the mean of the per-query
    medians, the correctness of every query of every pass."""
    row = {key: max(p[key] for p in passes) for key in WORST_KEYS}
    row.update({key: float(np.mean([p[key] for p in passes])) for key in MEAN_KEYS})
    for key in ("correct", "true_keyframes_retrieved"):
        row[key] = [x for p in passes for x in p[key]]
    row["correct_fraction"] = float(np.mean(row["correct"]))
    row["index"] = passes[0]["index"]
    return row


WORST_KEYS = ("open_s", "rss_mb_before_open", "rss_mb_after_open", "rss_mb_after_queries")
MEAN_KEYS = ("retrieval_ms", "matching_ms", "total_ms", "cache_hits", "cache_misses")


def acceptance(rows: list[dict]) -> dict:
    """The largest map against the smallest: retrieval + matching cost ratio, RSS beyond the
    models (the smallest map opened is the models and next to no map), queries localized at
    the smallest but not at the largest (indices into `correct`), open time, kB per keyframe."""
    small, large = rows[0], rows[-1]
    cost = [r["retrieval_ms"] + r["matching_ms"] for r in (small, large)]
    lost = [i for i, (a, b) in enumerate(zip(small["correct"], large["correct"])) if a and not b]
    return {"keyframes": [small["keyframes"], large["keyframes"]],
            "retrieval_matching_ms": cost, "retrieval_matching_ratio": cost[1] / cost[0],
            "rss_mb_beyond_models": large["rss_mb_after_queries"] - small["rss_mb_after_open"],
            "open_s": large["open_s"], "kb_per_keyframe": large["bytes_per_keyframe"] / 1e3,
            "queries_lost": lost}  # fmt: skip


def format_acceptance(acc: dict) -> str:
    small, large = acc["keyframes"]
    return (
        f"{large} vs {small} keyframes: retrieval + matching x"
        f"{acc['retrieval_matching_ratio']:.2f}, RSS {acc['rss_mb_beyond_models']:.0f} MB "
        f"beyond the models, open {acc['open_s']:.2f} s, {acc['kb_per_keyframe']:.1f} kB "
        f"per keyframe, {len(acc['queries_lost'])} queries lost"
    )


def _measure_in_subprocess(path, qpath, num_queries, cache_size, weights) -> dict:
    code = ("import json, sys; from pathlib import Path; "
            "from supergf_ros.evaluation.scale_benchmark import measure; "
            f"print(json.dumps(measure(Path({str(path)!r}), Path({str(qpath)!r}), "
            f"{num_queries}, {cache_size})))")  # fmt: skip
    env = {**os.environ, "SUPERGF_SUPERPOINT_WEIGHTS": str(weights)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {path} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_row(row: dict) -> str:
    return (f"{row['keyframes']:>7} keyframes: {row['file_mb']:9.1f} MB "
            f"({row['bytes_per_keyframe'] / 1e3:6.1f} kB/kf), open {row['open_s']:5.2f} s, RSS "
            f"{row['rss_mb_before_open']:6.0f} -> {row['rss_mb_after_open']:6.0f} -> "
            f"{row['rss_mb_after_queries']:6.0f} MB, retrieval {row['retrieval_ms']:6.2f} ms, "
            f"matching {row['matching_ms']:6.2f} ms, total {row['total_ms']:7.2f} ms, correct "
            f"{row['correct_fraction']:.2f} ({row['index']})")  # fmt: skip


def format_table(result: dict) -> str:
    return "\n".join(format_row(r) for r in result["map_scale"])


def plot_costs(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["map_scale"]
    n = [r["keyframes"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("retrieval_ms", "matching_ms", "total_ms"):
        a.plot(n, [r[key] for r in rows], "o-", label=key)
    a.set(xscale="log", xlabel="keyframes", ylabel="ms per query (median)")
    a.legend()
    for key in ("rss_mb_after_open", "rss_mb_after_queries"):
        b.plot(n, [r[key] for r in rows], "o-", label=key)
    b.plot(n, [r["file_mb"] for r in rows], "s--", label="file_mb")
    b.set(xscale="log", yscale="log", xlabel="keyframes", ylabel="MB")
    b.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def parse_scales(text: str) -> list[int]:
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--map-scale must be comma-separated integers, got {text!r}") from None
    if not scales or min(scales) < 1:
        raise ValueError(f"--map-scale needs keyframe counts >= 1, got {text!r}")
    return scales
