"""`supergf-ros make-bag DATASET --queries FILE --out BAG`: a dataset as a replayable robot bag.

Writes a rosbag2 (MCAP by default) with `sensor_msgs/Image` + `sensor_msgs/CameraInfo` per frame
at a fixed rate or at the dataset's timestamps (`--times`, default DATASET/times.txt when there),
using the pure-Python `rosbags` library (no ROS installation needed); `base_link -> camera` on
/tf_static; and, for a dataset with poses, a simulated drifting odometry (`robot_sim`):
nav_msgs/Odometry on /odom and odom -> base_link on /tf at `--odometry-rate` (images are then
logged `camera_latency_s` after their stamp, so the odometry of a frame is in before it).

Next to the bag's metadata it writes `supergf_ros_source.json` (the `SOURCE_FILE`): the dataset it
came from, the image name of every stamp and, when the dataset has poses, their reference
`cam_from_world` and `map_from_base`, plus under "robot" the frames, the extrinsic, the dense
ground-truth base trajectory (`base_trajectory`, at the odometry rate) and the odometry written,
so `supergf-ros replay` can evaluate without the dataset.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from supergf_ros.io_utils import atomic_output_dir
from supergf_ros.ros.conversions import COMPRESSED_FORMATS
from supergf_ros.ros.robot_bag import (
    TF_STATIC_TOPIC,
    TF_TOPIC,
    RobotMessages,
    RobotOptions,
    robot_source,
)
from supergf_ros.ros.robot_sim import (
    DEFAULT_DRIFT,
    DEFAULT_HEADING_DRIFT_DEG_PER_M,
    DEFAULT_ODOMETRY_RATE_HZ,
    encode_pose,
    frame_stamps,
    read_times,
)

SOURCE_FILE = "supergf_ros_source.json"
SOURCE_FORMAT = "supergf_ros.bag_source"
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
DEFAULT_RATE_HZ = 2.0
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_CAMERA_INFO_TOPIC = "/camera/camera_info"


def make_bag(
    dataset_dir: str | Path,
    out_path: str | Path,
    *,
    image_names: list[str] | None = None,
    rate_hz: float | None = None,
    times: dict[str, float] | str | Path | None = None,
    robot: RobotOptions | None = None,
    encoding: str = "rgb8",
    image_topic: str = DEFAULT_IMAGE_TOPIC,
    camera_info_topic: str = DEFAULT_CAMERA_INFO_TOPIC,
    frame_id: str = "camera",
    max_size: int | None = None,
    start_ns: int = DEFAULT_START_NS,
    storage: str = "mcap",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a rosbag2 of the dataset's `image_names` (default: all).

    Args:
        rate_hz: frames per second (frame i is stamped start_ns + i / rate_hz); default 2, or
            `times` when given ({name: seconds} or a `name timestamp_s` file, as KITTI's).
        robot: the base, /tf_static and the odometry (default `RobotOptions()`: odometry on
            when every frame has a pose); see `robot_bag` and `robot_sim`.
        encoding: Image encoding in the bag (rgb8, bgr8, mono8, mono16, rgba8, bgra8).
        max_size: resize so the longer side is at most this (intrinsics scaled to match).
        storage: "mcap" or "sqlite3".

    Returns:
        {"bag", "num_frames", "rate_hz", "duration_s", "size_bytes", "has_poses",
        "has_odometry", "odometry_drift", "topics"}.
    """
    from supergf_ros.datasets import Dataset

    robot = robot or RobotOptions()
    robot.check()
    if rate_hz is not None and times is not None:
        raise ValueError("give a rate or timestamps, not both")
    _check_options(
        1.0 if rate_hz is None else rate_hz,
        encoding,
        storage,
        max_size,
        (image_topic, camera_info_topic),
    )
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    dataset = Dataset(dataset_dir)
    names = _frame_names(dataset, image_names)
    stamps = _stamps(names, rate_hz, times, start_ns)
    source: dict[str, Any] = {
        "format": SOURCE_FORMAT,
        "dataset": str(Path(dataset_dir).resolve()),
        "rate_hz": _mean_rate(stamps),
        # image_transport's naming: CompressedImage on <base topic>/compressed
        "image_topic": image_topic + ("/compressed" if encoding in COMPRESSED_FORMATS else ""),
        "camera_info_topic": camera_info_topic,
        "frame_id": frame_id,
        "encoding": encoding,
        "frames": [],
    }
    has_poses = bool(names) and all(n in dataset.poses for n in names)
    map_from_cam = [dataset.poses[n].inverse() for n in names] if has_poses else None
    source["robot"], odom, variance = robot_source(robot, frame_id, stamps, map_from_cam)
    extra = {"odom": odom, "variance": variance, "options": robot}
    with atomic_output_dir(out_path) as tmp_bag:
        _write_bag(tmp_bag, storage, dataset, names, stamps, source, max_size, progress, extra)
        (tmp_bag / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    return _summary(out_path, names, stamps, source, has_poses, robot)


def _summary(out_path: Path, names, stamps, source, has_poses: bool, robot) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in out_path.rglob("*") if p.is_file())
    odometry = source["robot"]["odometry"]
    return {
        "bag": str(out_path),
        "num_frames": len(names),
        "rate_hz": source["rate_hz"],
        "duration_s": (stamps[-1] - stamps[0]) / 1e9 if names else 0.0,
        "size_bytes": int(size),
        "has_poses": has_poses,
        "has_odometry": odometry is not None,
        "odometry_drift": odometry["result"] if odometry else None,
        "topics": [source["image_topic"], source["camera_info_topic"], TF_STATIC_TOPIC]
        + ([TF_TOPIC, robot.odometry_topic] if odometry else []),
    }


def _frame_names(dataset, image_names: list[str] | None) -> list[str]:
    names = dataset.check_names(image_names if image_names is not None else dataset.names)
    missing_cam = [n for n in names if n not in dataset.cameras]
    if missing_cam:
        raise ValueError(
            f"{len(missing_cam)} image(s) have no camera in the dataset's model, so no "
            f"CameraInfo can be written: {missing_cam[:5]}"
        )
    return names


def _stamps(names: list[str], rate_hz, times, start_ns: int) -> list[int]:
    if times is None:
        period_ns = round(1e9 / (rate_hz or DEFAULT_RATE_HZ))
        return [start_ns + i * period_ns for i in range(len(names))]
    if not isinstance(times, dict):
        times = read_times(times)
    return frame_stamps(names, times, start_ns) if names else []


def _mean_rate(stamps: list[int]) -> float:
    if len(stamps) < 2:
        return DEFAULT_RATE_HZ
    return round((len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9), 6)


def _check_options(rate_hz, encoding: str, storage: str, max_size, topics) -> None:
    from supergf_ros.ros.conversions import SUPPORTED_ENCODINGS

    if not rate_hz > 0:
        raise ValueError(f"rate must be positive (frames per second), got {rate_hz}")
    if encoding not in (*SUPPORTED_ENCODINGS, *COMPRESSED_FORMATS):
        raise ValueError(
            f"unsupported encoding '{encoding}'; choose from {SUPPORTED_ENCODINGS} or, for "
            f"sensor_msgs/CompressedImage, {COMPRESSED_FORMATS}"
        )
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got '{storage}'")
    if max_size is not None and max_size < 16:
        raise ValueError(f"max_size must be >= 16 px, got {max_size}")
    for topic in topics:
        if not topic.startswith("/"):
            raise ValueError(f"bag topics must be absolute (start with '/'), got '{topic}'")


def _write_bag(bag_dir, storage, dataset, names, stamps, source, max_size, progress, extra):
    """Write an Image and a CameraInfo per frame, /tf_static and the odometry (in log-time order);
    append each frame to `source["frames"]`."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    image_type = _image_msgtype(source["encoding"])
    info_type = typestore.types["sensor_msgs/msg/CameraInfo"].__msgtype__
    iterator: Any = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="make-bag", unit="frame")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    odom, options = extra["odom"], extra["options"]
    options = options if odom is not None else replace(options, odometry=False)
    latency_ns = round(options.camera_latency_s * 1e9) if odom is not None else 0
    with Writer(bag_dir, version=9, storage_plugin=plugin) as writer:
        conn_img = writer.add_connection(source["image_topic"], image_type, typestore=typestore)
        conn_info = writer.add_connection(
            source["camera_info_topic"], info_type, typestore=typestore
        )
        robot = RobotMessages(typestore, writer, options)
        writer.set_custom_data("supergf_ros.dataset", source["dataset"])
        queue = [robot.static(stamps[0] if stamps else DEFAULT_START_NS, source["frame_id"])]
        if odom is not None:
            queue += robot.odometry(odom, extra["variance"])
        queue.sort(key=lambda m: m[1])
        q = 0
        for name, stamp_ns in zip(iterator, stamps):
            log_ns = stamp_ns + latency_ns
            while q < len(queue) and queue[q][1] <= log_ns:
                writer.write(*queue[q])
                q += 1
            info_raw, img_raw = _frame_raw(typestore, dataset, name, stamp_ns, source, max_size)
            writer.write(conn_info, log_ns, info_raw)
            writer.write(conn_img, log_ns, img_raw)
            source["frames"].append(_frame_entry(dataset, name, stamp_ns, options))
        for message in queue[q:]:
            writer.write(*message)


def _frame_raw(typestore, dataset, name: str, stamp_ns: int, source: dict, max_size):
    """Serialized (CameraInfo, Image) of one frame."""
    from supergf_ros.ros.bag_frames import downscale

    image = dataset.read_image(name)
    camera = dataset.camera(name)
    if max_size is not None and max(image.shape[:2]) > max_size:
        image = downscale(image, max_size)
        camera = camera.scaled(image.shape[1] / camera.width, image.shape[0] / camera.height)
    img_msg, info_msg = _frame_messages(
        typestore, image, camera, stamp_ns, source["frame_id"], source["encoding"]
    )
    return (
        typestore.serialize_cdr(info_msg, "sensor_msgs/msg/CameraInfo"),
        typestore.serialize_cdr(img_msg, _image_msgtype(source["encoding"])),
    )


def _image_msgtype(encoding: str) -> str:
    compressed = encoding in COMPRESSED_FORMATS
    return "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"


def _frame_entry(dataset, name: str, stamp_ns: int, options: RobotOptions) -> dict[str, Any]:
    """The source file's entry of a frame: name, header stamp, reference poses."""
    frame: dict[str, Any] = {"name": name, "stamp_ns": int(stamp_ns)}
    if name in dataset.poses:
        pose = dataset.poses[name]
        frame["cam_from_world"] = [float(v) for v in (*pose.qvec, *pose.tvec)]
        map_from_base = pose.inverse() * options.base_from_camera.inverse()
        frame["map_from_base"] = encode_pose(map_from_base)
    return frame


def _frame_messages(typestore, image, camera, stamp_ns: int, frame_id: str, encoding: str):
    """(Image, CameraInfo) messages of one frame, sharing one header."""
    from supergf_ros.ros.conversions import (
        camera_to_camera_info_fields,
        numpy_to_compressed_fields,
        numpy_to_image_fields,
    )

    types = typestore.types
    Time = types["builtin_interfaces/msg/Time"]
    header = types["std_msgs/msg/Header"](
        stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id,
    )
    if encoding in COMPRESSED_FORMATS:
        fields = numpy_to_compressed_fields(image, encoding)
    else:
        fields = numpy_to_image_fields(image, encoding)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    img_msg = types[_image_msgtype(encoding)](header=header, **fields)
    roi = types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    info_msg = types["sensor_msgs/msg/CameraInfo"](
        header=header, binning_x=0, binning_y=0, roi=roi, **camera_to_camera_info_fields(camera)
    )
    return img_msg, info_msg


def read_source(bag_path: str | Path) -> dict[str, Any] | None:
    """The bag's `SOURCE_FILE` (dataset, frame names, reference poses) or None if absent."""
    path = Path(bag_path) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        source = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if source.get("format") != SOURCE_FORMAT:
        raise ValueError(f"{path} is not a supergf_ros bag source file")
    return source


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "make-bag",
        help="write a rosbag2 (MCAP) of a dataset's camera stream and a simulated robot",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("dataset", type=Path, help="dataset folder (images/ + sparse_gt/ model)")
    p.add_argument("--queries", type=Path, help="image list, one name per line (default: all)")
    p.add_argument("--out", type=Path, required=True, help="output bag folder")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument(
        "--rate",
        type=float,
        help=f"frames per second (default: DATASET/times.txt if there, else {DEFAULT_RATE_HZ:g})",
    )
    timing.add_argument("--times", type=Path, help="'name timestamp_s' per line (KITTI times)")
    p.add_argument(
        "--encoding",
        default="rgb8",
        help="image encoding (default rgb8); jpeg or png write sensor_msgs/CompressedImage",
    )
    p.add_argument(
        "--compressed",
        action="store_true",
        help="JPEG sensor_msgs/CompressedImage on <image topic>/compressed (= --encoding jpeg)",
    )
    p.add_argument("--max-size", type=int, help="resize: longer image side at most this")
    p.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC)
    p.add_argument("--camera-info-topic", default=DEFAULT_CAMERA_INFO_TOPIC)
    p.add_argument("--frame-id", default="camera", help="header.frame_id (default camera)")
    robot = p.add_argument_group("robot (base_link -> camera on /tf_static; odometry)")
    robot.add_argument(
        "--no-odometry", action="store_true", help="camera and /tf_static only, no odometry"
    )
    robot.add_argument(
        "--odometry-rate",
        type=float,
        default=DEFAULT_ODOMETRY_RATE_HZ,
        help="odometry (and dense ground truth) rate in Hz (default 50)",
    )
    robot.add_argument(
        "--odometry-drift",
        type=float,
        default=DEFAULT_DRIFT,
        help="translation noise per step, a fraction of the step length (default 0.01)",
    )
    robot.add_argument(
        "--odometry-heading-drift",
        type=float,
        default=DEFAULT_HEADING_DRIFT_DEG_PER_M,
        help="heading noise per step, degrees per metre of step (default 0.5)",
    )
    robot.add_argument("--odometry-seed", type=int, default=0, help="noise seed (default 0)")
    robot.add_argument("--odometry-topic", default="/odom", help="nav_msgs/Odometry topic")
    robot.add_argument("--base-frame", default="base_link")
    robot.add_argument("--odom-frame", default="odom")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from supergf_ros.datasets import read_image_list

    names = read_image_list(args.queries) if args.queries else None
    times = args.times
    if times is None and args.rate is None and (args.dataset / "times.txt").is_file():
        times = args.dataset / "times.txt"
    robot = RobotOptions(
        odometry=not args.no_odometry,
        odometry_rate_hz=args.odometry_rate,
        drift=args.odometry_drift,
        heading_drift_deg_per_m=args.odometry_heading_drift,
        seed=args.odometry_seed,
        base_frame=args.base_frame,
        odom_frame=args.odom_frame,
        odometry_topic=args.odometry_topic,
    )
    summary = make_bag(
        args.dataset,
        args.out,
        image_names=names,
        rate_hz=args.rate,
        times=times,
        robot=robot,
        encoding="jpeg" if args.compressed else args.encoding,
        image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic,
        frame_id=args.frame_id,
        max_size=args.max_size,
        storage=args.storage,
        overwrite=args.overwrite,
    )
    drift = summary["odometry_drift"]
    print(
        f"wrote {summary['bag']}: {summary['num_frames']} frames at {summary['rate_hz']:g} Hz "
        f"({summary['duration_s']:.1f} s, {summary['size_bytes'] / 1e6:.1f} MB"
        f"{', with reference poses' if summary['has_poses'] else ''})"
        + (
            f"; odometry at {args.odometry_rate:g} Hz drifted {drift['end_error_m']:.3f} m "
            f"over {drift['distance_m']:.1f} m"
            if drift
            else ""
        )
    )
    return 0
