"""`supergf-ros benchmark --realtime`: the node at the camera's real rate, four ways side by side.

One bag is replayed at its recorded rate (1x, `ros/replay.py`) through a freshly started localizer
node per configuration: SuperPoint fp32 or int8, pipelined (`pipeline: true`, two stages) or
not, ONNX Runtime on the CPU. Each run reports the sustained localization rate (poses per second
of playback), the latency from image publish to pose p50/p95, the share of frames the node
dropped (newest wins), the pose recall at 0.25 m / 2 deg of the frames it processed and its peak
memory (RSS); the summary is the rate of pipelined int8 over non-pipelined fp32.

Default data: the demo's synthetic room (640x480) with `--realtime-queries` query frames played
at `--camera-rate` Hz by a simulated robot (odometry, so the node tracks with a prior), built once
in the work folder. `--bag` / `--map` replay your own (e.g. a `make-bag --times` bag of KITTI).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple


class Config(NamedTuple):
    """One node configuration: SuperPoint precision, `pipeline`, `inference_threads` (0: the
    default)."""

    precision: str
    pipelined: bool
    inference_threads: int = 0

    @property
    def name(self) -> str:
        mode = "pipelined" if self.pipelined else "serial"
        threads = f"_{self.inference_threads}threads" if self.inference_threads else ""
        return f"{self.precision}_{mode}{threads}"


CONFIGS: tuple[Config, ...] = tuple(Config(p, m) for p in ("fp32", "int8") for m in (False, True))
RECALL_KEY = "recall_0.25m_2deg"


def default_weights(weights: str | Path | None) -> Path:
    """`weights`, else $SUPERGF_SUPERPOINT_WEIGHTS, else the shared folder's; FileNotFoundError."""
    from .scale_benchmark import default_data_dir

    path = weights or os.environ.get("SUPERGF_SUPERPOINT_WEIGHTS")
    path = Path(path) if path else default_data_dir().parent / "weights" / "superpoint_v1.pth"
    if not path.is_file():
        raise FileNotFoundError(
            f"--realtime needs SuperPoint weights, not found at {path}: pass "
            "--superpoint-weights PATH/superpoint_v1.pth or set $SUPERGF_SUPERPOINT_WEIGHTS"
        )
    return path


def demo_bag(
    work_dir: Path,
    weights: Path,
    *,
    num_queries: int = 200,
    camera_rate_hz: float = 10.0,
    size: tuple[int, int] = (640, 480),
    num_map: int = 30,
    progress: bool = True,
) -> tuple[Path, Path]:
    """(bag, map) of the demo scene with these settings, built once under `work_dir`."""
    from ..datasets import read_image_list
    from ..datasets.synthetic import SceneConfig, generate_scene
    from ..mapping.build_map import build_map
    from ..ros.make_bag import make_bag

    if num_queries < 2 or not camera_rate_hz > 0:
        raise ValueError("--realtime-queries must be >= 2 and --camera-rate positive")
    w, h = size
    root = Path(work_dir) / f"demo_{w}x{h}_{num_map}map_{num_queries}q_{camera_rate_hz:g}hz"
    scene, map_path, bag = root / "scene", root / "map_superpoint.h5", root / "bag"
    done = root / "done"
    if done.is_file():
        return bag, map_path
    root.mkdir(parents=True, exist_ok=True)
    config = SceneConfig(width=w, height=h, num_map=num_map, num_queries=num_queries)
    generate_scene(scene, config, seed=0)
    names = read_image_list(scene / "mapping.txt")
    extractor_conf = {"weights": str(weights)}
    build_map(scene, map_path, image_names=names, extractor_conf=extractor_conf, progress=progress)
    queries = read_image_list(scene / "queries.txt")
    make_bag(scene, bag, image_names=queries, rate_hz=camera_rate_hz, overwrite=True,
             progress=progress)  # fmt: skip
    done.write_text("ok\n")
    return bag, map_path


def cache_networks(map_path: Path, weights: Path, precisions: set[str]) -> None:
    """Export (and quantize) the networks once here, so no node run spends its time or its
    peak memory on it: every node finds them in the cache (int8 is quantized from the fp32
    file, so setting it up caches both)."""
    from ..localization.localizer import Localizer

    conf = {"superpoint_weights": str(weights), "backend": "onnxruntime", "device": "cpu"}
    conf["superpoint_precision"] = "int8" if "int8" in precisions else "fp32"
    Localizer.from_map(map_path, conf)


def run_realtime_benchmark(
    bag: Path,
    map_path: Path,
    weights: Path,
    out_dir: Path,
    *,
    configs: tuple[Config, ...] = CONFIGS,
    rounds: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay `bag` at 1x through one node per configuration of `configs`, `rounds` times in
    turn (a load that changes meanwhile hits every configuration alike).

    Returns {"bag", "map", "setup", "realtime": [run, ...], "median": [per configuration],
    "ratio_rate_int8_pipelined_over_fp32_serial"} (of the median rates); each run has
    precision, pipelined, inference_threads, round, rate_hz, latency_ms_p50, latency_ms_p95,
    dropped_fraction, recall_0.25m_2deg, node_peak_rss_mb and the frame counts.
    """
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    t0 = time.perf_counter()
    cache_networks(map_path, weights, {c.precision for c in configs})
    log(f"realtime: networks cached in {time.perf_counter() - t0:.1f} s")
    runs = []
    for round_index in range(rounds):
        for config in configs:
            log(f"realtime: {config.name} (round {round_index + 1}/{rounds}) ...")
            folder = out_dir / (config.name if rounds == 1 else f"{config.name}_{round_index + 1}")
            replay = _replay(bag, map_path, weights, config, folder, progress)
            runs.append({**run_row(replay, config), "round": round_index + 1})
            log(format_row(runs[-1]))
    return {
        "bag": str(bag),
        "map": str(map_path),
        "setup": {"cpu_count": os.cpu_count(), "rounds": rounds},
        "realtime": runs,
        "median": medians(runs),
        "ratio_rate_int8_pipelined_over_fp32_serial": rate_ratio(runs),
    }


def _replay(bag: Path, map_path: Path, weights: Path, config: Config, folder: Path,
            progress: bool) -> dict:  # fmt: skip
    """One node run: `replay_bag` at 1x with the configuration's node parameters."""
    from ..ros.replay import replay_bag

    params = {
        "superpoint_weights": str(Path(weights).resolve()),
        "backend": "onnxruntime",
        "device": "cpu",
        "superpoint_precision": config.precision,
        "pipeline": config.pipelined,
        "inference_threads": config.inference_threads,
    }
    return replay_bag(bag, map_path, rate=1.0, node_params=params, output_dir=folder,
                      progress=progress)  # fmt: skip


def run_row(replay: dict[str, Any], config: Config) -> dict:
    """One run's figures from `replay_bag`'s result."""
    duration = float(replay["duration_s"])
    processed = int(replay["frames_processed"])
    errors = replay.get("errors")
    recall = None
    if errors is not None and processed:  # of the frames processed: drops are counted apart
        good = sum(1 for e in errors.values() if e is not None and e[0] <= 0.25 and e[1] <= 2.0)
        recall = good / processed
    return {
        "precision": config.precision,
        "pipelined": bool(config.pipelined),
        "inference_threads": int(config.inference_threads),
        "rate_hz": replay["frames_localized"] / duration if duration > 0 else 0.0,
        "processed_hz": replay["throughput_hz"],
        "latency_ms_p50": replay["latency_ms_p50"],
        "latency_ms_p95": replay["latency_ms_p95"],
        "dropped_fraction": replay["frames_dropped"] / max(int(replay["frames_in"]), 1),
        RECALL_KEY: recall,
        "recall_0.25m_2deg_of_all_frames": (replay.get("recall") or {}).get("0.25m_2deg"),
        "node_peak_rss_mb": replay["node_peak_rss_mb"],
        "node_torch_loaded": replay.get("node_torch_loaded"),
        "frames_in": replay["frames_in"],
        "frames_processed": processed,
        "frames_localized": replay["frames_localized"],
        "frames_dropped": replay["frames_dropped"],
        "duration_s": duration,
        "stage_ms_mean": replay["stage_ms_mean"],
        "replay_json": replay["json"],
    }


def medians(runs: list[dict]) -> list[dict]:
    """Per configuration, in run order: the median of each figure over its rounds."""
    import statistics

    keys = ("rate_hz", "latency_ms_p50", "latency_ms_p95", "dropped_fraction", RECALL_KEY,
            "node_peak_rss_mb")  # fmt: skip
    configs = list(dict.fromkeys(_config(r) for r in runs))
    out = []
    for config in configs:
        mine = [r for r in runs if _config(r) == config]
        row = {**config._asdict(), "runs": len(mine)}
        for key in keys:
            values = [r[key] for r in mine if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        out.append(row)
    return out


def _config(run: dict) -> Config:
    return Config(run["precision"], run["pipelined"], run["inference_threads"])


def rate_ratio(runs: list[dict]) -> float | None:
    """Median rate of pipelined int8 over that of serial fp32, both with the first thread
    setting of the runs (None unless both ran)."""
    threads = runs[0]["inference_threads"] if runs else 0
    rate = {_config(m): m["rate_hz"] for m in medians(runs)}
    base, best = rate.get(Config("fp32", False, threads)), rate.get(Config("int8", True, threads))
    return best / base if base and best is not None else None


def format_row(r: dict) -> str:
    """One run as a line of the table."""

    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    threads = str(r["inference_threads"] or "default")
    return (
        f"{r['precision']:>5} {'pipelined' if r['pipelined'] else 'serial':>9} {threads:>7} "
        f"{r['rate_hz']:7.2f} {fmt(r['latency_ms_p50'], '8.0f')} "
        f"{fmt(r['latency_ms_p95'], '8.0f')} "
        f"{r['dropped_fraction']:8.1%} {fmt(r[RECALL_KEY], '7.3f')} "
        f"{fmt(r['node_peak_rss_mb'], '8.0f')}"
    )


def format_table(result: dict) -> str:
    """The readable table of `run_realtime_benchmark`'s result and the rate ratio."""
    lines = [
        f"realtime replay of {result['bag']} (1x) against {result['map']}",
        "  prec      mode threads rate_Hz  p50_ms   p95_ms  dropped  recall   RSS_MB",
        *(format_row(r) for r in result["realtime"]),
    ]
    if result["setup"].get("rounds", 1) > 1:
        lines += ["median over the rounds:", *(format_row(m) for m in result["median"])]
    ratio = result["ratio_rate_int8_pipelined_over_fp32_serial"]
    if ratio is not None:
        lines.append(f"rate: pipelined int8 / serial fp32 = {ratio:.2f}x")
    return "\n".join(lines)


def plot_runs(result: dict, path: Path) -> Path:
    """Bars of rate and latency p50/p95 per configuration (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["median"]  # one bar per configuration: the median over the rounds
    labels = [_config(r).name.replace("_", "\n") for r in runs]
    fig, (ax_rate, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    ax_rate.bar(labels, [r["rate_hz"] for r in runs], color="tab:blue")
    ax_rate.set_ylabel("localizations per second")
    x = range(len(runs))
    ax_lat.bar([i - 0.2 for i in x], [r["latency_ms_p50"] or 0 for r in runs], 0.4, label="p50")
    ax_lat.bar([i + 0.2 for i in x], [r["latency_ms_p95"] or 0 for r in runs], 0.4, label="p95")
    ax_lat.set_xticks(list(x), labels)
    ax_lat.set_ylabel("latency, image -> pose (ms)")
    ax_lat.legend()
    fig.suptitle("localizer node at the camera's rate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
