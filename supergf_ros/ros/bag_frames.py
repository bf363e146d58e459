"""`supergf-ros bag-frames BAG OUT_DIR`: a rosbag2 camera stream as a folder of time-ordered frames.

Reads the bag (MCAP or sqlite3) with the pure-Python `rosbags` library (no ROS installation
needed), decodes every `sensor_msgs/Image` of one topic and writes it as a PNG file
``OUT_DIR/images/<header stamp in ns, 19 digits>.png``, so file-name order is time order, plus
``OUT_DIR/frames.json`` describing the extraction. That folder is what the trainer takes as an
image sequence without poses:

    supergf-ros train RUN_DIR --data OUT_DIR --sequence-window 4 \\
        --init-weights supergf_ros/weights/supergf_dense_superpoint.pt

Frames are ordered by header stamp; frames sharing a stamp are ordered by bag receive time and
get a suffix ``_1``, ``_2``, ... (zero-padded when a stamp has more than ten frames, so names
still sort in order). ``images/`` is written into a temporary sibling folder and moved into place
at the end, so an interrupted run leaves no half-written frame folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from supergf_ros.io_utils import atomic_output_dir, atomic_write_text

logger = logging.getLogger(__name__)

FRAMES_FILE = "frames.json"
FRAMES_FORMAT = "supergf_ros.bag_frames"
IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_MSGTYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_MSGTYPES = (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)


def decode_image_message(msg: Any, msgtype: str):
    """HxW or HxWx3 RGB uint8 of an Image or CompressedImage message; ValueError if bad."""
    from supergf_ros.ros.conversions import compressed_to_numpy, image_to_numpy

    return compressed_to_numpy(msg) if msgtype == COMPRESSED_MSGTYPE else image_to_numpy(msg)


STAMP_DIGITS = 19


def extract_frames(
    bag_path: str | Path,
    out_dir: str | Path,
    *,
    image_topic: str | None = None,
    every: int = 1,
    max_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the Image messages of `bag_path` as PNG frames to ``out_dir/images/``.

    Args:
        bag_path: rosbag2 folder (the one holding ``metadata.yaml``), MCAP or sqlite3.
        out_dir: output folder; gets ``images/`` and ``frames.json``.
        image_topic: the `sensor_msgs/msg/Image` topic; needed only if the bag has several.
        every: keep every N-th frame (in stamp order), starting with the first.
        max_size: downscale (INTER_AREA) so the longer image side is at most this.
        overwrite: replace an existing non-empty ``out_dir/images``.
        progress: show tqdm progress bars.

    Frames that cannot be decoded are skipped with a warning and counted in
    `skipped_bad_frames`. Returns {"num_frames", "image_topic", "out_dir", "first_stamp_ns",
    "last_stamp_ns", "skipped_bad_frames"}. Raises FileNotFoundError for a missing bag,
    ValueError for anything else that stops the extraction.
    """
    from rosbags.rosbag2 import Reader, ReaderError
    from rosbags.typesys import Stores, get_typestore

    bag_path, out_dir = Path(bag_path), Path(out_dir)
    every = _check_options(bag_path, every, max_size)
    images_dir = out_dir / "images"
    _check_output(out_dir, images_dir, overwrite)
    typestore = get_typestore(Stores.ROS2_KILTED)
    try:
        with Reader(bag_path) as reader:
            conn = image_connection(reader.connections, image_topic, bag_path)
            entries, skipped = _scan_stamps(reader, conn, typestore, progress)
            if not entries:
                raise ValueError(
                    f"no frame could be decoded from topic {conn.topic} of bag {bag_path} "
                    f"({skipped} message(s) skipped)"
                )
            selected = _select_frames(entries, every, conn.topic)
            with atomic_output_dir(images_dir) as tmp_images:
                tmp_images.mkdir()
                written, bad = _write_frames(
                    reader, conn, typestore, selected, tmp_images, max_size, progress
                )
                skipped += bad
                if not written:
                    raise ValueError(
                        f"no frame could be decoded from topic {conn.topic} of bag {bag_path} "
                        f"({skipped} frame(s) skipped, see the warnings)"
                    )
                # the old description must not outlive the frames it described
                (out_dir / FRAMES_FILE).unlink(missing_ok=True)
    except ReaderError as err:
        raise ValueError(f"cannot read bag {bag_path}: {err}") from err
    return _write_description(bag_path, out_dir, conn.topic, written, skipped, every, max_size)


def _write_description(bag_path, out_dir, topic, written, skipped, every, max_size) -> dict:
    """Write ``frames.json``; the summary of the extraction."""
    summary: dict[str, Any] = {
        "num_frames": len(written),
        "image_topic": topic,
        "out_dir": str(out_dir),
        "first_stamp_ns": min(written),
        "last_stamp_ns": max(written),
        "skipped_bad_frames": skipped,
    }
    info = {
        "format": FRAMES_FORMAT,
        "bag": str(bag_path.resolve()),
        "image_topic": topic,
        "num_frames": len(written),
        "first_stamp_ns": summary["first_stamp_ns"],
        "last_stamp_ns": summary["last_stamp_ns"],
        "every": every,
        "max_size": max_size,
        "skipped_bad_frames": skipped,
    }
    atomic_write_text(out_dir / FRAMES_FILE, json.dumps(info, indent=1) + "\n")
    return summary


def _check_options(bag_path: Path, every: Any, max_size: int | None) -> int:
    """`every` as an int, once the options and the bag folder are valid."""
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
        raise ValueError(f"every must be an integer >= 1 (keep every N-th frame), got {every!r}")
    if max_size is not None and max_size < 16:
        raise ValueError(f"max_size must be >= 16 px, got {max_size}")
    if not bag_path.exists():
        raise FileNotFoundError(f"bag not found: {bag_path}")
    if not (bag_path / "metadata.yaml").is_file():
        raise ValueError(
            f"not a rosbag2 folder (no metadata.yaml): {bag_path}; pass the bag folder that "
            "holds metadata.yaml, not a .mcap/.db3 file inside it"
        )
    return int(every)


def _scan_stamps(reader, conn, typestore, progress: bool) -> tuple[list, int]:
    """([(header stamp, receive time, message index)], messages skipped) of `conn`."""
    from tqdm import tqdm

    from supergf_ros.ros.conversions import stamp_to_ns

    entries: list[tuple[int, int, int]] = []
    skipped = 0
    scan = tqdm(
        reader.messages(connections=[conn]),
        total=getattr(conn, "msgcount", None),
        desc="bag-frames scan",
        unit="msg",
        disable=not progress,
    )
    for index, (c, recv_ns, raw) in enumerate(scan):
        try:
            stamp = stamp_to_ns(typestore.deserialize_cdr(raw, c.msgtype).header.stamp)
        except Exception as err:  # corrupt CDR: any decoding error, never fatal
            skipped += 1
            logger.warning(
                "skipping message %d on %s received at %d ns: cannot deserialize (%s)",
                index,
                conn.topic,
                recv_ns,
                str(err) or type(err).__name__,
            )
            continue
        if stamp < 0:
            skipped += 1
            logger.warning("skipping frame with negative header stamp %d ns", stamp)
            continue
        entries.append((stamp, int(recv_ns), index))
    return entries, skipped


def _select_frames(entries: list, every: int, topic: str) -> dict[int, tuple[int, str]]:
    """{message index: (stamp, file stem)} of every `every`-th frame in stamp order."""
    if all(stamp == 0 for stamp, _, _ in entries):
        logger.warning(
            "all header stamps on %s are zero (unset): frames are ordered by bag receive time",
            topic,
        )
    entries = sorted(entries)
    names = _frame_names([stamp for stamp, _, _ in entries[::every]])
    return {e[2]: (e[0], name) for e, name in zip(entries[::every], names)}


def _write_frames(reader, conn, typestore, selected, images_dir, max_size, progress):
    """Decode, resize and write the `selected` frames; (stamps written, frames skipped)."""
    import cv2
    from tqdm import tqdm

    written: list[int] = []
    skipped = 0
    with tqdm(total=len(selected), desc="bag-frames", unit="frame", disable=not progress) as bar:
        for index, (c, _, raw) in enumerate(reader.messages(connections=[conn])):
            if index not in selected:
                continue
            stamp, name = selected[index]
            bar.update()
            try:
                image = decode_image_message(typestore.deserialize_cdr(raw, c.msgtype), c.msgtype)
            except ValueError as err:
                skipped += 1
                logger.warning("skipping frame at stamp %d ns: %s", stamp, err)
                continue
            image = downscale(image, max_size)
            if image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            path = images_dir / f"{name}.png"
            if not cv2.imwrite(str(path), image):
                raise ValueError(f"cannot write {path} (disk full or no permission?)")
            written.append(stamp)
    return written, skipped


def downscale(image: np.ndarray, max_size: int | None) -> np.ndarray:
    """`image` resized (INTER_AREA) so its longer side is at most `max_size` (None: as is)."""
    if max_size is None or max(image.shape[:2]) <= max_size:
        return image
    import cv2

    scale = max_size / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _check_output(out_dir: Path, images_dir: Path, overwrite: bool) -> None:
    """Refuse an output that is a file or already holds frames (unless `overwrite`)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a folder")
    if images_dir.is_symlink() or (images_dir.exists() and not images_dir.is_dir()):
        raise ValueError(f"{images_dir} exists and is not a folder; remove it or pick another")
    if images_dir.is_dir() and any(images_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"{images_dir} already holds files; pass overwrite=True (--overwrite) to replace "
            "them, or pick another output folder"
        )


def image_connection(connections: Any, image_topic: str | None, bag_path: Path) -> Any:
    """The bag connection of `image_topic` (Image or CompressedImage), or of the only one."""
    images = [c for c in connections if c.msgtype in IMAGE_MSGTYPES]
    topics = sorted({c.topic for c in images})
    kinds = " or ".join(IMAGE_MSGTYPES)
    if image_topic is not None:
        matching = [c for c in images if c.topic == image_topic]
        if not matching:
            other = [c.msgtype for c in connections if c.topic == image_topic]
            what = f"has type {other[0]}" if other else "is not in the bag"
            raise ValueError(f"topic {image_topic} {what}; {kinds} topics of {bag_path}: {topics}")
        if len(matching) > 1:
            raise ValueError(f"bag {bag_path} has {len(matching)} connections on {image_topic}")
        return matching[0]
    if len(images) == 1:
        return images[0]
    if not images:
        raise ValueError(f"bag {bag_path} has no {kinds} topic")
    types = sorted({c.msgtype for c in images})
    raise ValueError(
        f"bag {bag_path} has {len(images)} {types[0] if len(types) == 1 else 'image'} topics "
        f"{topics}; pick one with image_topic (--image-topic)"
    )


def _frame_names(stamps: list[int]) -> list[str]:
    """File stems for sorted `stamps`: the zero-padded stamp, then ``_1``, ``_2``, ... for
    repeated stamps (zero-padded within a stamp so that names sort in the given order)."""
    counts: dict[int, int] = {}
    for stamp in stamps:
        counts[stamp] = counts.get(stamp, 0) + 1
    names, seen = [], {}
    for stamp in stamps:
        k = seen.get(stamp, 0)
        seen[stamp] = k + 1
        base = f"{stamp:0{STAMP_DIGITS}d}"
        width = len(str(counts[stamp] - 1))
        names.append(base if k == 0 else f"{base}_{k:0{width}d}")
    return names


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bag-frames",
        help="extract a rosbag2's camera images as time-ordered PNG frames for fine-tuning",
        description=(
            "Write the sensor_msgs/Image frames of a rosbag2 (MCAP or sqlite3) to\n"
            "OUT_DIR/images/<header stamp ns>.png in time order (+ OUT_DIR/frames.json): a\n"
            "folder of time-ordered frames without poses, to fine-tune SuperGF on a mapping run.\n"
            "Then:\n"
            "  supergf-ros train RUN_DIR --data OUT_DIR --sequence-window 4 \\\n"
            "      --init-weights supergf_ros/weights/supergf_dense_superpoint.pt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bag", type=Path, metavar="BAG", help="rosbag2 folder (with metadata.yaml)")
    p.add_argument(
        "out_dir", type=Path, metavar="OUT_DIR", help="output folder (gets images/, frames.json)"
    )
    p.add_argument(
        "--image-topic", metavar="TOPIC", help="the Image topic (needed if the bag has several)"
    )
    p.add_argument(
        "--every", type=_int_at_least(1), default=1, metavar="N", help="keep every N-th frame"
    )
    p.add_argument(
        "--max-size",
        type=_int_at_least(16),
        metavar="PX",
        help="downscale: longer image side at most PX (>= 16)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT_DIR/images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    summary = extract_frames(
        args.bag,
        args.out_dir,
        image_topic=args.image_topic,
        every=args.every,
        max_size=args.max_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    span_s = (summary["last_stamp_ns"] - summary["first_stamp_ns"]) / 1e9
    bad = summary["skipped_bad_frames"]
    print(
        f"wrote {summary['num_frames']} frames of {summary['image_topic']} "
        f"({span_s:.1f} s) to {Path(summary['out_dir']) / 'images'}"
        f"{f', skipped {bad} bad frame(s)' if bad else ''}"
    )
    return 0
