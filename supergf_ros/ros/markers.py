"""RViz markers of a map: keyframe frusta (LINE_LIST) and 3D points (POINTS)."""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from ..mapping.map_format import MapData


def map_markers(
    map_data: MapData, frame: str, frustum_scale: float = 0.0, max_points: int = 50000
) -> MarkerArray:
    """Markers of `map_data` in `frame`; `frustum_scale` 0: 5% of the keyframes' extent."""
    centers = np.array([p.center for p in map_data.cam_from_world]).reshape(-1, 3)
    scale = float(frustum_scale)
    if scale <= 0:
        extent = float(np.linalg.norm(np.ptp(centers, axis=0))) if len(centers) > 1 else 1.0
        scale = max(0.05, 0.05 * extent)
    return MarkerArray(
        markers=[
            _frusta(map_data, frame, scale),
            _points(map_data.points3D, frame, scale, max_points),
        ]
    )


def _marker(frame: str, ns: str, kind: int, color: ColorRGBA) -> Marker:
    marker = Marker()
    marker.header.frame_id = frame
    marker.ns, marker.id, marker.type = ns, 0, kind
    marker.action = Marker.ADD
    marker.pose.orientation.w = 1.0
    marker.color = color
    return marker


def _frusta(map_data: MapData, frame: str, scale: float) -> Marker:
    frusta = _marker(frame, "keyframes", Marker.LINE_LIST, ColorRGBA(r=0.1, g=0.6, b=1.0, a=1.0))
    frusta.scale.x = scale * 0.03
    for cam, pose in zip(map_data.cameras, map_data.cam_from_world):
        w, h = cam.width - 0.5, cam.height - 0.5
        corners = np.array([[-0.5, -0.5], [w, -0.5], [w, h], [-0.5, h]])
        rays = (np.linalg.inv(cam.K) @ np.c_[corners, np.ones(4)].T).T * scale
        world = pose.inverse().transform(rays)
        apex = pose.center
        for i in range(4):
            frusta.points += [_point(apex), _point(world[i])]
            frusta.points += [_point(world[i]), _point(world[(i + 1) % 4])]
    return frusta


def _points(points3D: np.ndarray, frame: str, scale: float, max_points: int) -> Marker:
    points = _marker(frame, "points3D", Marker.POINTS, ColorRGBA(r=0.9, g=0.9, b=0.9, a=0.8))
    points.scale.x = points.scale.y = scale * 0.05
    xyz = np.asarray(points3D, dtype=np.float64).reshape(-1, 3)
    if len(xyz) > max_points:  # a fixed subset, the same at every start
        xyz = xyz[np.random.default_rng(0).choice(len(xyz), max_points, replace=False)]
    points.points = [_point(p) for p in xyz]
    return points


def _point(xyz: np.ndarray) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))
