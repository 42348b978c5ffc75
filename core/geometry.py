"""Small geometry shared by inference and training, each concept once (numpy; torch versions that need
gradients stay with their users, e.g. core.body_model.rotvec_to_matrix).

- Rotations: `rotvec_to_matrix` (Rodrigues), `rotation_about` (axis + degrees), `smallest_rotation` (a -> b).
- `point_segment_distance`, `vertex_normals` (area-weighted).
- Triangle rasterisation on a pixel grid (pixel (i, j) has its centre at (i + .5, j + .5)), two coverage rules
  over one enumeration of candidate pixels (`_box_pixels`):
  * `rasterise`: a z-buffer (nearest face per pixel); a centre on an edge is inside (closed test), so a
    silhouette has no cracks. The preview (core.preview) and the training renders' mask and part labels
    (train.render) use it.
  * `ray_crossings`: every crossing of the rays through the pixel centres with the mesh, each counted once
    (top-left rule on shared edges), for parity and winding fills (train.voxelise).

trimesh's vertex normals are angle-weighted (not equal to these) and it has no image rasteriser, so these
stay numpy.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Largest number of (triangle, pixel) candidate pairs handled at once; bounds memory to ~100 MB.
CANDIDATE_CHUNK = 1 << 21


# --------------------------------------------------------------------------------------------------
# Rotations


def rotvec_to_matrix(rv) -> np.ndarray:
    """Rodrigues: (3,) axis * angle (radians) -> (3, 3) rotation matrix."""
    rv = np.asarray(rv, dtype=np.float64)
    th = np.linalg.norm(rv)
    if th < 1e-12:
        return np.eye(3)
    k = rv / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * (K @ K)


def rotation_about(axis, degrees: float) -> np.ndarray:
    """Rotation by `degrees` about `axis` (right-hand rule; the axis need not be unit length)."""
    axis = np.asarray(axis, dtype=np.float64)
    return rotvec_to_matrix(axis / np.linalg.norm(axis) * np.radians(degrees))


def smallest_rotation(a, b) -> np.ndarray:
    """The smallest rotation taking direction a onto direction b (180 degrees about a perpendicular when
    they are opposite)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    c = np.cross(a, b)
    s, d = np.linalg.norm(c), float(np.dot(a, b))
    if s < 1e-9:
        if d > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        return rotvec_to_matrix(perp / np.linalg.norm(perp) * np.pi)
    return rotvec_to_matrix(c / s * np.arctan2(s, d))


# --------------------------------------------------------------------------------------------------
# Distances and normals


def point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point p (N, D) to the segment a-b (D,)."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def vertex_normals(vertices, faces) -> np.ndarray:
    """Area-weighted unit vertex normals (N, 3) (outward for counter-clockwise faces; 0 for unused vertices).

    Each vertex sums its faces' cross products in face order, corner 0 first (one bincount over the three
    corners), so the result does not depend on how the work is split."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    corners = f.T.ravel()
    n = np.stack([np.bincount(corners, weights=np.tile(fn[:, c], 3), minlength=len(v)) for c in range(3)], axis=1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------------
# Rasterisation


def _box_pixels(xy: np.ndarray, usable: np.ndarray, hw) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pixel whose centre lies in the bounding box of a usable triangle, in chunks of at most
    CANDIDATE_CHUNK (at least one triangle): yields (face index, px, py) arrays, faces in order, each box row
    by row. xy: (F, 3, 2) projected triangles; usable: (F,) bool."""
    H, W = int(hw[0]), int(hw[1])
    lo, hi = xy.min(axis=1), xy.max(axis=1)
    with np.errstate(invalid="ignore"):
        x0 = np.maximum(np.ceil(lo[:, 0] - 0.5), 0)
        x1 = np.minimum(np.floor(hi[:, 0] - 0.5), W - 1)
        y0 = np.maximum(np.ceil(lo[:, 1] - 0.5), 0)
        y1 = np.minimum(np.floor(hi[:, 1] - 0.5), H - 1)
        idx = np.nonzero(usable & (x1 >= x0) & (y1 >= y0))[0]
    x0, y0 = x0[idx].astype(np.int64), y0[idx].astype(np.int64)
    nx = x1[idx].astype(np.int64) - x0 + 1
    n = nx * (y1[idx].astype(np.int64) - y0 + 1)
    ends = np.cumsum(n)
    start = 0
    while start < len(idx):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + CANDIDATE_CHUNK, side="right")), start + 1)
        counts = n[start:stop]
        t = np.repeat(np.arange(start, stop), counts)
        offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        yield idx[t], x0[t] + offs % nx[t], y0[t] + offs // nx[t]
        start = stop


def _signed_area2(xy: np.ndarray) -> np.ndarray:
    """Twice the signed area of each projected triangle (F, 3, 2)."""
    e1 = xy[:, 1] - xy[:, 0]
    e2 = xy[:, 2] - xy[:, 0]
    return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]


def rasterise(uv: np.ndarray, depth: np.ndarray, faces: np.ndarray, hw) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer projected triangles at the pixel centres: (face_id (H, W) int64, -1 where empty; zbuf (H, W)
    float64, the nearest (smallest) interpolated depth, inf where empty). A centre on an edge counts as
    inside (closed test); equal depths go to the lower face index.

    uv: (N, 2) pixel coordinates of the vertices (x right, y down); depth: (N,); faces: (F, 3).
    """
    H, W = int(hw[0]), int(hw[1])
    faces = np.asarray(faces, dtype=np.int64)
    tri = np.asarray(uv)[faces]  # (F, 3, 2)
    z = np.asarray(depth)[faces]  # (F, 3)
    area2 = _signed_area2(tri)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(area2) & (area2 != 0)
    hits_f, hits_pix, hits_z = [], [], []
    for f, px, py in _box_pixels(tri, usable, (H, W)):
        cx, cy = px + 0.5, py + 0.5
        a, b, c = tri[f, 0], tri[f, 1], tri[f, 2]
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        w0 = (b[:, 0] - cx) * (c[:, 1] - cy) - (b[:, 1] - cy) * (c[:, 0] - cx)
        w1 = (c[:, 0] - cx) * (a[:, 1] - cy) - (c[:, 1] - cy) * (a[:, 0] - cx)
        w2 = (a[:, 0] - cx) * (b[:, 1] - cy) - (a[:, 1] - cy) * (b[:, 0] - cx)
        s = np.sign(area)
        inside = (w0 * s >= 0) & (w1 * s >= 0) & (w2 * s >= 0)
        f, w0, w1, w2, area = f[inside], w0[inside], w1[inside], w2[inside], area[inside]
        hits_f.append(f)
        hits_pix.append(py[inside] * W + px[inside])
        hits_z.append((w0 * z[f, 0] + w1 * z[f, 1] + w2 * z[f, 2]) / area)
    face_id = np.full(H * W, -1, np.int64)
    zbuf = np.full(H * W, np.inf)
    if hits_f:
        f, pix, zz = np.concatenate(hits_f), np.concatenate(hits_pix), np.concatenate(hits_z)
        order = np.lexsort((zz, pix))  # stable: equal depths keep face order
        pix, zz, f = pix[order], zz[order], f[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        zbuf[pix[first]] = zz[first]
        face_id[pix[first]] = f[first]
    return face_id.reshape(H, W), zbuf.reshape(H, W)


def barycentrics(uv: np.ndarray, faces: np.ndarray, face_id: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 barycentric coordinates of each covered pixel centre in its face (0 where empty)."""
    H, W = face_id.shape
    out = np.zeros((H * W, 3), np.float32)
    pix = np.nonzero(face_id.ravel() >= 0)[0]
    tri = np.asarray(uv, dtype=np.float64)[np.asarray(faces, dtype=np.int64)[face_id.ravel()[pix]]]
    cx, cy = pix % W + 0.5, pix // W + 0.5
    (x0, y0), (x1, y1), (x2, y2) = tri[:, 0].T, tri[:, 1].T, tri[:, 2].T
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    w0 = ((x1 - cx) * (y2 - cy) - (x2 - cx) * (y1 - cy)) / area
    w1 = ((x2 - cx) * (y0 - cy) - (x0 - cx) * (y2 - cy)) / area
    out[pix] = np.stack([w0, w1, 1.0 - w0 - w1], axis=1)
    return out.reshape(H, W, 3)


def _edge_rules(xy: np.ndarray, s: np.ndarray):
    """Per triangle and edge k (vertex k -> k+1): canonical endpoints q0 < q1 (lexicographic in x, y), the sign
    that turns the canonical edge function into the triangle's, and whether a zero counts as inside
    ("top-left" after normalising the orientation by s, the sign of the area)."""
    b = np.roll(xy, -1, axis=1)
    swap = (xy[..., 0] > b[..., 0]) | ((xy[..., 0] == b[..., 0]) & (xy[..., 1] > b[..., 1]))
    q0 = np.where(swap[..., None], b, xy)
    q1 = np.where(swap[..., None], xy, b)
    d = (b - xy) * s[:, None, None]
    tie_inside = (d[..., 1] > 0) | ((d[..., 1] == 0) & (d[..., 0] < 0))
    return q0, q1, np.where(swap, -1.0, 1.0), tie_inside


def ray_crossings(vertices: np.ndarray, faces: np.ndarray, hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crossings of the rays along +z through the pixel centres with a triangle mesh: (column = h * W + w,
    z of the crossing, facing = the sign of the triangle's projected area, int8).

    Edges and vertices hit exactly by a ray are counted once over the triangles that share them: edge
    functions are evaluated with the edge's endpoints in a canonical order (bit-identical for both triangles
    of an edge), and zeros go to the triangle for which the edge is "top-left" after normalising the
    orientation. So parity and winding counts along a ray are exact for closed meshes.
    """
    W = int(hw[1])
    tri = vertices[faces]  # (F, 3, 3)
    xy, zs = tri[:, :, :2], tri[:, :, 2]
    area2 = _signed_area2(xy)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(area2) & (area2 != 0)
        s = np.sign(area2)
        q0, q1, edge_sign, tie_inside = _edge_rules(xy, s)
    cols, zvals, facing = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int8)]
    for t, ww, hh in _box_pixels(xy, usable, hw):
        px, py = ww + 0.5, hh + 0.5
        inside = np.ones(len(t), dtype=bool)
        E = np.empty((3, len(t)))
        for k in range(3):
            qa, qb = q0[t, k], q1[t, k]
            E[k] = ((qb[:, 0] - qa[:, 0]) * (py - qa[:, 1]) - (qb[:, 1] - qa[:, 1]) * (px - qa[:, 0])) * edge_sign[t, k]
            se = E[k] * s[t]
            inside &= (se > 0) | ((se == 0) & tie_inside[t, k])
        t, E = t[inside], E[:, inside]
        # edge k (vertex k -> k+1) is opposite vertex k+2: its edge function is that vertex's weight
        z = (E[1] * zs[t, 0] + E[2] * zs[t, 1] + E[0] * zs[t, 2]) / (E[0] + E[1] + E[2])
        cols.append(hh[inside] * W + ww[inside])
        zvals.append(z)
        facing.append(s[t].astype(np.int8))
    return np.concatenate(cols), np.concatenate(zvals), np.concatenate(facing)
