"""`supergf-ros demo`: the whole product offline, on a scene the project generates itself.

synthetic textured room -> map of the mapping trajectory -> rosbag of the query trajectory ->
replay through the real ROS 2 localizer node -> accuracy, latency and a trajectory plot.
Uses SuperPoint when its weights file is found (--superpoint-weights or
$SUPERGF_SUPERPOINT_WEIGHTS), otherwise says so and uses SIFT. Needs no download and no data.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def find_superpoint_weights(path: str | Path | None) -> Path | None:
    """The SuperPoint weights to use: `path`, else $SUPERGF_SUPERPOINT_WEIGHTS, else None."""
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SuperPoint weights not found at {path}; pass the path of superpoint_v1.pth "
                "or leave the option out to run with SIFT"
            )
        return path
    env = os.environ.get("SUPERGF_SUPERPOINT_WEIGHTS")
    if env and Path(env).is_file():
        return Path(env)
    return None


def choose_features(features: str, superpoint_weights, backend: str) -> tuple[str, Path | None]:
    """(local features to use, SuperPoint weights or None); says which and why."""
    weights = find_superpoint_weights(superpoint_weights) if features != "sift" else None
    if features == "superpoint" and weights is None:
        raise FileNotFoundError(
            "--features superpoint needs SuperPoint weights: pass --superpoint-weights "
            "PATH/superpoint_v1.pth or set $SUPERGF_SUPERPOINT_WEIGHTS"
        )
    if weights is None:
        print(
            "SuperPoint weights not found (no --superpoint-weights, $SUPERGF_SUPERPOINT_WEIGHTS "
            "unset or missing): using SIFT local features instead."
            if features == "auto"
            else "using SIFT local features (--features sift)."
        )
        return "sift", None
    from supergf_ros.inference.backends import select_backend

    choice = select_backend(backend)
    print(f"using SuperPoint local features with weights {weights}")
    print(f"inference backend: {choice.backend} on {choice.device} ({choice.reason})")
    return "superpoint", weights


def _build_demo_map(scene: Path, map_path: Path, features: str, weights, backend, progress):
    from supergf_ros.datasets import read_image_list
    from supergf_ros.mapping.build_map import build_map

    print(f"[2/4] building the map {map_path}")
    extractor_conf = {"weights": str(weights)} if weights is not None else None
    summary = build_map(
        scene,
        map_path,
        image_names=read_image_list(scene / "mapping.txt"),
        features=features,
        extractor_conf=extractor_conf,
        backend=backend,
        progress=progress,
    )
    print(
        f"      {summary['num_keyframes']} keyframes, {summary['num_points3D']} 3D points, "
        f"global descriptor {summary.get('global', '?')}"
    )


def run_demo(
    output_dir: str | Path = "demo_output",
    *,
    superpoint_weights: str | Path | None = None,
    features: str = "auto",
    num_map: int = 30,
    num_queries: int = 10,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    backend: str = "auto",
    progress: bool = True,
) -> dict:
    """Run the demo; return the replay result (see `replay_bag`) plus "features" and timings.

    `backend` runs SuperPoint/SuperGF in the map builder and the node ("auto": the fastest
    available here, e.g. ONNX Runtime on a CPU)."""
    from supergf_ros.datasets import read_image_list
    from supergf_ros.datasets.synthetic import SceneConfig, generate_scene
    from supergf_ros.ros.make_bag import make_bag
    from supergf_ros.ros.replay import replay_bag

    if features not in ("auto", "superpoint", "sift"):
        raise ValueError(f"features must be auto, superpoint or sift, got '{features}'")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen, weights = choose_features(features, superpoint_weights, backend)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    scene = out / "scene"
    config = SceneConfig(width=width, height=height, num_map=num_map, num_queries=num_queries)
    print(f"[1/4] generating a synthetic scene ({num_map} map + {num_queries} query frames)")
    generate_scene(scene, config, seed=seed)
    timings["scene_s"] = time.perf_counter() - t

    t = time.perf_counter()
    map_path = out / f"map_{chosen}.h5"
    _build_demo_map(scene, map_path, chosen, weights, backend, progress)
    timings["map_s"] = time.perf_counter() - t

    t = time.perf_counter()
    bag = out / "queries_bag"
    print(f"[3/4] writing a rosbag2 (MCAP) of the query frames to {bag}")
    queries = read_image_list(scene / "queries.txt")
    make_bag(scene, bag, image_names=queries, rate_hz=2.0, overwrite=True, progress=progress)
    timings["bag_s"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[4/4] replaying the bag through the ROS 2 localizer node (separate process)")
    node_params = {"superpoint_weights": str(Path(weights).resolve())} if weights else {}
    node_params["backend"] = backend
    result = replay_bag(
        bag,
        map_path,
        as_fast_as_possible=True,
        node_params=node_params,
        output_dir=out / "replay",
        progress=progress,
    )
    timings["replay_s"] = time.perf_counter() - t
    result["features"] = chosen
    result["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return result


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="offline demo: synthetic scene -> map -> bag -> replay through the ROS 2 node",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--output", type=Path, default=Path("demo_output"), help="output folder")
    p.add_argument("--superpoint-weights", type=Path, help="superpoint_v1.pth (else SIFT)")
    p.add_argument("--features", default="auto", choices=["auto", "superpoint", "sift"])
    p.add_argument("--num-map", type=int, default=30, help="map frames (default 30)")
    p.add_argument("--num-queries", type=int, default=10, help="query frames (default 10)")
    p.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    p.add_argument("--seed", type=int, default=0)
    from .mapping.build_map import add_backend_arguments

    add_backend_arguments(p, device=False)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from supergf_ros.ros.replay import format_report

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as err:
        raise ValueError(f"--size must look like 640x480, got '{args.size}'") from err
    t0 = time.perf_counter()
    result = run_demo(
        args.output,
        superpoint_weights=args.superpoint_weights,
        features=args.features,
        num_map=args.num_map,
        num_queries=args.num_queries,
        width=width,
        height=height,
        seed=args.seed,
        backend=args.backend,
    )
    print()
    print(f"demo ({result['features']} features) finished in {time.perf_counter() - t0:.0f} s")
    print(format_report(result))
    return 0
