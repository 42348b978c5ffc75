"""Volume frame <-> metric frame.

The contract (docs/ARCHITECTURE.md, "Frames and conventions"):

* **Volume frame** ("vox"): continuous coordinates ``(x, y, z)`` in output pixels of the crop, x right,
  y down, z away from the camera; voxel ``(d, h, w)`` has its centre at ``(w + .5, h + .5, d + .5)``.
* **Metric frame**: metres, Z up, the person faces -Y, feet on Z = 0, centred on X = Y = 0.
  ``X = +x``, ``Y = +z``, ``Z = -y``, then scaled so that the body height equals the subject height.

The axis change is a proper rotation (determinant +1), so triangle winding and outward normals survive it.

The transform is computed from the extent of the points it is given: height = extent along y, X and Y
centred on the centre of the bounding box in x and z, the lowest point (largest y) on Z = 0.  Ground-truth
vertices and predicted meshes go through the same function, so evaluation compares like with like.

Typical use::

    T = metric_transform(mesh_vox.vertices, subject_height=1.70)
    verts_m = apply_transform(mesh_vox.vertices, T)
    joints_m = apply_transform(joints_vox, T)          # same T for anything in the same volume
    back = apply_transform(verts_m, np.linalg.inv(T))  # metric -> volume frame
"""

from __future__ import annotations

import numpy as np

from core.errors import MonohumanError

DEFAULT_SUBJECT_HEIGHT = 1.70

# Rotation part of vox -> metric: rows give X, Y, Z in terms of x, y, z.
#   X = +x, Y = +z, Z = -y          (det = +1: a proper rotation)
VOX_TO_METRIC_AXES = np.array(
    [[1.0, 0.0, 0.0],
     [0.0, 0.0, 1.0],
     [0.0, -1.0, 0.0]]
)


def _as_points(points) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    return pts


def metric_transform(points_vox, subject_height: float = DEFAULT_SUBJECT_HEIGHT) -> np.ndarray:
    """4x4 matrix taking volume-frame points to the metric frame.

    Computed from the extent of ``points_vox`` (N, 3): the y extent becomes ``subject_height`` metres,
    the largest y (the feet) lands on Z = 0, the bounding-box centre in x and z lands on X = Y = 0.
    Apply it to anything else in the same volume (joints, other meshes) with :func:`apply_transform`.
    """
    if not np.isfinite(subject_height) or subject_height <= 0:
        raise MonohumanError(
            f"The subject height must be a positive number of metres, got {subject_height!r}.",
            "Give the person's height in metres, e.g. 1.70.",
        )
    pts = _as_points(points_vox)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise MonohumanError(
            "Cannot place the body in metres: there are no (finite) points.",
            "Check that the reconstruction produced a mesh.",
        )
    lo = pts.min(axis=0)
    hi = pts.max(axis=0)
    height_vox = hi[1] - lo[1]
    if height_vox <= 0:
        raise MonohumanError(
            "Cannot scale the body to the subject height: it has no vertical extent.",
            "Check the reconstructed volume; it is flat or a single point.",
        )
    s = float(subject_height) / height_vox
    cx = 0.5 * (lo[0] + hi[0])
    cz = 0.5 * (lo[2] + hi[2])
    feet_y = hi[1]

    T = np.eye(4)
    T[:3, :3] = s * VOX_TO_METRIC_AXES
    # X = s (x - cx), Y = s (z - cz), Z = -s (y - feet_y)
    T[:3, 3] = -T[:3, :3] @ np.array([cx, feet_y, cz])
    return T


def apply_transform(points, T) -> np.ndarray:
    """Apply a 4x4 homogeneous (affine) transform to points of shape (..., 3); returns float64."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1] != 3:
        raise ValueError(f"points must have a last dimension of 3, got {pts.shape}")
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T must be 4x4, got {T.shape}")
    return pts @ T[:3, :3].T + T[:3, 3]
