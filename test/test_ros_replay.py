"""make-bag + replay through the real node (separate process, isolated domain); the launch file.

Acceptance: Herz-Jesus-P25 odd images replayed against a SuperPoint map of its even images
localize >= 90% of frames within (0.25 m, 2 deg).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "supergf_ros.cli"]


def test_make_bag_writes_mcap_with_source_and_reference_poses(cache_dir, tmp_path):
    from ros_testing import synthetic_sift_map
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from supergf_ros.ros.make_bag import make_bag, read_source
    from supergf_ros.ros.robot_bag import RobotOptions

    scene = synthetic_sift_map(cache_dir)
    names = scene["queries"][:3]
    summary = make_bag(
        scene["scene"],
        tmp_path / "b",
        image_names=names,
        rate_hz=4.0,
        encoding="bgr8",
        robot=RobotOptions(odometry=False),
        progress=False,
    )
    assert summary["num_frames"] == 3 and summary["has_poses"]
    assert not summary["has_odometry"]
    assert summary["duration_s"] == pytest.approx(0.5)
    ts = get_typestore(Stores.ROS2_KILTED)
    with Reader(tmp_path / "b") as reader:
        assert reader.message_count == 7  # image + info per frame, one /tf_static
        assert reader.connections[0].msgtype == "sensor_msgs/msg/Image"
        conn = reader.connections[0]
        stamps = []
        for c, t, raw in reader.messages(connections=[conn]):
            msg = ts.deserialize_cdr(raw, c.msgtype)
            assert (msg.width, msg.height, msg.encoding) == (320, 240, "bgr8")
            stamps.append(t)
    assert list((tmp_path / "b").glob("*.mcap"))
    source = read_source(tmp_path / "b")
    assert [f["name"] for f in source["frames"]] == names
    assert [f["stamp_ns"] for f in source["frames"]] == stamps
    with pytest.raises(ValueError, match="exists"):
        make_bag(scene["scene"], tmp_path / "b", image_names=names, progress=False)


def _replay_json(bag: Path, map_path: Path, out: Path, *args: str, timeout: float = 300) -> dict:
    """`supergf-ros replay BAG --map MAP --json --output OUT ARGS...` run to success; its JSON."""
    cmd = [*CLI, "replay", str(bag), "--map", str(map_path), "--json", "--output", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.ros
def test_replay_at_rate_drops_frames_and_reports(cache_dir, tmp_path):
    from ros_testing import synthetic_sift_map

    from supergf_ros.ros.make_bag import make_bag

    scene = synthetic_sift_map(cache_dir)
    make_bag(
        scene["scene"], tmp_path / "q", image_names=scene["queries"], rate_hz=30.0, progress=False
    )
    r = _replay_json(tmp_path / "q", scene["map"], tmp_path / "out")
    assert r["frames_in"] == len(scene["queries"])
    assert r["frames_dropped"] >= 1  # 30 Hz camera, ~4 Hz pipeline: newest frame wins
    assert r["frames_processed"] + r["frames_dropped"] == r["frames_in"]
    assert r["frames_localized"] >= 1 and r["node_exit_code"] == 0
    assert Path(r["trajectory_png"]).read_bytes()[:4] == b"\x89PNG"
    # the bag carries a robot (the scene has poses): TF, odometry; the node publishes base_pose
    assert r["time_to_first_fix_s"] > 0 and r["fixes"] >= 1
    assert r["base_poses"] >= r["fixes"] and r["map_to_odom_count"] >= 1
    assert set(r["base_pose_recall"]) == {"0.5m_2deg", "0.25m_2deg"}
    assert r["wrong_fixes_1m"] == 0  # (no check of jumps: the scene's queries are 4 m apart,
    # 120 m/s at 30 Hz, so odometry a sample off the image stamp is metres off)
    assert Path(r["base_trajectory_png"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.ros
def test_acceptance_herz_jesus_p25_replay(data_dir, superpoint_weights, cache_dir, tmp_path):
    from supergf_ros.datasets import Dataset
    from supergf_ros.mapping.build_map import build_map

    dataset = data_dir / "strecha" / "Herz-Jesus-P25"
    names = Dataset(dataset).names
    even, odd = names[0::2], names[1::2]
    map_path = cache_dir / "ros_herzjesu25_even_superpoint.h5"
    if not map_path.is_file():
        build_map(
            dataset,
            map_path,
            image_names=even,
            features="superpoint",
            extractor_conf={"weights": str(superpoint_weights)},
            progress=False,
        )
    queries = tmp_path / "odd.txt"
    queries.write_text("".join(f"{n}\n" for n in odd))
    bag = tmp_path / "hj25_odd"
    make = subprocess.run(
        [
            *CLI,
            "make-bag",
            str(dataset),
            "--queries",
            str(queries),
            "--out",
            str(bag),
            "--rate",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert make.returncode == 0, make.stderr[-2000:]
    r = _replay_json(bag, map_path, tmp_path / "out", "--as-fast-as-possible",
                     "--superpoint-weights", str(superpoint_weights), timeout=900)  # fmt: skip
    print(json.dumps({k: v for k, v in r.items() if k != "errors"}, indent=1))
    for key in (
        "latency_ms_p50",
        "latency_ms_p95",
        "throughput_hz",
        "frames_in",
        "frames_localized",
        "frames_dropped",
        "recall",
    ):
        assert key in r
    assert r["frames_in"] == len(odd) and r["frames_dropped"] == 0
    assert r["recall"]["0.25m_2deg"] >= 0.9, r
    assert r["latency_ms_p50"] > 0 and r["throughput_hz"] > 0
    assert (tmp_path / "out" / "trajectory.png").is_file()
    # the results file evaluates the same with `supergf-ros evaluate`
    ev = subprocess.run(
        [*CLI, "evaluate", r["results"], str(dataset), "--queries", str(queries), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["recall"] == r["recall"]


def test_launch_file_is_valid_and_references_existing_things():
    launch = REPO / "launch" / "localize.launch.py"
    tree = ast.parse(launch.read_text())  # valid Python
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    # the executable it starts is a console script the package installs
    setup_py = (REPO / "setup.py").read_text()
    assert "localizer_node" in consts
    assert re.search(r'"localizer_node = supergf_ros\.ros\.node:main"', setup_py)
    assert "supergf_ros" in consts
    # every file it references is in the package and installed by setup.py's data_files
    for rel in ("config/localize.yaml", "config/supergf.rviz"):
        assert (REPO / rel).is_file()
    assert {"localize.yaml", "supergf.rviz"} <= consts
    for arg in ("map", "params_file", "image_topic", "namespace"):
        assert arg in consts


def test_params_file_declares_only_known_parameters():
    import yaml

    from supergf_ros.ros.node import PARAMETERS

    params = yaml.safe_load((REPO / "config" / "localize.yaml").read_text())["/**"]
    declared = params["ros__parameters"]
    assert set(declared) == set(PARAMETERS)
    for name, value in declared.items():
        assert type(value) is type(PARAMETERS[name].default), name


def _kitti01_left_map(dataset: Path, superpoint_weights: Path, cache_dir: Path) -> Path:
    """SuperPoint map of every 5th left-camera (image_0) frame, cached."""
    from supergf_ros.datasets import Dataset
    from supergf_ros.mapping.build_map import build_map

    map_path = cache_dir / "ros_kitti01_image0_every5_superpoint.h5"
    if not map_path.is_file():
        left = [n for n in Dataset(dataset).names if n.startswith("image_0/")]
        build_map(
            dataset,
            map_path,
            image_names=left[::5],
            features="superpoint",
            extractor_conf={"weights": str(superpoint_weights)},
            progress=False,
        )
    return map_path


def _make_and_replay(dataset, map_path, weights, tmp_path, name, bag_flags, node_params=()):
    queries = tmp_path / "right.txt"
    queries.write_text("".join(f"image_1/{i:06d}.png\n" for i in range(51)))  # 5 s at 10 Hz
    bag = tmp_path / f"bag_{name}"
    make = subprocess.run(
        [
            *CLI,
            "make-bag",
            str(dataset),
            "--queries",
            str(queries),
            "--out",
            str(bag),
            *list(bag_flags),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert make.returncode == 0, make.stderr[-2000:]
    params = [arg for p in node_params for arg in ("--node-param", p)]
    r = _replay_json(bag, map_path, tmp_path / name, "--superpoint-weights", str(weights),
                     *params, timeout=600)  # fmt: skip
    print(name, json.dumps({k: v for k, v in r.items() if k not in ("errors", "recall")}))
    return r


@pytest.mark.slow
@pytest.mark.ros
def test_kitti01_right_camera_on_a_robot_with_drifting_odometry(
    data_dir, superpoint_weights, cache_dir, tmp_path
):
    """Acceptance: KITTI 01 right camera at its true 10 Hz (times.txt) with 1% drift odometry,
    map from the left camera; from the first fix on >= 95% of camera frames have a base pose
    within (0.5 m, 2 deg), no jump, no fix off by more than 1 m. Odometry off: global mode only,
    still no wrong fix, but most frames (dropped by the ~1 s/frame node) have no base pose."""
    dataset = data_dir / "sequences" / "kitti01"
    map_path = _kitti01_left_map(dataset, superpoint_weights, cache_dir)
    r = _make_and_replay(
        dataset, map_path, superpoint_weights, tmp_path, "odometry", ["--odometry-drift", "0.01"]
    )
    assert r["frames_in"] == 51 and r["frames_dropped"] > 0  # the node is slower than 10 Hz
    assert r["time_to_first_fix_s"] is not None and r["time_to_first_fix_s"] > 0
    assert r["wrong_fixes_1m"] == 0, r
    assert r["map_to_odom_count"] > 0 and r["nees_mean"] is not None
    off = _make_and_replay(
        dataset, map_path, superpoint_weights, tmp_path, "camera", ["--no-odometry"]
    )
    assert off["wrong_fixes_1m"] == 0 and off["fixes"] >= 1
    assert off["map_to_odom_count"] == 0
    assert off["base_pose_recall"]["0.5m_2deg"] < r["base_pose_recall"]["0.5m_2deg"]
    # The acceptance figures (>= 95% of frames with a base pose within 0.5 m / 2 deg, no jumps)
    # depend on the node's speed (odometry carries each fix over latency + period), so they are
    # measured by scripts/kitti_robot_replay.py on a quiet machine, not asserted here.
    print(
        f"\nKITTI robot replay: recall {r['base_pose_recall']}, jumps {r['jumps']}, "
        f"{r['stage_ms_mean']['total_ms']:.0f} ms per frame"
    )


def test_replay_of_a_corrupt_bag_is_a_clear_error(tmp_path, data_dir):
    from supergf_ros.ros.make_bag import make_bag

    bag = tmp_path / "bag"
    make_bag(data_dir / "strecha" / "fountain-P11", bag, image_names=["0001.jpg"], progress=False)
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[-20:] = b"\x00" * 20  # the file end magic
    mcap.write_bytes(bytes(data))
    (tmp_path / "map.h5").write_bytes(b"unused")
    proc = subprocess.run(
        [*CLI, "replay", str(bag), "--map", str(tmp_path / "map.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot read bag" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.ros
def test_replay_of_a_compressed_bag(cache_dir, tmp_path):
    from ros_testing import synthetic_sift_map

    from supergf_ros.ros.make_bag import make_bag

    scene = synthetic_sift_map(cache_dir)
    make_bag(
        scene["scene"],
        tmp_path / "q",
        image_names=scene["queries"][:3],
        rate_hz=1.0,
        encoding="jpeg",
        progress=False,
    )
    r = _replay_json(tmp_path / "q", scene["map"], tmp_path / "out", "--as-fast-as-possible")
    assert r["frames_in"] == 3 and r["frames_localized"] >= 2
