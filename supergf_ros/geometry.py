"""Small geometry types shared by every stage: camera intrinsics and rigid poses.

Convention (as COLMAP and hloc): a `Pose` named `cam_from_world` maps world points into the
camera frame, x_cam = R @ x_world + t. Quaternions are stored w-first (qw, qx, qy, qz).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# COLMAP camera models and their parameter counts (the ones this project reads and writes).
CAMERA_MODEL_NUM_PARAMS = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
    "FULL_OPENCV": 12,
}


@dataclass(frozen=True)
class Camera:
    """Intrinsics in COLMAP form (pixel-centre convention: the top-left pixel centre is (0, 0))."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODEL_NUM_PARAMS:
            raise ValueError(
                f"unsupported camera model '{self.model}'; supported: "
                f"{sorted(CAMERA_MODEL_NUM_PARAMS)}"
            )
        expected = CAMERA_MODEL_NUM_PARAMS[self.model]
        if len(self.params) != expected:
            raise ValueError(
                f"camera model {self.model} takes {expected} params, got {len(self.params)}"
            )
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not np.all(np.isfinite(self.params)):
            raise ValueError(f"camera params must be finite, got {self.params}")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> Camera:
        return cls("PINHOLE", int(width), int(height), (fx, fy, cx, cy))

    @property
    def K(self) -> np.ndarray:
        """3x3 calibration matrix (distortion ignored)."""
        p = self.params
        if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            f, cx, cy = p[0], p[1], p[2]
            fx = fy = f
        else:
            fx, fy, cx, cy = p[0], p[1], p[2], p[3]
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, scale_x: float, scale_y: float | None = None) -> Camera:
        """The same camera for an image resized by (scale_x, scale_y) (pixel-centre aware)."""
        sy = scale_x if scale_y is None else scale_y
        p = list(self.params)
        if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            if abs(scale_x - sy) > 1e-9:
                raise ValueError(f"{self.model} needs isotropic scaling")
            p[0] *= scale_x
            p[1] = (p[1] + 0.5) * scale_x - 0.5
            p[2] = (p[2] + 0.5) * sy - 0.5
        else:
            p[0] *= scale_x
            p[1] *= sy
            p[2] = (p[2] + 0.5) * scale_x - 0.5
            p[3] = (p[3] + 0.5) * sy - 0.5
        w = round(self.width * scale_x)
        h = round(self.height * sy)
        return Camera(self.model, w, h, tuple(p))

    def to_pycolmap(self):
        import pycolmap

        return pycolmap.Camera(
            model=self.model, width=self.width, height=self.height, params=list(self.params)
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "params": list(self.params),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Camera:
        return cls(str(d["model"]), int(d["width"]), int(d["height"]), tuple(d["params"]))


def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) from a w-first unit quaternion (4,); (N, 3, 3) from (N, 4)."""
    q = np.asarray(qvec, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.array(rows) if q.ndim == 1 else np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """w-first unit quaternion (w >= 0) from a rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    K = (
        np.array(
            [
                [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
                [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
                [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
                [
                    R[2, 1] - R[1, 2],
                    R[0, 2] - R[2, 0],
                    R[1, 0] - R[0, 1],
                    R[0, 0] + R[1, 1] + R[2, 2],
                ],
            ]
        )
        / 3.0
    )
    eigvals, eigvecs = np.linalg.eigh(K)
    q = eigvecs[[3, 0, 1, 2], np.argmax(eigvals)]
    return q if q[0] >= 0 else -q


@dataclass(frozen=True)
class Pose:
    """A rigid transform `b_from_a`: x_b = R @ x_a + t. Quaternion w-first."""

    qvec: np.ndarray
    tvec: np.ndarray

    def __post_init__(self) -> None:
        q = np.asarray(self.qvec, dtype=np.float64).reshape(4)
        t = np.asarray(self.tvec, dtype=np.float64).reshape(3)
        norm = np.linalg.norm(q)
        if not np.isfinite(q).all() or not np.isfinite(t).all() or norm < 1e-12:
            raise ValueError(f"invalid pose: q={q}, t={t}")
        object.__setattr__(self, "qvec", q / norm)
        object.__setattr__(self, "tvec", t)

    @classmethod
    def identity(cls) -> Pose:
        return cls(np.array([1.0, 0, 0, 0]), np.zeros(3))

    @classmethod
    def from_matrix(cls, M: np.ndarray) -> Pose:
        """From a 3x4 or 4x4 matrix [R | t]."""
        M = np.asarray(M, dtype=np.float64)
        return cls(rotmat_to_qvec(M[:3, :3]), M[:3, 3])

    @classmethod
    def from_pycolmap(cls, rigid) -> Pose:
        """From a pycolmap.Rigid3d (its quaternion is x-y-z-w)."""
        return cls.from_matrix(np.asarray(rigid.matrix()))

    @property
    def R(self) -> np.ndarray:
        return qvec_to_rotmat(self.qvec)

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        M = np.eye(4)
        M[:3, :3] = self.R
        M[:3, 3] = self.tvec
        return M

    def inverse(self) -> Pose:
        R = self.R
        return Pose(rotmat_to_qvec(R.T), -R.T @ self.tvec)

    def __mul__(self, other: Pose) -> Pose:
        """Composition: (c_from_b * b_from_a) = c_from_a."""
        return Pose.from_matrix(self.matrix @ other.matrix)

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Apply to (N, 3) points."""
        return np.asarray(points, dtype=np.float64) @ self.R.T + self.tvec

    @property
    def center(self) -> np.ndarray:
        """For a cam_from_world pose: the camera centre in world coordinates."""
        return -self.R.T @ self.tvec

    def to_pycolmap(self):
        import pycolmap

        return pycolmap.Rigid3d(self.matrix[:3, :4])


def pose_error(cam_from_world_est: Pose, cam_from_world_gt: Pose) -> tuple[float, float]:
    """(position error of the camera centre in world units, rotation error in degrees)."""
    dt = float(np.linalg.norm(cam_from_world_est.center - cam_from_world_gt.center))
    R_rel = cam_from_world_est.R @ cam_from_world_gt.R.T
    cos = np.clip((np.trace(R_rel) - 1.0) / 2.0, -1.0, 1.0)
    return dt, float(np.degrees(np.arccos(cos)))


def world_from_cam_covariance(cam_from_world: Pose, covariance: np.ndarray) -> np.ndarray:
    """6x6 pose covariance from pycolmap's `cam_from_world` parameterization to the map frame's.

    Input (pycolmap `estimate_and_refine_absolute_pose`): order (rotation, translation); the
    rotation block is Ceres' quaternion-manifold tangent, `q' = [cos|d|, sin|d| d/|d|] * q` (a
    rotation of 2|d| about camera axes); the translation block perturbs `t` additively.
    Output (as `geometry_msgs/PoseWithCovariance`): order (x, y, z, rot_x, rot_y, rot_z) of the
    camera in the map: position = camera centre, rotation = a small rotation vector about the map
    axes (R_wc' = Exp(theta) R_wc). With R, t = cam_from_world and w = 2d: c = -R^T t, so to first
    order dc = -R^T [t]x w - R^T dt and theta = -R^T w.
    """
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (6, 6) or not np.isfinite(cov).all():
        raise ValueError(f"covariance must be a finite 6x6 matrix, got shape {cov.shape}")
    R = cam_from_world.R
    t = cam_from_world.tvec
    t_cross = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    J = np.zeros((6, 6))
    J[:3, :3] = -2.0 * R.T @ t_cross
    J[:3, 3:] = -R.T
    J[3:, :3] = -2.0 * R.T
    out = J @ cov @ J.T
    return 0.5 * (out + out.T)
