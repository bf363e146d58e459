"""Small rotation helpers on top of `geometry.Pose`: SO(3) exp/log, quaternion slerp, pose
interpolation.

Rotation vectors are axis * angle (radians). Quaternions are w-first, as in `geometry`.
"""

from __future__ import annotations

import numpy as np

from ..geometry import Pose, qvec_to_rotmat, rotmat_to_qvec


def skew(v: np.ndarray) -> np.ndarray:
    """3x3 cross-product matrix: skew(a) @ b == cross(a, b)."""
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def quat_to_rotvec(qvec: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, angle in [0, pi]) of a w-first quaternion."""
    q = np.asarray(qvec, dtype=np.float64).reshape(4)
    q = q / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    s = float(np.linalg.norm(q[1:]))
    if s < 1e-12:
        return 2.0 * q[1:]  # first order; exact limit is zero
    angle = 2.0 * np.arctan2(s, q[0])
    return q[1:] / s * angle


def rotvec_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """w-first unit quaternion of a rotation vector."""
    w = np.asarray(rotvec, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        q = np.array([1.0, *(0.5 * w)])
        return q / np.linalg.norm(q)
    return np.array([np.cos(angle / 2), *(np.sin(angle / 2) * w / angle)])


def so3_exp(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector."""
    return qvec_to_rotmat(rotvec_to_quat(rotvec))


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix (robust near 0 and pi)."""
    return quat_to_rotvec(rotmat_to_qvec(R))


def rotation_angle(R: np.ndarray) -> float:
    """Rotation angle in radians, in [0, pi]."""
    return float(np.linalg.norm(so3_log(R)))


def quat_slerp(q0: np.ndarray, q1: np.ndarray, ratio: float) -> np.ndarray:
    """Spherical linear interpolation of w-first quaternions along the shortest arc.

    ratio 0 gives q0, 1 gives q1 (up to sign).
    """
    a = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    b = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(a @ b)
    if dot < 0.0:  # q and -q are the same rotation: take the short way
        b, dot = -b, -dot
    if dot > 1.0 - 1e-12:
        q = a + ratio * (b - a)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    q = (np.sin((1.0 - ratio) * theta) * a + np.sin(ratio * theta) * b) / np.sin(theta)
    return q / np.linalg.norm(q)


def interpolate_pose(pose0: Pose, pose1: Pose, ratio: float) -> Pose:
    """Linear interpolation of the translation, slerp of the rotation (as tf2 does)."""
    t = (1.0 - ratio) * pose0.tvec + ratio * pose1.tvec
    return Pose(quat_slerp(pose0.qvec, pose1.qvec, ratio), t)
