"""A ROS-free, tf2-like transform buffer (tf2_ros is not on PyPI).

Frames form a tree: every child frame has exactly one parent. An edge holds `parent_from_child`
(the transform of a ROS ``TransformStamped`` with ``header.frame_id = parent``,
``child_frame_id = child``): it maps points in the child frame into the parent frame.

* static edges are valid at every time;
* dynamic edges keep a bounded history (``cache_time_s``, relative to the newest sample of that
  edge); a lookup between two samples interpolates (linear translation, quaternion slerp); a
  lookup outside the stored range raises `ExtrapolationError` (a single sample is valid only at
  its own stamp, as in tf2);
* stamp 0 means "the latest time at which the whole chain is available" (tf2's ``Time(0)``).

Stamps are integer nanoseconds. All public methods take a lock: one thread may write
(subscription callback) while another reads (worker).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from ..geometry import Pose
from .lie import interpolate_pose

NS_PER_S = 1_000_000_000


class TransformError(LookupError):
    """Base class: a transform cannot be looked up."""


class UnknownFrameError(TransformError):
    """A frame was never set in the buffer."""


class ConnectivityError(TransformError):
    """Both frames are known but lie in different trees."""


class ExtrapolationError(TransformError):
    """The requested stamp is outside the stored history of an edge of the chain."""


class StaleTransformError(TransformError):
    """The newest data on a chain is older than the allowed age."""


class TransformTreeError(ValueError):
    """An invalid write: re-parenting a frame, a cycle, a bad frame name or stamp."""


def _fmt_s(ns: int) -> str:
    return f"{ns / NS_PER_S:.9f}".rstrip("0").rstrip(".") + " s"


@dataclass
class _Edge:
    """History of parent_from_child for one child frame."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    poses: list[Pose] = field(default_factory=list)

    def insert(self, stamp_ns: int, pose: Pose, cache_ns: int) -> bool:
        if self.static:
            self.stamps, self.poses = [0], [pose]
            return True
        if self.stamps and stamp_ns < self.stamps[-1] - cache_ns:
            return False  # older than the cache window: dropped, as tf2 does
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            self.poses[i] = pose
        else:
            self.stamps.insert(i, stamp_ns)
            self.poses.insert(i, pose)
        self._prune(cache_ns)
        return True

    def _prune(self, cache_ns: int) -> None:
        first = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if first > 0:
            del self.stamps[:first], self.poses[:first]

    @property
    def oldest(self) -> int:
        return self.stamps[0]

    @property
    def newest(self) -> int:
        return self.stamps[-1]

    def at(self, stamp_ns: int, child: str) -> Pose:
        """parent_from_child at `stamp_ns` (interpolated)."""
        if self.static:
            return self.poses[0]
        if stamp_ns < self.oldest or stamp_ns > self.newest:
            raise ExtrapolationError(self._extrapolation_message(stamp_ns, child))
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if self.stamps[i] == stamp_ns:
            return self.poses[i]
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        return interpolate_pose(self.poses[i - 1], self.poses[i], (stamp_ns - t0) / (t1 - t0))

    def _extrapolation_message(self, stamp_ns: int, child: str) -> str:
        if stamp_ns > self.newest:
            where, by = "future", stamp_ns - self.newest
        else:
            where, by = "past", self.oldest - stamp_ns
        return (
            f"lookup would require extrapolation {_fmt_s(by)} into the {where}: requested time "
            f"{_fmt_s(stamp_ns)} but the transform '{self.parent}' -> '{child}' is available "
            f"from {_fmt_s(self.oldest)} to {_fmt_s(self.newest)} ({len(self.stamps)} sample(s))"
        )


class TransformBuffer:
    """A tree of frames with static and time-stamped transforms (see the module docstring).

    Args:
        cache_time_s: how long a dynamic edge keeps its samples, relative to its newest one.
    """

    def __init__(self, cache_time_s: float = 10.0) -> None:
        if not cache_time_s > 0:
            raise ValueError(f"cache_time_s must be positive, got {cache_time_s}")
        self.cache_time_s = float(cache_time_s)
        self._cache_ns = round(cache_time_s * NS_PER_S)
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.RLock()

    # ---- writing -------------------------------------------------------------------------

    def set_transform(
        self, parent: str, child: str, stamp_ns: int, parent_from_child: Pose, static: bool = False
    ) -> bool:
        """Store `parent_from_child` at `stamp_ns` (ignored for static edges).

        Returns False when a dynamic sample is older than the cache window and was dropped.
        Raises TransformTreeError when `child` already has another parent, the edge would
        close a cycle, an edge changes between static and dynamic, or names/stamp are invalid.
        """
        _check_frame(parent)
        _check_frame(child)
        if parent == child:
            raise TransformTreeError(f"a frame cannot be its own parent: '{child}'")
        if not isinstance(parent_from_child, Pose):
            raise TransformTreeError(f"expected a Pose, got {type(parent_from_child).__name__}")
        if int(stamp_ns) < 0:
            raise TransformTreeError(f"stamp must be >= 0 ns, got {stamp_ns}")
        with self._lock:
            edge = self._edge_for_write(parent, child, static)
            return edge.insert(int(stamp_ns), parent_from_child, self._cache_ns)

    def _edge_for_write(self, parent: str, child: str, static: bool) -> _Edge:
        edge = self._edges.get(child)
        if edge is None:
            if child in self._ancestors(parent):
                raise TransformTreeError(
                    f"setting '{parent}' as parent of '{child}' would create a cycle "
                    f"('{child}' is already an ancestor of '{parent}')"
                )
            edge = self._edges[child] = _Edge(parent, bool(static))
            return edge
        if edge.parent != parent:
            raise TransformTreeError(
                f"frame '{child}' already has parent '{edge.parent}'; cannot re-parent it to "
                f"'{parent}' (each frame has one parent; check the frame ids of the publishers)"
            )
        if edge.static != bool(static):
            kinds = ("static", "dynamic") if edge.static else ("dynamic", "static")
            raise TransformTreeError(
                f"transform '{parent}' -> '{child}' is {kinds[0]}; cannot set it as {kinds[1]}"
            )
        return edge

    def clear(self) -> None:
        """Forget every frame and transform."""
        with self._lock:
            self._edges.clear()

    # ---- queries -------------------------------------------------------------------------

    @property
    def frames(self) -> list[str]:
        """All known frame names, sorted."""
        with self._lock:
            return self._frames()

    def parent_of(self, frame: str) -> str | None:
        """The parent of `frame` (None for a root). Raises UnknownFrameError."""
        with self._lock:
            self._require_frame(frame)
            edge = self._edges.get(frame)
            return edge.parent if edge else None

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> Pose:
        """`target_from_source` at `stamp_ns` (0: the latest common time of the chain)."""
        with self._lock:
            up_source, up_target = self._chain(target, source)
            stamp = int(stamp_ns)
            if stamp == 0:
                stamp = self._latest(up_source + up_target)
            common_from_source = self._compose(up_source, stamp)
            common_from_target = self._compose(up_target, stamp)
            return common_from_target.inverse() * common_from_source

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        """Whether `lookup(target, source, stamp_ns)` would succeed."""
        try:
            self.lookup(target, source, stamp_ns)
        except TransformError:
            return False
        return True

    def latest_common_time(self, target: str, source: str) -> int:
        """Newest stamp (ns) at which every dynamic edge between the frames has data.

        0 when the chain is only static edges (valid at any time).
        """
        with self._lock:
            up_source, up_target = self._chain(target, source)
            return self._latest(up_source + up_target)

    def check_age(self, target: str, source: str, now_ns: int, max_age_s: float) -> float:
        """Age (s) of the chain's data relative to `now_ns`: `now - latest_common_time`.

        Raises StaleTransformError, naming the stalest edge, when the age exceeds `max_age_s`.
        A chain of static edges only has age 0.
        """
        with self._lock:
            up_source, up_target = self._chain(target, source)
            dynamic = [c for c in up_source + up_target if not self._edges[c].static]
            if not dynamic:
                return 0.0
            stalest = min(dynamic, key=lambda c: self._edges[c].newest)
            edge = self._edges[stalest]
            age_s = (int(now_ns) - edge.newest) / NS_PER_S
            if age_s > max_age_s:
                raise StaleTransformError(
                    f"transform '{target}' <- '{source}' is stale: its edge '{edge.parent}' -> "
                    f"'{stalest}' was last updated at {_fmt_s(edge.newest)}, {age_s:.3f} s "
                    f"before now ({_fmt_s(int(now_ns))}); the maximum age is {max_age_s:g} s"
                )
            return age_s

    # ---- internals (call with the lock held) ----------------------------------------------

    def _frames(self) -> list[str]:
        names = set(self._edges)
        names.update(e.parent for e in self._edges.values())
        return sorted(names)

    def _require_frame(self, frame: str) -> None:
        if frame in self._edges or any(e.parent == frame for e in self._edges.values()):
            return
        known = self._frames()
        raise UnknownFrameError(
            f"frame '{frame}' does not exist in the transform buffer; known frames: "
            + (", ".join(f"'{f}'" for f in known) if known else "none (nothing received yet)")
        )

    def _ancestors(self, frame: str) -> list[str]:
        """[frame, parent, grandparent, ..., root]."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Child frames of the edges from source and from target up to their common ancestor."""
        self._require_frame(target)
        self._require_frame(source)
        up_source, up_target = self._ancestors(source), self._ancestors(target)
        in_target = set(up_target)
        common = next((f for f in up_source if f in in_target), None)
        if common is None:
            raise ConnectivityError(
                f"frames '{target}' and '{source}' are not connected: '{source}' is in the tree "
                f"of root '{up_source[-1]}', '{target}' in the tree of root '{up_target[-1]}'"
            )
        return up_source[: up_source.index(common)], up_target[: up_target.index(common)]

    def _latest(self, children: list[str]) -> int:
        newest = [self._edges[c].newest for c in children if not self._edges[c].static]
        return min(newest) if newest else 0

    def _compose(self, children: list[str], stamp_ns: int) -> Pose:
        """ancestor_from_children[0]: product of parent_from_child up the chain."""
        pose = Pose.identity()
        for child in children:
            pose = self._edges[child].at(stamp_ns, child) * pose
        return pose


def _check_frame(frame: str) -> None:
    if not isinstance(frame, str) or not frame.strip():
        raise TransformTreeError(f"frame ids must be non-empty strings, got {frame!r}")
    if frame.startswith("/"):
        raise TransformTreeError(f"frame ids must not start with '/' (ROS 2 / tf2), got '{frame}'")
