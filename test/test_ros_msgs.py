"""The generated supergf_ros_msgs/LocalizationStatus: build freshness, CDR round trip, pub/sub."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from ros_testing import IsolatedRos, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _status():
    from supergf_ros_msgs.msg import LocalizationStatus

    st = LocalizationStatus()
    st.header.stamp.sec, st.header.stamp.nanosec = 1_700_000_000, 123
    st.header.frame_id = "map"
    st.success = False
    st.failure_reason = "too few inliers (7 < 12)"
    st.num_inliers, st.num_matches = 7, 130
    st.retrieved_keyframes = ["0002.jpg", "0004.jpg"]
    st.extract_ms, st.total_ms, st.queue_ms = 101.5, 240.25, 3.0
    st.frames_received, st.frames_dropped = 2**40, 3
    return st


def test_installed_definition_matches_the_repository():
    installed = Path(sys.prefix) / "share" / "supergf_ros_msgs" / "msg" / "LocalizationStatus.msg"
    source = REPO / "supergf_ros_msgs" / "msg" / "LocalizationStatus.msg"
    assert installed.is_file(), "supergf_ros_msgs is not built: run `make venv`"
    assert installed.read_text() == source.read_text(), "stale message build: run `make venv`"


def test_cdr_roundtrip_keeps_every_field():
    st = _status()
    raw = serialize_message(st)
    back = deserialize_message(raw, type(st))
    assert back == st
    assert back.retrieved_keyframes == ["0002.jpg", "0004.jpg"]
    assert back.frames_received == 2**40
    assert type(st).__module__.startswith("supergf_ros_msgs.msg")


def test_pub_sub_in_an_isolated_domain():
    from supergf_ros_msgs.msg import LocalizationStatus

    with IsolatedRos() as ros:
        got = ros.collect(LocalizationStatus, "/supergf_test/status")
        pub = ros.node.create_publisher(LocalizationStatus, "/supergf_test/status", 10)
        assert wait_until(lambda: pub.get_subscription_count() > 0, 10.0)
        st = _status()
        for _ in range(50):  # until received (the first may race discovery)
            pub.publish(st)
            if wait_until(lambda: bool(got), 0.2):
                break
        assert got and got[0] == st
