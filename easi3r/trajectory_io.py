"""TUM trajectory files: one camera-to-world pose per line, ``t x y z qx qy qz qw``.

The aligner reads known poses in this format, the trajectory exporter writes it, and the evaluation reads
the ground truth and the reference's own ``pred_traj.txt`` (whose quaternion is w-first, ``quat_order="wxyz"``).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial.transform import Rotation

from easi3r.errors import Easi3RError

__all__ = ["QuatOrder", "read_tum", "write_tum"]

QuatOrder = Literal["xyzw", "wxyz"]


def read_tum(
    path: str | os.PathLike[str], quat_order: QuatOrder = "xyzw"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Read a trajectory file with one pose per line, ``t x y z qx qy qz qw`` (TUM order).

    Returns ``(timestamps (T,), c2w (T, 4, 4))``; quaternions are normalised; ``#`` lines are comments.
    The reference's own ``pred_traj.txt`` writes the quaternion w-first (``t x y z qw qx qy qz``): read it
    with ``quat_order="wxyz"``, or its rotations come out wrong without any error.
    """
    try:
        data = np.loadtxt(path, comments="#", ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise Easi3RError(f"{os.fspath(path)}: cannot read trajectory ({exc})") from exc
    if data.shape[0] == 0 or data.shape[1] != 8:
        raise Easi3RError(f"{os.fspath(path)}: expected 8 columns 't x y z q q q q', got shape {data.shape}")
    _check_quat_order(quat_order)
    quat = data[:, 4:8]
    if quat_order == "wxyz":
        quat = np.roll(quat, -1, axis=1)
    c2w = np.tile(np.eye(4), (data.shape[0], 1, 1))
    c2w[:, :3, :3] = Rotation.from_quat(quat).as_matrix()
    c2w[:, :3, 3] = data[:, 1:4]
    return data[:, 0].copy(), c2w


def write_tum(
    path: str | os.PathLike[str], timestamps: ArrayLike, c2w: ArrayLike, quat_order: QuatOrder = "xyzw"
) -> None:
    """Write ``(T,)`` timestamps and ``(T, 4, 4)`` camera-to-world poses as ``t x y z qx qy qz qw`` lines.

    Numbers are written with 17 significant digits so that :func:`read_tum` gives the poses back to
    machine precision. ``quat_order="wxyz"`` writes the reference's w-first layout instead.
    """
    _check_quat_order(quat_order)
    poses = np.asarray(c2w, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be (T, 4, 4) poses, got shape {poses.shape}")
    times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if times.shape[0] != poses.shape[0]:
        raise ValueError(f"{times.shape[0]} timestamps for {poses.shape[0]} poses")
    quat = Rotation.from_matrix(poses[:, :3, :3]).as_quat()
    names = "qx qy qz qw"
    if quat_order == "wxyz":
        quat = np.roll(quat, 1, axis=1)
        names = "qw qx qy qz"
    rows = np.concatenate([times[:, None], poses[:, :3, 3], quat], axis=1)
    np.savetxt(path, rows, fmt="%.17g", header=f"timestamp tx ty tz {names}")


def _check_quat_order(quat_order: str) -> None:
    if quat_order not in ("xyzw", "wxyz"):
        raise ValueError(f"quat_order must be 'xyzw' or 'wxyz', got {quat_order!r}")
