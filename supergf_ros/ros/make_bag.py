"""`supergf-ros make-bag DATASET --queries FILE --out BAG`: a dataset as a replayable camera stream.

Writes a rosbag2 (MCAP by default) with `sensor_msgs/Image` + `sensor_msgs/CameraInfo` per frame
at a fixed rate, using the pure-Python `rosbags` library (no ROS installation needed). Next to the
bag's metadata it writes `supergf_ros_source.json` (the `SOURCE_FILE`): the dataset it came from,
the image name of every stamp and, when the dataset has poses, their reference `cam_from_world`,
so `supergf-ros replay` can evaluate without the dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from supergf_ros.io_utils import atomic_output_dir

SOURCE_FILE = "supergf_ros_source.json"
SOURCE_FORMAT = "supergf_ros.bag_source"
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_CAMERA_INFO_TOPIC = "/camera/camera_info"


def make_bag(
    dataset_dir: str | Path,
    out_path: str | Path,
    *,
    image_names: list[str] | None = None,
    rate_hz: float = 2.0,
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
    """Write a rosbag2 of the dataset's `image_names` (default: all) at `rate_hz`.

    Args:
        encoding: Image encoding in the bag (rgb8, bgr8, mono8, mono16, rgba8, bgra8).
        max_size: resize so the longer side is at most this (intrinsics scaled to match).
        start_ns: stamp of the first frame; frame i is stamped start_ns + i / rate_hz.
        storage: "mcap" or "sqlite3".

    Returns:
        {"bag", "num_frames", "rate_hz", "duration_s", "size_bytes", "has_poses", "topics"}.
    """
    from supergf_ros.datasets import Dataset

    _check_options(rate_hz, encoding, storage, max_size, (image_topic, camera_info_topic))
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    dataset = Dataset(dataset_dir)
    names = dataset.check_names(image_names if image_names is not None else dataset.names)
    missing_cam = [n for n in names if n not in dataset.cameras]
    if missing_cam:
        raise ValueError(
            f"{len(missing_cam)} image(s) have no camera in the dataset's model, so no "
            f"CameraInfo can be written: {missing_cam[:5]}"
        )
    period_ns = round(1e9 / rate_hz)
    source: dict[str, Any] = {
        "format": SOURCE_FORMAT,
        "dataset": str(Path(dataset_dir).resolve()),
        "rate_hz": float(rate_hz),
        "image_topic": image_topic,
        "camera_info_topic": camera_info_topic,
        "frame_id": frame_id,
        "encoding": encoding,
        "frames": [],
    }
    stamps = [start_ns + i * period_ns for i in range(len(names))]
    with atomic_output_dir(out_path) as tmp_bag:
        _write_bag(tmp_bag, storage, dataset, names, stamps, source, max_size, progress)
        (tmp_bag / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out_path.rglob("*") if p.is_file())
    return {
        "bag": str(out_path),
        "num_frames": len(names),
        "rate_hz": float(rate_hz),
        "duration_s": (len(names) - 1) * period_ns / 1e9 if names else 0.0,
        "size_bytes": int(size),
        "has_poses": all("cam_from_world" in f for f in source["frames"]),
        "topics": [image_topic, camera_info_topic],
    }


def _check_options(rate_hz, encoding: str, storage: str, max_size, topics) -> None:
    from supergf_ros.ros.conversions import SUPPORTED_ENCODINGS

    if not rate_hz > 0:
        raise ValueError(f"rate must be positive (frames per second), got {rate_hz}")
    if encoding not in SUPPORTED_ENCODINGS:
        raise ValueError(f"unsupported encoding '{encoding}'; choose from {SUPPORTED_ENCODINGS}")
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got '{storage}'")
    if max_size is not None and max_size < 16:
        raise ValueError(f"max_size must be >= 16 px, got {max_size}")
    for topic in topics:
        if not topic.startswith("/"):
            raise ValueError(f"bag topics must be absolute (start with '/'), got '{topic}'")


def _write_bag(bag_dir, storage, dataset, names, stamps, source, max_size, progress) -> None:
    """Write an Image and a CameraInfo per frame; append each frame to `source["frames"]`."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from supergf_ros.ros.bag_frames import downscale

    typestore = get_typestore(Stores.ROS2_KILTED)
    image_type = typestore.types["sensor_msgs/msg/Image"].__msgtype__
    info_type = typestore.types["sensor_msgs/msg/CameraInfo"].__msgtype__
    iterator: Any = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="make-bag", unit="frame")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(bag_dir, version=9, storage_plugin=plugin) as writer:
        conn_img = writer.add_connection(source["image_topic"], image_type, typestore=typestore)
        conn_info = writer.add_connection(
            source["camera_info_topic"], info_type, typestore=typestore
        )
        writer.set_custom_data("supergf_ros.dataset", source["dataset"])
        for name, stamp_ns in zip(iterator, stamps):
            image = dataset.read_image(name)
            camera = dataset.camera(name)
            if max_size is not None and max(image.shape[:2]) > max_size:
                image = downscale(image, max_size)
                camera = camera.scaled(
                    image.shape[1] / camera.width, image.shape[0] / camera.height
                )
            img_msg, info_msg = _frame_messages(
                typestore, image, camera, stamp_ns, source["frame_id"], source["encoding"]
            )
            writer.write(conn_info, stamp_ns, typestore.serialize_cdr(info_msg, info_type))
            writer.write(conn_img, stamp_ns, typestore.serialize_cdr(img_msg, image_type))
            frame: dict[str, Any] = {"name": name, "stamp_ns": int(stamp_ns)}
            if name in dataset.poses:
                pose = dataset.poses[name]
                frame["cam_from_world"] = [float(v) for v in (*pose.qvec, *pose.tvec)]
            source["frames"].append(frame)


def _frame_messages(typestore, image, camera, stamp_ns: int, frame_id: str, encoding: str):
    """(Image, CameraInfo) messages of one frame, sharing one header."""
    from supergf_ros.ros.conversions import camera_to_camera_info_fields, numpy_to_image_fields

    types = typestore.types
    Time = types["builtin_interfaces/msg/Time"]
    header = types["std_msgs/msg/Header"](
        stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id,
    )
    fields = numpy_to_image_fields(image, encoding)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    img_msg = types["sensor_msgs/msg/Image"](header=header, **fields)
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
        help="write a rosbag2 (MCAP) of Image + CameraInfo from a dataset's images",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("dataset", type=Path, help="dataset folder (images/ + sparse_gt/ model)")
    p.add_argument("--queries", type=Path, help="image list, one name per line (default: all)")
    p.add_argument("--out", type=Path, required=True, help="output bag folder")
    p.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    p.add_argument("--encoding", default="rgb8", help="image encoding (default rgb8)")
    p.add_argument("--max-size", type=int, help="resize: longer image side at most this")
    p.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC)
    p.add_argument("--camera-info-topic", default=DEFAULT_CAMERA_INFO_TOPIC)
    p.add_argument("--frame-id", default="camera", help="header.frame_id (default camera)")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from supergf_ros.datasets import read_image_list

    names = read_image_list(args.queries) if args.queries else None
    summary = make_bag(
        args.dataset,
        args.out,
        image_names=names,
        rate_hz=args.rate,
        encoding=args.encoding,
        image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic,
        frame_id=args.frame_id,
        max_size=args.max_size,
        storage=args.storage,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {summary['bag']}: {summary['num_frames']} frames at {summary['rate_hz']:g} Hz "
        f"({summary['duration_s']:.1f} s, {summary['size_bytes'] / 1e6:.1f} MB"
        f"{', with reference poses' if summary['has_poses'] else ''})"
    )
    return 0
