"""Synthetic textured rooms with exact poses and depth: unlimited localization data.

A scene is a box-shaped room (floor, ceiling, four walls) with a few boxes and pillars inside for
parallax. Every surface is a textured rectangle. Images are rendered by exact per-pixel ray casting
against all rectangles (nearest hit wins, so occlusions and planes partly behind the camera are
exact) and bilinear, mip-mapped texture look-up. Depth maps come from the same ray casting, so poses,
depth and overlaps are exact by construction.

Two camera trajectories run through the room: a *mapping* loop (a robot driving around the room,
sweeping its heading) and a *query* loop offset from it in position, height and orientation, with
mild photometric changes (exposure, blur, noise), the typical robot re-localization setup.

    from supergf_ros.datasets.synthetic import SceneConfig, generate_scene
    summary = generate_scene(Path("scene"), SceneConfig(num_map=40, num_queries=20), seed=0)

writes, in the project's dataset layout::

    scene/images/NNNN.png        RGB frames (map frames first, then queries)
    scene/depth/NNNN.npy         float16 z-depth in metres per pixel (camera-frame z)
    scene/sparse_gt/{cameras,images,points3D}.txt   COLMAP text model: one PINHOLE camera, exact
                                 cam_from_world poses, 3D points sampled on the surfaces with their
                                 exact visible observations
    scene/mapping.txt, scene/queries.txt            image names, one per line
    scene/scene.json             configuration, seed and summary

Pixel convention: the centre of the top-left pixel is (0, 0) (as `supergf_ros.geometry.Camera`);
pixel (col, row) is rendered along the ray through image point (col, row).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..geometry import Camera, Pose
from ..io_utils import atomic_write_bytes, atomic_write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NEAR = 0.05  # metres: near clipping distance of the renderer
SCENE_FILE = "scene.json"


@dataclass
class SceneConfig:
    """Parameters of a synthetic scene. Lengths in metres, angles in degrees.

    Attributes:
        width, height: image size in pixels.
        focal: focal length in pixels (fx = fy); None -> 0.8 * width (about 64 deg horizontal FOV).
        room_size: (length x, width y, height z) of the room.
        num_boxes, num_pillars: obstacles placed inside the trajectory loop (pillars reach the
            ceiling); fewer are placed when they do not fit.
        num_map, num_queries: frames on the mapping and on the query trajectory.
        camera_height: height of the mapping camera above the floor.
        yaw_sweep_deg: amplitude of the heading sweep around the driving direction.
        yaw_sweeps: number of sweep periods per loop.
        pitch_deg: mean camera pitch (negative looks down).
        query_offset: lateral offset of the query loop from the mapping loop (positive: outwards).
        query_height_offset: query camera height minus mapping camera height.
        query_yaw_offset_deg: constant heading offset of the query cameras.
        query_tilt_deg: amplitude of random pitch/roll jitter of the query cameras.
        texture_ppm: texture resolution in texels per metre.
        texture_dir: folder of photos used as textures (searched recursively); None -> procedural.
        image_format: "png" (lossless) or "jpg".
        jpeg_quality: JPEG quality when image_format is "jpg".
        query_exposure: maximum relative exposure change of query frames.
        query_noise_std: standard deviation of Gaussian noise on query frames (8-bit units).
        query_blur_sigma: Gaussian blur sigma (pixels) of query frames; 0 disables.
        num_points: 3D points sampled on the surfaces for points3D.txt (those seen in >= 2 frames
            are written); 0 writes an empty points3D.txt.
    """

    width: int = 640
    height: int = 480
    focal: float | None = None
    room_size: tuple[float, float, float] = (10.0, 7.0, 3.0)
    num_boxes: int = 4
    num_pillars: int = 2
    num_map: int = 40
    num_queries: int = 20
    camera_height: float = 1.2
    yaw_sweep_deg: float = 25.0
    yaw_sweeps: int = 2
    pitch_deg: float = -5.0
    query_offset: float = 0.4
    query_height_offset: float = 0.15
    query_yaw_offset_deg: float = 10.0
    query_tilt_deg: float = 3.0
    texture_ppm: float = 200.0
    texture_dir: Path | str | None = None
    image_format: str = "png"
    jpeg_quality: int = 95
    query_exposure: float = 0.15
    query_noise_std: float = 2.0
    query_blur_sigma: float = 0.7
    num_points: int = 3000

    def __post_init__(self) -> None:
        for name, (kind, ok, message) in _FIELD_CHECKS.items():
            value = getattr(self, name)
            if kind is not None:
                value = _typed(name, value, kind)
                setattr(self, name, value)
            if ok is not None and not ok(value):
                raise ValueError(message.format(name=name, value=value))
        if not (32 <= self.width <= 8192 and 32 <= self.height <= 8192):
            raise ValueError(
                f"image size must be between 32 and 8192 px, got {self.width}x{self.height}"
            )
        self.room_size = room = _room_size(self.room_size)
        if self.num_map + self.num_queries > 9999:
            raise ValueError("at most 9999 frames (num_map + num_queries) per scene")
        if self.num_boxes + self.num_pillars > 50:
            raise ValueError("at most 50 obstacles (num_boxes + num_pillars)")
        if not (0.3 <= self.camera_height <= room[2] - 0.3):
            raise ValueError(
                f"camera_height must be within [0.3, {room[2] - 0.3:.2f}] m for a room "
                f"{room[2]} m high, got {self.camera_height}"
            )
        qz = self.camera_height + self.query_height_offset
        if not (0.3 <= qz <= room[2] - 0.3):
            raise ValueError(
                f"camera_height + query_height_offset = {qz:.2f} m must stay within "
                f"[0.3, {room[2] - 0.3:.2f}] m"
            )
        texels = self.texture_ppm**2 * 2 * (room[0] * room[1] + room[2] * (room[0] + room[1]))
        if texels > 1e8:
            raise ValueError(
                f"textures would need {texels / 1e6:.0f} Mtexels; lower texture_ppm or room_size"
            )
        if self.texture_dir is not None:
            self.texture_dir = Path(self.texture_dir)
            if not self.texture_dir.is_dir():
                raise ValueError(f"texture_dir {self.texture_dir} is not a directory")
            if not list_texture_images(self.texture_dir):
                raise ValueError(
                    f"texture_dir {self.texture_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
        self._check_loops_fit()

    def _check_loops_fit(self) -> None:
        """The loops need 0.4 m clearance from the walls (and fit around the obstacles)."""
        room = self.room_size
        a, b = _loop_axes(self)
        reach = max(0.0, self.query_offset)
        inner = min(0.0, self.query_offset)
        if (
            min(a, b) + inner < 0.5
            or room[0] / 2 - (a + reach) < 0.4
            or room[1] / 2 - (b + reach) < 0.4
        ):
            raise ValueError(
                f"query_offset {self.query_offset} m does not fit in a room of "
                f"{room[0]} x {room[1]} m (the loops need 0.4 m from the walls)"
            )

    @classmethod
    def from_dict(cls, conf: dict[str, Any] | None) -> SceneConfig:
        """Defaults merged with `conf`; unknown keys raise ValueError."""
        conf = dict(conf or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(conf) - names)
        if unknown:
            raise ValueError(f"unknown SceneConfig keys: {unknown}; valid keys: {sorted(names)}")
        return cls(**conf)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["room_size"] = list(self.room_size)
        d["texture_dir"] = None if self.texture_dir is None else str(self.texture_dir)
        return d

    def camera(self) -> Camera:
        """The PINHOLE camera of every frame (principal point at the image centre)."""
        f = float(self.focal) if self.focal is not None else 0.8 * self.width
        return Camera.pinhole(
            f, f, (self.width - 1) / 2.0, (self.height - 1) / 2.0, self.width, self.height
        )


_NUMBER = (int, float, np.number)
_AT_LEAST_0 = (lambda v: v >= 0, "{name} must be >= 0, got {value}")
_NO_CHECK = (None, "")


def _within(lo: float, hi: float, text: str):
    return (lambda v: lo <= v <= hi, "{name} must be within " + text + ", got {value}")


# SceneConfig field -> (type: int, float, "focal" or None to keep the value as is; bound check
# or None; its error message), checked in this order after the type conversion
_FIELD_CHECKS: dict[str, tuple[Any, Any, str]] = {
    "width": (int, *_NO_CHECK),
    "height": (int, *_NO_CHECK),
    "num_boxes": (int, *_AT_LEAST_0),
    "num_pillars": (int, *_AT_LEAST_0),
    "num_map": (int, lambda v: v >= 2, "{name} must be >= 2, got {value}"),
    "num_queries": (int, *_AT_LEAST_0),
    "yaw_sweeps": (int, *_AT_LEAST_0),
    "num_points": (int, *_AT_LEAST_0),
    "camera_height": (float, *_NO_CHECK),
    "yaw_sweep_deg": (float, *_within(-90.0, 90.0, "[-90.0, 90.0]")),
    "pitch_deg": (float, *_within(-45.0, 45.0, "[-45.0, 45.0]")),
    "query_offset": (float, math.isfinite, "{name} must be finite, got {value}"),
    "query_height_offset": (float, *_NO_CHECK),
    "query_yaw_offset_deg": (float, *_within(-90.0, 90.0, "[-90.0, 90.0]")),
    "query_tilt_deg": (float, *_within(-20.0, 20.0, "[-20.0, 20.0]")),
    "texture_ppm": (float, *_within(20.0, 1000.0, "[20, 1000] texels per metre")),
    "query_exposure": (
        float,
        lambda v: 0.0 <= v < 0.9,
        "{name} must be within [0, 0.9), got {value}",
    ),
    "query_noise_std": (float, *_within(0.0, 50.0, "[0, 50]")),
    "query_blur_sigma": (float, *_within(0.0, 10.0, "[0, 10]")),
    "focal": (
        "focal",
        lambda v: v is None or (math.isfinite(v) and v > 0),
        "SceneConfig.focal must be a positive number, got {value!r}",
    ),
    "image_format": (
        None,
        lambda v: v in ("png", "jpg"),
        "{name} must be 'png' or 'jpg', got {value!r}",
    ),
    "jpeg_quality": (
        None,
        lambda v: 1 <= int(v) <= 100,
        "{name} must be within [1, 100], got {value}",
    ),
}


def _typed(name: str, value: Any, kind: Any) -> Any:
    """`value` as `kind` (int, float; "focal": a number kept as is, or None)."""
    if kind == "focal":
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            raise ValueError(f"SceneConfig.focal must be a number or None, got {value!r}")
        return value
    allowed, what = ((int, np.integer), "an integer") if kind is int else (_NUMBER, "a number")
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(f"SceneConfig.{name} must be {what}, got {value!r}")
    return kind(value)


def _room_size(room_size: Any) -> tuple[float, float, float]:
    try:
        room = tuple(float(v) for v in room_size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"room_size must be 3 numbers, got {room_size!r}") from err
    if len(room) != 3 or not all(math.isfinite(v) for v in room):
        raise ValueError(f"room_size must be 3 finite numbers (x, y, z), got {room_size!r}")
    if room[0] < 3.0 or room[1] < 3.0 or room[2] < 2.0:
        raise ValueError(f"room_size must be at least (3, 3, 2) metres, got {room}")
    if max(room) > 100.0:
        raise ValueError(f"room_size must be at most 100 metres per side, got {room}")
    return room


def _loop_axes(config: SceneConfig) -> tuple[float, float]:
    """Semi-axes of the elliptic mapping loop around the room centre."""
    lx, ly, _ = config.room_size
    margin = max(0.9, 0.18 * min(lx, ly))
    return lx / 2 - margin, ly / 2 - margin


def list_texture_images(folder: Path) -> list[Path]:
    """Images under `folder` (recursively), sorted by path."""
    return sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


# ----------------------------------------------------------------------------------------------
# Geometry of the scene


@dataclass
class Plane:
    """A textured rectangle: points origin + a * u_axis + b * v_axis, 0<=a<=size[0], 0<=b<=size[1].

    Texture row index grows along v_axis, column index along u_axis.
    """

    origin: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    size: tuple[float, float]
    name: str

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.u_axis, self.v_axis)

    @property
    def area(self) -> float:
        return float(self.size[0] * self.size[1])

    def point(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, 3) world points at plane coordinates (a, b)."""
        return self.origin + np.outer(a, self.u_axis) + np.outer(b, self.v_axis)


def _quad(center, facing, up, width: float, height: float, name: str) -> Plane:
    """A rectangle centred at `center`, seen upright and unmirrored by a viewer facing it.

    `facing` is the unit normal pointing towards the viewer, `up` the upward direction on it.
    """
    facing = np.asarray(facing, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    right = np.cross(-facing, up)
    right /= np.linalg.norm(right)
    down = -up / np.linalg.norm(up)
    origin = np.asarray(center, dtype=np.float64) - right * width / 2 - down * height / 2
    return Plane(origin, right, down, (float(width), float(height)), name)


def _room_planes(room: tuple[float, float, float]) -> list[Plane]:
    lx, ly, lz = room
    c = np.array([lx / 2, ly / 2, lz / 2])
    ez = np.array([0.0, 0, 1])
    ey = np.array([0.0, 1, 0])
    return [
        _quad([lx / 2, ly / 2, 0], [0, 0, 1], ey, lx, ly, "floor"),
        _quad([lx / 2, ly / 2, lz], [0, 0, -1], ey, lx, ly, "ceiling"),
        _quad([0, c[1], c[2]], [1, 0, 0], ez, ly, lz, "wall_west"),
        _quad([lx, c[1], c[2]], [-1, 0, 0], ez, ly, lz, "wall_east"),
        _quad([c[0], 0, c[2]], [0, 1, 0], ez, lx, lz, "wall_south"),
        _quad([c[0], ly, c[2]], [0, -1, 0], ez, lx, lz, "wall_north"),
    ]


def _box_planes(center_xy, yaw: float, size_xy, height: float, lz: float, name: str) -> list:
    cx, cy = center_xy
    sx, sy = size_xy
    ex = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    ey = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    ez = np.array([0.0, 0, 1])
    mid = np.array([cx, cy, height / 2])
    planes = [
        _quad(mid + ex * sx / 2, ex, ez, sy, height, f"{name}_px"),
        _quad(mid - ex * sx / 2, -ex, ez, sy, height, f"{name}_nx"),
        _quad(mid + ey * sy / 2, ey, ez, sx, height, f"{name}_py"),
        _quad(mid - ey * sy / 2, -ey, ez, sx, height, f"{name}_ny"),
    ]
    if height < lz - 1e-6:  # a pillar's top would coincide with the ceiling
        planes.append(_quad(np.array([cx, cy, height]), ez, ex, sx, sy, f"{name}_top"))
    return planes


def _place_obstacles(config: SceneConfig, rng: np.random.Generator) -> tuple[list, int, int]:
    """Boxes and pillars inside the inner trajectory loop, not overlapping each other."""
    lx, ly, lz = config.room_size
    a, b = _loop_axes(config)
    clearance = 0.6
    ai = a - max(0.0, -config.query_offset) - clearance
    bi = b - max(0.0, -config.query_offset) - clearance
    planes: list[Plane] = []
    footprints: list[tuple[np.ndarray, float]] = []  # (centre, radius) for overlap tests
    placed = {"box": 0, "pillar": 0}
    if ai <= 0.2 or bi <= 0.2:
        return planes, 0, 0
    kinds = ["pillar"] * config.num_pillars + ["box"] * config.num_boxes
    for i, kind in enumerate(kinds):
        for _ in range(200):
            if kind == "pillar":
                side = rng.uniform(0.3, 0.5)
                size = (side, side)
                height = lz
            else:
                size = (rng.uniform(0.4, 1.1), rng.uniform(0.4, 1.1))
                height = rng.uniform(0.4, 1.6)
            yaw = rng.uniform(0, math.pi / 2)
            center = np.array([rng.uniform(-ai, ai), rng.uniform(-bi, bi)])
            radius = 0.5 * math.hypot(*size)
            # the whole footprint (its bounding circle) must lie inside the inner ellipse
            ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            ring = center + radius * np.stack([np.cos(ang), np.sin(ang)], 1)
            if np.any((ring[:, 0] / ai) ** 2 + (ring[:, 1] / bi) ** 2 > 1.0):
                continue
            if any(np.linalg.norm(center - c) < radius + r + 0.2 for c, r in footprints):
                continue
            footprints.append((center, radius))
            world_center = center + np.array([lx / 2, ly / 2])
            planes += _box_planes(world_center, yaw, size, height, lz, f"{kind}{i}")
            placed[kind] += 1
            break
    return planes, placed["box"], placed["pillar"]


# ----------------------------------------------------------------------------------------------
# Textures


def _random_color(rng: np.random.Generator, hue: float, spread: float = 0.25) -> tuple:
    """An RGB colour (0-255 floats) near `hue` (0-1) with random saturation and value."""
    h = (hue + rng.uniform(-spread, spread)) % 1.0
    s = rng.uniform(0.15, 0.95)
    v = rng.uniform(0.1, 1.0)
    hsv = np.array([[[h * 180, s * 255, v * 255]]], dtype=np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(float(x) for x in rgb)


def _value_noise(rows: int, cols: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1] with features of about `cell` texels."""
    gr = max(2, math.ceil(rows / cell) + 1)
    gc = max(2, math.ceil(cols / cell) + 1)
    grid = rng.random((gr, gc), dtype=np.float32)
    return cv2.resize(grid, (cols, rows), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def procedural_texture(
    rows: int, cols: int, ppm: float, rng: np.random.Generator, hue: float | None = None
) -> np.ndarray:
    """A (rows, cols, 3) uint8 RGB texture rich in corners and blobs, deterministic given `rng`.

    Layers: a two-colour multi-scale noise background, then shapes (discs, rings, rectangles,
    polygons, lines, checker patches, ellipses, text) of 3 to 35 cm in varied colours.
    """
    hue = rng.random() if hue is None else hue
    # background: two shades of the plane's own hue, so that planes differ at a glance
    c0 = np.array(_random_color(rng, hue, 0.05), dtype=np.float32)
    c1 = np.array(_random_color(rng, hue, 0.05), dtype=np.float32)
    noise = np.zeros((rows, cols), np.float32)
    for cell_m, weight in ((1.0, 0.5), (0.3, 0.3), (0.08, 0.2)):
        noise += weight * _value_noise(rows, cols, max(2.0, cell_m * ppm), rng)
    noise = ((noise - noise.min()) / max(1e-6, float(np.ptp(noise)))).clip(0, 1)
    tex = c0 + noise[..., None] * (c1 - c0)
    tex = np.ascontiguousarray(tex.clip(0, 255).astype(np.uint8))

    area_m2 = rows * cols / ppm**2
    num_shapes = int(30 * area_m2) + 5
    aa = cv2.LINE_AA
    letters = "ABCDEFGHKMNPRSTUVWXYZ0123456789#&%@"
    for _ in range(num_shapes):
        kind = rng.integers(0, 9)
        size = math.exp(rng.uniform(math.log(0.03), math.log(0.35))) * ppm
        x, y = rng.uniform(0, cols), rng.uniform(0, rows)
        color = _random_color(rng, hue if rng.random() < 0.6 else rng.random(), 0.2)
        thick = int(max(1, round(rng.uniform(0.005, 0.02) * ppm)))
        center = (round(x), round(y))
        if kind == 0:
            cv2.circle(tex, center, max(1, round(size / 2)), color, -1, aa)
        elif kind == 1:
            cv2.circle(tex, center, max(2, round(size / 2)), color, thick, aa)
        elif kind in (2, 3):  # rotated rectangle or random polygon
            n = 4 if kind == 2 else int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == 3 else None
            if kind == 2:
                theta = rng.uniform(0, np.pi)
                w, h = size, size * rng.uniform(0.3, 1.0)
                corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
                rot = np.array(
                    [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
                )
                pts = corners @ rot.T + [x, y]
            else:
                rad = size / 2 * rng.uniform(0.4, 1.0, n)
                pts = np.stack([x + rad * np.cos(ang), y + rad * np.sin(ang)], 1)
            cv2.fillPoly(tex, [np.round(pts).astype(np.int32)], color, aa)
        elif kind == 4:
            ang = rng.uniform(0, np.pi)
            dx, dy = math.cos(ang) * size, math.sin(ang) * size
            p0 = (round(x - dx), round(y - dy))
            p1 = (round(x + dx), round(y + dy))
            cv2.line(tex, p0, p1, color, thick, aa)
        elif kind == 5:  # checker patch
            n = int(rng.integers(2, 6))
            cell = max(2, round(size / n))
            other = _random_color(rng, rng.random(), 0.5)
            x0, y0 = round(x), round(y)
            for i in range(n):
                for j in range(n):
                    col = color if (i + j) % 2 == 0 else other
                    p0 = (x0 + i * cell, y0 + j * cell)
                    cv2.rectangle(tex, p0, (p0[0] + cell - 1, p0[1] + cell - 1), col, -1)
        elif kind == 6:
            axes = (max(1, round(size / 2)), max(1, round(size / 2 * rng.uniform(0.3, 1.0))))
            cv2.ellipse(tex, center, axes, rng.uniform(0, 180), 0, 360, color, -1, aa)
        elif kind == 7:  # a short string
            text = "".join(rng.choice(list(letters), int(rng.integers(1, 4))))
            scale = max(0.3, size / 30.0)
            cv2.putText(tex, text, center, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, aa)
        else:  # cross / plus marker
            half = max(2, round(size / 2))
            cv2.line(
                tex, (center[0] - half, center[1]), (center[0] + half, center[1]), color, thick, aa
            )
            cv2.line(
                tex, (center[0], center[1] - half), (center[0], center[1] + half), color, thick, aa
            )
    return tex


def _cover(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize and centre-crop `image` to exactly (rows, cols), keeping its aspect ratio."""
    h, w = image.shape[:2]
    scale = max(rows / h, cols / w)
    nh, nw = max(rows, round(h * scale)), max(cols, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    y0, x0 = (nh - rows) // 2, (nw - cols) // 2
    return resized[y0 : y0 + rows, x0 : x0 + cols]


def photo_texture(rows: int, cols: int, photos: list[np.ndarray], rng) -> np.ndarray:
    """A (rows, cols, 3) texture tiled from randomly chosen photos (aspect ratio kept)."""
    ref = photos[0]
    photo_aspect = ref.shape[1] / ref.shape[0]
    n = max(1, round((cols / rows) / photo_aspect))
    edges = np.linspace(0, cols, n + 1).round().astype(int)
    tiles = []
    for k in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        if rng.random() < 0.5:
            photo = photo[:, ::-1]
        tiles.append(_cover(photo, rows, int(edges[k + 1] - edges[k])))
    return np.ascontiguousarray(np.concatenate(tiles, axis=1))


def _mip_pyramid(texture: np.ndarray) -> list[np.ndarray]:
    levels = [texture]
    while min(levels[-1].shape[:2]) >= 16:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


ATLAS_PAD = 2  # texels of reflected border around each texture in an atlas
MAX_ATLAS_SIDE = 32000  # cv2.remap addresses texels with 16-bit integers


def _pack_atlas(images: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Shelf-pack images (with a reflected border) into one atlas.

    Returns the atlas and (N, 2) float32 (x, y) offsets of each image's texel (0, 0) in it
    (zeros for None entries).
    """
    pad = ATLAS_PAD
    sizes = [
        (0, 0) if im is None else (im.shape[1] + 2 * pad, im.shape[0] + 2 * pad) for im in images
    ]
    total = sum(w * h for w, h in sizes)
    width = max(max(w for w, _ in sizes), math.ceil(math.sqrt(total) * 1.1))
    positions = [(0, 0)] * len(images)
    x = y = shelf = 0
    for i in sorted(range(len(images)), key=lambda i: -sizes[i][1]):
        w, h = sizes[i]
        if w == 0:
            continue
        if x + w > width:
            x, y, shelf = 0, y + shelf, 0
        positions[i] = (x, y)
        x += w
        shelf = max(shelf, h)
    height = y + shelf
    if max(width, height) > MAX_ATLAS_SIDE:
        raise ValueError(
            f"textures do not fit in a {MAX_ATLAS_SIDE} px atlas ({width}x{height}); "
            "lower texture_ppm or room_size"
        )
    atlas = np.zeros((max(height, 1), max(width, 1), 3), np.uint8)
    offsets = np.zeros((len(images), 2), np.float32)
    for i, im in enumerate(images):
        if im is None:
            continue
        x, y = positions[i]
        padded = cv2.copyMakeBorder(im, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        atlas[y : y + padded.shape[0], x : x + padded.shape[1]] = padded
        offsets[i] = (x + pad, y + pad)
    return atlas, offsets


# ----------------------------------------------------------------------------------------------
# The scene and its renderer


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Clip a convex polygon (N, 3) in camera coordinates to z >= near (Sutherland-Hodgman)."""
    out = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        p_in, q_in = p[2] >= near, q[2] >= near
        if p_in:
            out.append(p)
        if p_in != q_in:
            t = (near - p[2]) / (q[2] - p[2])
            out.append(p + t * (q - p))
    return np.array(out).reshape(-1, 3)


def _remap_points(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) float32 of `image` at texel coordinates (x, y)."""
    n = x.shape[0]
    width = 512
    rows = -(-n // width)
    mx = np.zeros(rows * width, np.float32)
    my = np.zeros(rows * width, np.float32)
    mx[:n], my[:n] = x, y
    out = cv2.remap(
        image,
        mx.reshape(rows, width),
        my.reshape(rows, width),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return out.reshape(rows * width, -1)[:n].astype(np.float32)


class SyntheticScene:
    """Textured planes plus a renderer: `render(camera, cam_from_world) -> dict`.

    Build one with `build_scene(config, seed)`.
    """

    lod_bias = -0.5  # mip level bias: slightly sharper than the standard GPU rule

    def __init__(self, planes: list[Plane], textures: list[np.ndarray], info: dict | None = None):
        if len(planes) != len(textures) or not planes:
            raise ValueError("a scene needs one texture per plane and at least one plane")
        for k, tex in enumerate(textures):
            if (
                tex.dtype != np.uint8
                or tex.ndim != 3
                or tex.shape[2] != 3
                or min(tex.shape[:2]) < 2
            ):
                raise ValueError(
                    f"texture {k} must be an HxWx3 uint8 RGB image, got {tex.dtype} {tex.shape}"
                )
        self.planes = planes
        self.texture_shapes = [t.shape[:2] for t in textures]  # the atlases hold the texels
        pyramids = [_mip_pyramid(t) for t in textures]
        self.max_level = np.array([len(p) - 1 for p in pyramids], np.float32)
        # one atlas per mip level holding every plane's texture at that level
        self.atlases, self.atlas_offsets = [], []
        for lev in range(max(len(p) for p in pyramids)):
            atlas, offsets = _pack_atlas([p[lev] if lev < len(p) else None for p in pyramids])
            self.atlases.append(atlas)
            self.atlas_offsets.append(offsets)
        # texels per metre along u (columns) and v (rows), exact per plane
        self.ppm = [
            (t.shape[1] / p.size[0], t.shape[0] / p.size[1]) for p, t in zip(planes, textures)
        ]
        self.info = dict(info or {})

    def texture(self, k: int) -> np.ndarray:
        """The (rows, cols, 3) uint8 RGB texture of plane `k` (a view into the atlas)."""
        rows, cols = self.texture_shapes[k]
        x, y = (int(v) for v in self.atlas_offsets[0][k])
        return self.atlases[0][y : y + rows, x : x + cols]

    def render(self, camera: Camera, cam_from_world: Pose) -> dict[str, np.ndarray]:
        """Render one view.

        Returns:
            image: (H, W, 3) uint8 RGB.
            depth: (H, W) float32 camera-frame z of the visible surface in metres (inf if none).
            plane_ids: (H, W) int16 index into `self.planes` of the visible surface (-1 if none).
        """
        if camera.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
            raise ValueError(f"the renderer needs a PINHOLE camera, got {camera.model}")
        K = camera.K
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        W, H = camera.width, camera.height
        xs = (np.arange(W, dtype=np.float64) - cx) / fx
        ys = (np.arange(H, dtype=np.float64) - cy) / fy
        xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
        R, t = cam_from_world.R, cam_from_world.tvec
        eps = 1e-5  # metres: closes seams between adjacent planes against rounding
        # Pass 1: z-buffer. Per plane, ray-plane depth over the bounding box of its (near-clipped)
        # projection; a pixel takes the plane if the hit lies inside the rectangle and is nearer.
        depth = np.full((H, W), np.inf, np.float32)
        plane_ids = np.full((H, W), -1, np.int16)
        frames = []
        for k, plane in enumerate(self.planes):
            o = R @ plane.origin + t
            eu = R @ plane.u_axis
            ev = R @ plane.v_axis
            n = np.cross(eu, ev)
            frames.append((o, eu, ev, n))
            lu, lv = plane.size
            poly = _clip_near(np.array([o, o + lu * eu, o + lu * eu + lv * ev, o + lv * ev]), NEAR)
            if len(poly) < 3:
                continue
            u = poly[:, 0] / poly[:, 2] * fx + cx
            v = poly[:, 1] / poly[:, 2] * fy + cy
            x0, x1 = max(0, math.floor(u.min()) - 1), min(W, math.ceil(u.max()) + 2)
            y0, y1 = max(0, math.floor(v.min()) - 1), min(H, math.ceil(v.max()) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            dx = xs32[None, x0:x1]
            dy = ys32[y0:y1, None]
            f32 = np.float32
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                z = f32(n @ o) / ((f32(n[0]) * dx + f32(n[2])) + f32(n[1]) * dy)
                sub = depth[y0:y1, x0:x1]
                m = (z > NEAR) & (z < sub)
                a = z * ((f32(eu[0]) * dx + f32(eu[2])) + f32(eu[1]) * dy)
                a -= f32(eu @ o)
                m &= (a >= -eps) & (a <= lu + eps)
                b = z * ((f32(ev[0]) * dx + f32(ev[2])) + f32(ev[1]) * dy)
                b -= f32(ev @ o)
                m &= (b >= -eps) & (b <= lv + eps)
            np.copyto(sub, z, where=m)
            np.copyto(plane_ids[y0:y1, x0:x1], np.int16(k), where=m)

        # Pass 2: texture look-up, vectorised over all pixels: exact plane coordinates, mip level
        # from the Jacobian of the pixel -> plane mapping, trilinear filtering from the atlases.
        num = len(self.planes)
        ids = np.where(plane_ids >= 0, plane_ids, num).astype(np.intp)  # `num`: no surface
        table = np.zeros((16, num + 1), np.float64)
        for k, (o, eu, ev, n) in enumerate(frames):
            table[:, k] = (*n, n @ o, *eu, eu @ o, *ev, ev @ o, *self.ppm[k], 0, 0)
        table[14, :num] = self.max_level
        table[:, num] = table[:, 0] if num else 0  # harmless values for uncovered pixels
        table = table.astype(np.float32)

        def per_pixel(row: int) -> np.ndarray:
            return table[row][ids]

        px, py = xs32[None, :], ys32[:, None]
        n0, n1 = per_pixel(0), per_pixel(1)
        nd = n0 * px + n1 * py + per_pixel(2)
        z = per_pixel(3) / nd
        de = per_pixel(4) * px + per_pixel(5) * py + per_pixel(6)
        dv = per_pixel(8) * px + per_pixel(9) * py + per_pixel(10)
        ppm_u, ppm_v = per_pixel(12), per_pixel(13)
        tx = (z * de - per_pixel(7)) * ppm_u
        ty = (z * dv - per_pixel(11)) * ppm_v
        # d(a, b)/d(u, v) for X = z d, z = (n.o) / (n.d); squared lengths of its columns
        zu, zv = z / np.float32(fx), z / np.float32(fy)
        r0, r1 = n0 / nd, n1 / nd
        len_u = (zu * (per_pixel(4) - de * r0) * ppm_u) ** 2 + (
            zu * (per_pixel(8) - dv * r0) * ppm_v
        ) ** 2
        len_v = (zv * (per_pixel(5) - de * r1) * ppm_u) ** 2 + (
            zv * (per_pixel(9) - dv * r1) * ppm_v
        ) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            lod = 0.5 * np.log2(np.maximum(len_u, len_v)) + np.float32(self.lod_bias)
        lod = np.clip(np.nan_to_num(lod, nan=0.0), 0, per_pixel(14)).ravel()
        level0 = lod.astype(np.int8)
        frac = (lod - level0)[:, None]
        tx, ty, flat_ids = tx.ravel(), ty.ravel(), ids.ravel()
        image = np.empty((H * W, 3), np.float32)
        for lev in np.flatnonzero(np.bincount(level0, minlength=1)):
            sel = np.flatnonzero(level0 == lev)
            sid = flat_ids[sel]
            scale = np.float32(0.5**lev)
            off = self.atlas_offsets[lev]
            lo = _remap_points(
                self.atlases[lev],
                tx[sel] * scale - 0.5 + off[sid, 0],
                ty[sel] * scale - 0.5 + off[sid, 1],
            )
            if lev + 1 < len(self.atlases):
                off = self.atlas_offsets[lev + 1]
                hi = _remap_points(
                    self.atlases[lev + 1],
                    tx[sel] * (scale / 2) - 0.5 + off[sid, 0],
                    ty[sel] * (scale / 2) - 0.5 + off[sid, 1],
                )
                lo += frac[sel] * (hi - lo)
            image[sel] = lo
        image[flat_ids == num] = 0
        image = np.round(image).clip(0, 255).astype(np.uint8).reshape(H, W, 3)
        return {"image": image, "depth": depth, "plane_ids": plane_ids}

    def sample_points(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`num` points spread over the surfaces by area: (N, 3) xyz and (N, 3) uint8 RGB."""
        if num <= 0:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
        areas = np.array([p.area for p in self.planes])
        which = rng.choice(len(self.planes), size=num, p=areas / areas.sum())
        xyz = np.zeros((num, 3))
        rgb = np.zeros((num, 3), np.uint8)
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            plane = self.planes[k]
            a = rng.uniform(0.02, 0.98, sel.size) * plane.size[0]
            b = rng.uniform(0.02, 0.98, sel.size) * plane.size[1]
            xyz[sel] = plane.point(a, b)
            ppm_u, ppm_v = self.ppm[k]
            ox, oy = self.atlas_offsets[0][k]
            col = _remap_points(self.atlases[0], a * ppm_u - 0.5 + ox, b * ppm_v - 0.5 + oy)
            rgb[sel] = np.round(col).clip(0, 255).astype(np.uint8)
        return xyz, rgb


def build_scene(config: SceneConfig | dict | None = None, seed: int = 0) -> SyntheticScene:
    """The room, its obstacles and their textures, deterministic given (config, seed)."""
    config = _as_config(config)
    layout_seq, texture_seq = np.random.SeedSequence([int(seed), 1]).spawn(2)
    layout_rng = np.random.default_rng(layout_seq)
    planes = _room_planes(config.room_size)
    obstacles, num_boxes, num_pillars = _place_obstacles(config, layout_rng)
    planes += obstacles
    photos = None
    if config.texture_dir is not None:
        photos = []
        for path in list_texture_images(Path(config.texture_dir)):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"could not read texture image {path}")
            photos.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    textures = []
    plane_seqs = texture_seq.spawn(len(planes))
    hues = (np.arange(len(planes)) * 0.618034 + layout_rng.random()) % 1.0  # distinct hues
    for k, plane in enumerate(planes):
        rng = np.random.default_rng(plane_seqs[k])
        rows = max(8, math.ceil(plane.size[1] * config.texture_ppm))
        cols = max(8, math.ceil(plane.size[0] * config.texture_ppm))
        if photos:
            textures.append(photo_texture(rows, cols, photos, rng))
        else:
            textures.append(procedural_texture(rows, cols, config.texture_ppm, rng, hues[k]))
    info = {"num_boxes": num_boxes, "num_pillars": num_pillars, "num_planes": len(planes)}
    return SyntheticScene(planes, textures, info)


# ----------------------------------------------------------------------------------------------
# Trajectories


def _look(position: np.ndarray, yaw: float, pitch: float, roll: float) -> Pose:
    """cam_from_world of a camera at `position` (world z up) with heading `yaw` (from +x towards
    +y), `pitch` (positive looks up) and `roll` about the optical axis, all in radians."""
    forward = np.array(
        [math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)]
    )
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(forward, right)
    world_from_cam = np.stack([right, down, forward], axis=1)
    cr, sr = math.cos(roll), math.sin(roll)
    roll_mat = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    R = (world_from_cam @ roll_mat).T
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ position
    return Pose.from_matrix(M)


def make_trajectories(config: SceneConfig | dict | None = None, seed: int = 0) -> dict:
    """Mapping and query camera poses (cam_from_world), deterministic given (config, seed).

    Returns:
        mapping: list of `num_map` Poses along an elliptic loop around the room centre, heading
            along the loop with a sinusoidal sweep of +-yaw_sweep_deg (`yaw_sweeps` periods per loop).
        queries: list of `num_queries` Poses on a loop offset by query_offset (outwards),
            query_height_offset higher, at positions between the map frames, with a shifted sweep,
            a constant yaw offset and random pitch/roll jitter.
    """
    config = _as_config(config)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    lx, ly, _ = config.room_size
    a, b = _loop_axes(config)
    center = np.array([lx / 2, ly / 2])
    sweep = math.radians(config.yaw_sweep_deg)
    pitch0 = math.radians(config.pitch_deg)

    def loop(s, axes, height, phase, yaw_offset, pitch_jitter, roll_jitter):
        poses = []
        for k, sk in enumerate(s):
            theta = 2 * math.pi * sk
            pos = np.array(
                [
                    center[0] + axes[0] * math.cos(theta),
                    center[1] + axes[1] * math.sin(theta),
                    height,
                ]
            )
            heading = math.atan2(axes[1] * math.cos(theta), -axes[0] * math.sin(theta))
            yaw = (
                heading
                + sweep * math.sin(2 * math.pi * config.yaw_sweeps * sk + phase)
                + yaw_offset
            )
            pitch = pitch0 + math.radians(3.0) * math.sin(2 * math.pi * 2 * sk) + pitch_jitter[k]
            poses.append(_look(pos, yaw, pitch, roll_jitter[k]))
        return poses

    n_map = config.num_map
    s_map = np.arange(n_map) / n_map
    zeros = np.zeros(n_map)
    mapping = loop(s_map, (a, b), config.camera_height, 0.0, 0.0, zeros, zeros)
    n_q = config.num_queries
    s_q = (np.arange(n_q) + 0.5 + rng.uniform(-0.25, 0.25, n_q)) / max(n_q, 1)
    tilt = math.radians(config.query_tilt_deg)
    queries = loop(
        s_q,
        (a + config.query_offset, b + config.query_offset),
        config.camera_height + config.query_height_offset,
        0.6,
        math.radians(config.query_yaw_offset_deg),
        rng.uniform(-tilt, tilt, n_q),
        rng.uniform(-tilt, tilt, n_q),
    )
    return {"mapping": mapping, "queries": queries}


def degrade_query(image: np.ndarray, config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Mild photometric changes of a query frame: exposure/gamma, blur, Gaussian noise."""
    out = image.astype(np.float32)
    if config.query_exposure > 0:
        gain = 1.0 + rng.uniform(-config.query_exposure, config.query_exposure)
        gamma = 1.0 + rng.uniform(-0.5, 0.5) * config.query_exposure
        out = 255.0 * (out / 255.0) ** gamma * gain
    if config.query_blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), config.query_blur_sigma)
    if config.query_noise_std > 0:
        out = out + rng.normal(0.0, config.query_noise_std, out.shape).astype(np.float32)
    return np.round(out).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Writing the dataset


def _as_config(config: SceneConfig | dict | None) -> SceneConfig:
    if config is None:
        return SceneConfig()
    if isinstance(config, SceneConfig):
        return config
    if isinstance(config, dict):
        return SceneConfig.from_dict(config)
    raise ValueError(f"config must be a SceneConfig, a dict or None, got {type(config).__name__}")


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir`; an existing non-empty one must be a previously generated scene, whose
    generated files are removed so that no stale frames survive."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / SCENE_FILE).is_file():
            raise ValueError(
                f"output directory {out_dir} is not empty and holds no generated scene "
                f"({SCENE_FILE}); choose an empty or new directory"
            )
        for sub, patterns in (("images", ("*.png", "*.jpg")), ("depth", ("*.npy",))):
            for pattern in patterns:
                for p in (out_dir / sub).glob(pattern):
                    p.unlink()
    for sub in ("images", "depth", "sparse_gt"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def _observations(xyz, camera: Camera, pose: Pose, depth: np.ndarray) -> tuple:
    """Indices and pixel coordinates of the points visible in a view (z-buffer test)."""
    if len(xyz) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2))
    p = pose.transform(xyz)
    z = p[:, 2]
    K = camera.K
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[:, :2] / z[:, None] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    inside = (
        (z > NEAR)
        & (uv[:, 0] >= -0.5)
        & (uv[:, 0] < camera.width - 0.5)
        & (uv[:, 1] >= -0.5)
        & (uv[:, 1] < camera.height - 0.5)
    )
    idx = np.flatnonzero(inside)
    col = np.clip(np.round(uv[idx, 0]).astype(int), 0, camera.width - 1)
    row = np.clip(np.round(uv[idx, 1]).astype(int), 0, camera.height - 1)
    visible = np.abs(depth[row, col] - z[idx]) <= 0.02 * z[idx] + 0.005
    idx = idx[visible]
    return idx, uv[idx]


def _colmap_text(camera: Camera, names, poses, observations, xyz, rgb) -> tuple[str, str, str]:
    """cameras.txt, images.txt and points3D.txt of the scene (image ids 1..N, camera id 1)."""
    cams = (
        "# Camera list with one line of data per camera:\n"
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        f"# Number of cameras: 1\n1 {camera.model} {camera.width} {camera.height} "
        + " ".join(f"{p:.10g}" for p in camera.params)
        + "\n"
    )
    tracks: dict[int, list[tuple[int, int]]] = {}
    for image_id, (idx, _) in enumerate(observations, start=1):
        for j, point in enumerate(idx):
            tracks.setdefault(int(point), []).append((image_id, j))
    keep = {p for p, track in tracks.items() if len(track) >= 2}
    point_ids = {p: i + 1 for i, p in enumerate(sorted(keep))}
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(names)}",
    ]
    for image_id, (name, pose, (idx, uv)) in enumerate(zip(names, poses, observations), start=1):
        q, t = pose.qvec, pose.tvec
        lines.append(
            f"{image_id} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g} {q[3]:.12g} "
            f"{t[0]:.12g} {t[1]:.12g} {t[2]:.12g} 1 {name}"
        )
        pts = [f"{x:.4f} {y:.4f} {point_ids.get(int(p), -1)}" for p, (x, y) in zip(idx, uv)]
        lines.append(" ".join(pts))
    images = "\n".join(lines) + "\n"
    plines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(point_ids)}",
    ]
    for p, pid in point_ids.items():
        x, y, z = xyz[p]
        r, g, b = (int(c) for c in rgb[p])
        track = " ".join(f"{i} {j}" for i, j in tracks[p])
        plines.append(f"{pid} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0 {track}")
    return cams, images, "\n".join(plines) + "\n"


def generate_scene(
    out_dir: Path | str,
    config: SceneConfig | dict | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Render a synthetic scene and write it as a dataset in the project layout.

    Args:
        out_dir: output folder (created; an existing one must be empty or a previous scene).
        config: SceneConfig, a dict of SceneConfig fields merged with the defaults, or None.
        seed: everything (layout, textures, trajectories, noise) is deterministic given the seed.
        progress: show a tqdm progress bar.

    Returns:
        Summary dict: out_dir, seed, num_map, num_queries, num_images, num_points3D, num_planes,
        num_boxes, num_pillars, camera (Camera.to_dict()), room_size, image_format, textures
        ("procedural" or the photo folder), depth_range (min, max metres), time_s.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    config = _as_config(config)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)

    scene = build_scene(config, seed)
    camera = config.camera()
    trajectories = make_trajectories(config, seed)
    poses = trajectories["mapping"] + trajectories["queries"]
    n_map = config.num_map
    ext = config.image_format
    names = [f"{i:04d}.{ext}" for i in range(len(poses))]
    noise_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
    point_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4]))
    xyz, rgb = scene.sample_points(config.num_points, point_rng)
    if ext == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    else:
        params = [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)]

    observations = []
    depth_min, depth_max = np.inf, 0.0
    for i, (name, pose) in enumerate(
        tqdm(list(zip(names, poses)), desc="render scene", unit="frame", disable=not progress)
    ):
        view = scene.render(camera, pose)
        depth = view["depth"]
        if not np.isfinite(depth).all():
            raise RuntimeError(f"frame {name}: rays escaped the room (renderer bug)")
        image = view["image"]
        if i >= n_map:
            image = degrade_query(image, config, noise_rng)
        ok, buf = cv2.imencode(f".{ext}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"could not encode {name}")
        atomic_write_bytes(out_dir / "images" / name, buf.tobytes())
        atomic_write_bytes(
            out_dir / "depth" / (Path(name).stem + ".npy"), _npy_bytes(depth.astype(np.float16))
        )
        observations.append(_observations(xyz, camera, pose, depth))
        depth_min = min(depth_min, float(depth.min()))
        depth_max = max(depth_max, float(depth.max()))

    cams, images, points = _colmap_text(camera, names, poses, observations, xyz, rgb)
    atomic_write_text(out_dir / "sparse_gt" / "cameras.txt", cams)
    atomic_write_text(out_dir / "sparse_gt" / "images.txt", images)
    atomic_write_text(out_dir / "sparse_gt" / "points3D.txt", points)
    atomic_write_text(out_dir / "mapping.txt", "".join(n + "\n" for n in names[:n_map]))
    atomic_write_text(out_dir / "queries.txt", "".join(n + "\n" for n in names[n_map:]))

    summary = {
        "out_dir": str(out_dir),
        "seed": int(seed),
        "num_map": n_map,
        "num_queries": config.num_queries,
        "num_images": len(names),
        "num_points3D": points.count("\n") - 3,
        "num_planes": scene.info["num_planes"],
        "num_boxes": scene.info["num_boxes"],
        "num_pillars": scene.info["num_pillars"],
        "camera": camera.to_dict(),
        "room_size": list(config.room_size),
        "image_format": ext,
        "textures": "procedural" if config.texture_dir is None else str(config.texture_dir),
        "depth_range": [round(depth_min, 4), round(depth_max, 4)],
        "time_s": round(time.perf_counter() - start, 3),
    }
    meta = {"config": config.to_dict(), "seed": int(seed), "summary": summary}
    atomic_write_text(out_dir / SCENE_FILE, json.dumps(meta, indent=2) + "\n")
    return summary
