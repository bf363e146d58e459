"""Test helpers for real rclpy in isolation (own context, own ROS domain, loopback-only discovery).

`with IsolatedRos() as ros: ...` gives a node spun on a background thread; child processes started
with `ros.env` join the same domain.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supergf_ros.ros.replay import FASTDDS_LOOPBACK_PROFILE, isolated_ros_env


class IsolatedRos:
    """A node in its own rclpy context and ROS domain; `env` for child processes."""

    def __init__(self, domain_id: int | None = None, name: str = "supergf_test") -> None:
        self.domain_id = (
            domain_id if domain_id is not None else random.SystemRandom().randint(1, 101)
        )
        self._tmp = tempfile.TemporaryDirectory(prefix="supergf_ros_")
        profile = Path(self._tmp.name) / "fastdds_loopback.xml"
        profile.write_text(FASTDDS_LOOPBACK_PROFILE)
        self.env = {**os.environ, **isolated_ros_env(self.domain_id, profile)}
        self.name = name

    def __enter__(self) -> IsolatedRos:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        # discovery settings are read from this process's environment when the context starts
        for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE"):
            os.environ[key] = self.env[key]
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=self.domain_id)
        self.node = rclpy.create_node(self.name, context=self.context)
        self.subscriptions: dict[str, Any] = {}  # by topic, from `collect`
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)
        self._tmp.cleanup()

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> list:
        """Subscribe and return the (thread-safely appended) list of received messages."""
        received: list = []
        self.subscriptions[topic] = self.node.create_subscription(
            msg_type, topic, received.append, qos
        )
        return received


def wait_until(predicate: Callable[[], bool], timeout_s: float, period_s: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout_s` passed; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period_s)
    return bool(predicate())


def synthetic_sift_map(cache_dir: Path, *, num_map: int = 16, num_queries: int = 6) -> dict:
    """A small synthetic scene (320x240) and its SIFT map, built once and cached in `cache_dir`.

    Returns {"scene": Path, "map": Path, "queries": [names]}.
    """
    from supergf_ros.datasets import read_image_list
    from supergf_ros.datasets.synthetic import SceneConfig, generate_scene
    from supergf_ros.mapping.build_map import build_map

    root = Path(cache_dir) / f"ros_synthetic_{num_map}_{num_queries}"
    scene, map_path, done = root / "scene", root / "map_sift.h5", root / "done"
    if not done.is_file():
        root.mkdir(parents=True, exist_ok=True)
        config = SceneConfig(width=320, height=240, num_map=num_map, num_queries=num_queries)
        generate_scene(scene, config, seed=0)
        build_map(
            scene,
            map_path,
            image_names=read_image_list(scene / "mapping.txt"),
            features="sift",
            progress=False,
        )
        done.write_text("ok\n")
    return {"scene": scene, "map": map_path, "queries": read_image_list(scene / "queries.txt")}
