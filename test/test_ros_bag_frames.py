"""`supergf-ros bag-frames`: rosbag2 Image topic -> time-ordered PNG frames for training.

Bags are written with `make_bag` from real images (fountain-P11) or, for the error cases, with
`rosbags` directly; no running ROS is needed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from supergf_ros.ros.bag_frames import extract_frames
from supergf_ros.ros.make_bag import DEFAULT_START_NS, make_bag

RATE_HZ = 2.0
PERIOD_NS = round(1e9 / RATE_HZ)
NAMES = ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
MAX_SIZE = 320


@pytest.fixture(scope="module")
def fountain(data_dir: Path) -> Path:
    return data_dir / "strecha" / "fountain-P11"


@pytest.fixture(scope="module")
def rgb_bag(fountain: Path, tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("bags") / "rgb"
    make_bag(fountain, bag, image_names=NAMES, rate_hz=RATE_HZ, max_size=MAX_SIZE, progress=False)
    return bag


@pytest.fixture(scope="module")
def mono16_bag(fountain: Path, tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("bags") / "mono16"
    names = NAMES[:3]
    make_bag(
        fountain,
        bag,
        image_names=names,
        rate_hz=RATE_HZ,
        max_size=MAX_SIZE,
        encoding="mono16",
        storage="sqlite3",
        progress=False,
    )
    return bag


def _expected_rgb(fountain: Path, name: str, max_size: int) -> np.ndarray:
    """The image as make_bag writes it: RGB, INTER_AREA-resized to max_size."""
    image = cv2.cvtColor(cv2.imread(str(fountain / "images" / name)), cv2.COLOR_BGR2RGB)
    scale = max_size / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _pngs(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "images").glob("*.png"))


def test_rgb8_bag_to_lossless_frames_in_stamp_order(rgb_bag, fountain, tmp_path):
    from supergf_ros.training.data import ImageSet, load_source

    out = tmp_path / "frames"
    summary = extract_frames(rgb_bag, out, progress=False)
    stamps = [DEFAULT_START_NS + i * PERIOD_NS for i in range(len(NAMES))]
    assert summary == {
        "num_frames": 4,
        "image_topic": "/camera/image_raw",
        "out_dir": str(out),
        "first_stamp_ns": stamps[0],
        "last_stamp_ns": stamps[-1],
        "skipped_bad_frames": 0,
    }
    pngs = _pngs(out)
    assert [p.name for p in pngs] == [f"{s:019d}.png" for s in stamps]
    for path, name in zip(pngs, NAMES):
        np.testing.assert_array_equal(_read_rgb(path), _expected_rgb(fountain, name, MAX_SIZE))
    info = json.loads((out / "frames.json").read_text())
    assert info["bag"] == str(rgb_bag.resolve())
    assert info["image_topic"] == "/camera/image_raw"
    assert (info["num_frames"], info["every"], info["max_size"]) == (4, 1, None)
    assert (info["first_stamp_ns"], info["last_stamp_ns"]) == (stamps[0], stamps[-1])
    # no temporary folder left behind
    assert sorted(p.name for p in out.iterdir()) == ["frames.json", "images"]

    (image_set,) = load_source(out, sequence_window=4)
    assert isinstance(image_set, ImageSet)
    assert [p.name for p in image_set.paths] == [p.name for p in pngs]


def test_mono16_sqlite3_bag_every_and_max_size(mono16_bag, fountain, tmp_path):
    out = tmp_path / "gray"
    summary = extract_frames(mono16_bag, out, progress=False)
    assert summary["num_frames"] == 3
    first = cv2.imread(str(_pngs(out)[0]), cv2.IMREAD_UNCHANGED)
    rgb = _expected_rgb(fountain, NAMES[0], MAX_SIZE).astype(np.float32)
    gray = np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255)
    assert first.ndim == 2
    np.testing.assert_array_equal(first, gray.astype(np.uint8))

    every = extract_frames(mono16_bag, tmp_path / "every", every=2, max_size=100, progress=False)
    stamps = [DEFAULT_START_NS, DEFAULT_START_NS + 2 * PERIOD_NS]
    assert every["num_frames"] == 2
    assert [p.name for p in _pngs(tmp_path / "every")] == [f"{s:019d}.png" for s in stamps]
    small = cv2.imread(str(_pngs(tmp_path / "every")[0]), cv2.IMREAD_UNCHANGED)
    assert max(small.shape) == 100 and max(first.shape) == MAX_SIZE
    info = json.loads((tmp_path / "every" / "frames.json").read_text())
    assert (info["every"], info["max_size"], info["num_frames"]) == (2, 100, 2)


def test_refuses_to_overwrite_without_flag(rgb_bag, tmp_path):
    out = tmp_path / "frames"
    extract_frames(rgb_bag, out, progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        extract_frames(rgb_bag, out, every=2, progress=False)
    assert len(_pngs(out)) == 4
    extract_frames(rgb_bag, out, every=2, overwrite=True, progress=False)
    assert len(_pngs(out)) == 2
    assert json.loads((out / "frames.json").read_text())["every"] == 2
    # an existing but empty images/ folder is fine
    (tmp_path / "empty" / "images").mkdir(parents=True)
    assert extract_frames(rgb_bag, tmp_path / "empty", progress=False)["num_frames"] == 4


def test_bad_paths_and_options(rgb_bag, tmp_path):
    not_a_bag = tmp_path / "not_a_bag"
    not_a_bag.mkdir()
    for mcap in rgb_bag.glob("*.mcap"):
        (not_a_bag / mcap.name).write_bytes(mcap.read_bytes())
    with pytest.raises(ValueError, match=r"no metadata\.yaml"):
        extract_frames(not_a_bag, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="bag not found"):
        extract_frames(tmp_path / "missing", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="every"):
        extract_frames(rgb_bag, tmp_path / "out", every=0, progress=False)
    with pytest.raises(ValueError, match="max_size"):
        extract_frames(rgb_bag, tmp_path / "out", max_size=8, progress=False)
    with pytest.raises(ValueError, match="/nope"):
        extract_frames(rgb_bag, tmp_path / "out", image_topic="/nope", progress=False)
    assert not (tmp_path / "out").exists()


def _write_bag(path: Path, messages: list[tuple[str, int, int, dict]]) -> None:
    """A bag of Image messages (topic, receive ns, header stamp ns, image fields)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Image = ts.types["sensor_msgs/msg/Image"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for topic, recv_ns, stamp_ns, fields in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, Image.__msgtype__, typestore=ts)
            header = Header(
                stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                frame_id="cam",
            )
            data = np.frombuffer(fields["data"], np.uint8)
            msg = Image(header=header, **{**fields, "data": data})
            writer.write(conns[topic], recv_ns, ts.serialize_cdr(msg, Image.__msgtype__))


def _fields(value: int, encoding: str = "mono8", truncate: int = 0) -> dict:
    from supergf_ros.ros.conversions import numpy_to_image_fields

    fields = numpy_to_image_fields(np.full((6, 8), value, np.uint8), "mono8")
    fields["encoding"] = encoding
    if truncate:
        fields["data"] = fields["data"][:-truncate]
    return fields


def test_stamp_order_duplicates_bad_frames_and_topics(tmp_path, caplog):
    bag = tmp_path / "bag"
    s = 1_000_000_000
    cam, other = "/cam/image", "/other/image"
    _write_bag(
        bag,
        [
            (cam, 10, 3 * s, _fields(30)),  # received first, stamped last
            (cam, 20, 1 * s, _fields(11)),  # duplicate stamp, received first -> no suffix
            (cam, 30, 1 * s, _fields(12)),  # duplicate stamp, received second -> _1
            (cam, 40, 2 * s, _fields(0, encoding="yuv422")),  # bad encoding
            (cam, 50, 4 * s, _fields(0, truncate=5)),  # truncated data
            (other, 60, 5 * s, _fields(99)),
        ],
    )
    with pytest.raises(ValueError, match="2 sensor_msgs/msg/Image topics"):
        extract_frames(bag, tmp_path / "out", progress=False)
    with caplog.at_level(logging.WARNING, logger="supergf_ros.ros.bag_frames"):
        summary = extract_frames(bag, tmp_path / "out", image_topic=cam, progress=False)
    assert summary["skipped_bad_frames"] == 2
    assert (summary["first_stamp_ns"], summary["last_stamp_ns"]) == (1 * s, 3 * s)
    names = [p.name for p in _pngs(tmp_path / "out")]
    assert names == [f"{1 * s:019d}.png", f"{1 * s:019d}_1.png", f"{3 * s:019d}.png"]
    values = [int(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[0, 0]) for p in _pngs(tmp_path / "out")]
    assert values == [11, 12, 30]
    assert f"stamp {2 * s} ns" in caplog.text and "yuv422" in caplog.text
    assert f"stamp {4 * s} ns" in caplog.text and "truncated" in caplog.text

    shuffled = tmp_path / "shuffled"  # every-N counts in stamp order, not receive order
    _write_bag(shuffled, [(cam, 10 * i, k * s, _fields(k)) for i, k in enumerate([3, 1, 4, 2])])
    extract_frames(shuffled, tmp_path / "every", every=2, progress=False)
    pngs = _pngs(tmp_path / "every")
    assert [p.name for p in pngs] == [f"{1 * s:019d}.png", f"{3 * s:019d}.png"]
    assert [int(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[0, 0]) for p in pngs] == [1, 3]

    only_bad = tmp_path / "only_bad"
    _write_bag(only_bad, [(cam, 10, s, _fields(0, encoding="yuv422"))])
    with pytest.raises(ValueError, match="no frame could be decoded"):
        extract_frames(only_bad, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2" / "images").exists()


def test_many_duplicate_stamps_still_sort_in_receive_order(tmp_path):
    bag = tmp_path / "bag"
    _write_bag(bag, [("/cam", 10 + i, 0, _fields(i)) for i in range(12)])  # unset stamps
    extract_frames(bag, tmp_path / "out", progress=False)
    pngs = _pngs(tmp_path / "out")
    assert [int(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[0, 0]) for p in pngs] == list(range(12))
    assert pngs[0].name == "0" * 19 + ".png" and pngs[1].name == "0" * 19 + "_01.png"


def test_interrupted_run_leaves_no_frame_folder(rgb_bag, tmp_path, monkeypatch):
    from supergf_ros.ros import conversions

    real = conversions.image_to_numpy
    calls = []

    def interrupted(msg):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(msg)

    monkeypatch.setattr(conversions, "image_to_numpy", interrupted)
    out = tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt):
        extract_frames(rgb_bag, out, progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_prints_summary_and_validates(rgb_bag, tmp_path, capsys):
    from supergf_ros.cli import main

    out = tmp_path / "cli"
    assert main(["bag-frames", str(rgb_bag), str(out), "--every", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("wrote 2 frames of /camera/image_raw")
    assert main(["bag-frames", str(rgb_bag), str(out), "--quiet"]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    for bad in (["--every", "0"], ["--max-size", "8"]):
        with pytest.raises(SystemExit) as exc:
            main(["bag-frames", str(rgb_bag), str(out), *bad])
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err


def test_compressed_bag_round_trip(fountain, tmp_path):
    bag = tmp_path / "jpeg"
    summary = make_bag(
        fountain,
        bag,
        image_names=NAMES[:2],
        rate_hz=RATE_HZ,
        max_size=MAX_SIZE,
        encoding="jpeg",
        progress=False,
    )
    assert summary["num_frames"] == 2
    out = extract_frames(bag, tmp_path / "frames", progress=False)
    assert out["image_topic"] == "/camera/image_raw/compressed" and out["num_frames"] == 2
    frames = _pngs(tmp_path / "frames")
    for name, path in zip(NAMES[:2], frames):
        got, want = _read_rgb(path), _expected_rgb(fountain, name, MAX_SIZE)
        assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 4.0  # JPEG


def test_a_truncated_jpeg_fails_make_bag_with_its_name(fountain, tmp_path):
    import shutil
    import subprocess
    import sys

    dataset = tmp_path / "dataset"
    shutil.copytree(fountain, dataset)
    image = dataset / "images" / NAMES[1]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    (tmp_path / "q.txt").write_text("\n".join(NAMES[:3]) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "supergf_ros.cli",
            "make-bag",
            str(dataset),
            "--queries",
            str(tmp_path / "q.txt"),
            "--out",
            str(tmp_path / "bag"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert NAMES[1] in proc.stderr and "truncated JPEG" in proc.stderr
    assert not (tmp_path / "bag").exists()  # nothing half-written
