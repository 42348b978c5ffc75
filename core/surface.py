"""Occupancy volume -> clean surface mesh.

Pipeline of :func:`extract_surface` (every stage timed into ``mesh.metadata["surface_timings"]``):

1. **pad** the (D, H, W) volume by one empty voxel on every side, so the surface closes where the body
   touches the border of the volume (the mesh is watertight whenever the thresholded volume is finite);
2. **marching cubes** (``skimage.measure.marching_cubes``, Lewiner: the fastest of the implementations
   measured in ``bench/bench_surface.py`` that gives the same surface). Its vertices come in array-index
   order ``(d, h, w)`` of the padded array; the volume frame is ``(x, y, z) = (w, h, d) + .5 - 1``
   (voxel centre ``+.5``, padding ``-1``), see ``core/frame.py``;
3. **largest connected component** (floating blobs and inner cavities go);
4. **decimation** to ``face_budget`` (optional, see below);
5. **Taubin smoothing** (lambda 0.5, mu -0.53, uniform umbrella Laplacian): removes the voxel staircase
   without the shrinkage of plain Laplacian smoothing;
6. **outward winding** (positive signed volume) and vertex normals.

Decimation (``decimation=``):

* ``"resample"`` (default, no extra dependency): the volume is resampled trilinearly on a coarser grid
  whose step is chosen so that the largest component has at most ``face_budget`` faces, and marching cubes
  runs again.  The result stays watertight and evenly triangulated; detail finer than the step is lost.
* ``"quadric"``: ``trimesh``'s quadric decimation (needs the ``fast_simplification`` package, which is
  not in requirements.txt): keeps more detail for a given budget, does not guarantee a watertight result.

The result is in the volume frame; :func:`surface_to_metric` places it in the metric frame.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
import trimesh
from skimage import measure

from core import frame
from core.errors import MonohumanError
from core.geometry import vertex_normals

TAUBIN_LAMBDA = 0.5
TAUBIN_MU = -0.53
DEFAULT_SMOOTH_ITERATIONS = 10


def _empty_volume_error(level, vmax) -> MonohumanError:
    return MonohumanError(
        f"The network predicted an empty volume: no voxel reaches the surface level {level:g} "
        f"(highest value {vmax:.3g}).",
        "Check that the photo shows one whole person, that the crop found them, and that the model "
        "matches the input (try another model or photo).",
    )


def _marching_cubes(padded: np.ndarray, level: float, step: float = 1.0):
    """Marching cubes on a padded volume; returns (vertices, faces), vertices as (x, y, z) = (w, h, d)
    index coordinates of ``padded`` (the caller maps them to the volume frame).

    When ``step`` > 1 the padded volume is first resampled at index positions ``k * step`` (then padded
    once more so the border stays closed): resampled-and-padded index ``j`` sits at ``(j - 1) * step``.
    """
    if step == 1.0:
        vol = padded
        spacing = (1.0, 1.0, 1.0)
        offset = 0.0
    else:
        shape = np.floor((np.array(padded.shape) - 1) / step).astype(int) + 1
        grids = np.meshgrid(*[np.arange(n) * step for n in shape], indexing="ij", sparse=True)
        coords = np.broadcast_arrays(*grids)
        vol = scipy.ndimage.map_coordinates(padded, coords, order=1, mode="constant", cval=0.0)
        vol = np.pad(vol, 1, mode="constant", constant_values=0.0)
        spacing = (step, step, step)
        offset = -step
    verts, faces, _, _ = measure.marching_cubes(
        vol, level=level, spacing=spacing, method="lewiner", allow_degenerate=False
    )
    # (d, h, w) -> (x, y, z); swapping axes 0 and 2 is a reflection, so flip the winding to keep
    # skimage's outward orientation (normals towards decreasing occupancy).
    verts = verts[:, ::-1] + offset
    faces = faces[:, ::-1]
    return verts, np.ascontiguousarray(faces)


def _largest_component(verts: np.ndarray, faces: np.ndarray):
    """Keep the connected component (via shared vertices) with the most faces; reindex vertices."""
    n = len(verts)
    if len(faces) == 0:
        return verts, faces
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = scipy.sparse.coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    ncomp, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    if ncomp == 1:
        return verts, faces
    face_labels = labels[faces[:, 0]]
    biggest = np.argmax(np.bincount(face_labels, minlength=ncomp))
    keep_faces = faces[face_labels == biggest]
    used = np.zeros(n, dtype=bool)
    used[keep_faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return verts[used], remap[keep_faces]


def umbrella_operator(faces: np.ndarray, n_vertices: int) -> scipy.sparse.csr_matrix:
    """Uniform-weight averaging operator W (rows sum to 1): (W v)_i = mean of v over i's neighbours."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    A = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices)).tocsr()
    A.data[:] = 1.0  # each undirected edge appears in two faces; keep weight 1
    deg = np.asarray(A.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    return scipy.sparse.diags(1.0 / deg) @ A


def taubin_smooth(verts: np.ndarray, faces: np.ndarray, iterations: int = DEFAULT_SMOOTH_ITERATIONS,
                  lamb: float = TAUBIN_LAMBDA, mu: float = TAUBIN_MU) -> np.ndarray:
    """Taubin lambda|mu smoothing; ``iterations`` counts lambda+mu pairs. Returns new vertices."""
    if iterations <= 0:
        return verts
    W = umbrella_operator(faces, len(verts))
    v = np.array(verts, dtype=np.float64)
    for _ in range(int(iterations)):
        v += lamb * (W @ v - v)
        v += mu * (W @ v - v)
    return v


def signed_volume(verts, faces) -> float:
    """Enclosed volume of a closed triangle mesh; positive when the winding is outward."""
    v = np.asarray(verts, dtype=np.float64)[np.asarray(faces)]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def _quadric_decimate(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    try:
        import fast_simplification  # noqa: F401
    except ImportError as exc:
        raise MonohumanError(
            "Quadric decimation needs the 'fast_simplification' package, which is not installed.",
            "Use decimation='resample' (the default) or install fast_simplification.",
        ) from exc
    return mesh.simplify_quadric_decimation(face_count=int(face_budget))


def extract_surface(
    volume,
    level: float = 0.5,
    smooth_iterations: int = DEFAULT_SMOOTH_ITERATIONS,
    face_budget: int | None = None,
    keep_largest: bool = True,
    decimation: str = "resample",
) -> trimesh.Trimesh:
    """Occupancy volume (D, H, W) -> watertight triangle mesh in the volume frame.

    volume: probabilities in [0, 1] (float) or bool occupancy, numpy or torch; "inside" is ``>= level``.
    smooth_iterations: Taubin lambda|mu pairs (0 = raw marching cubes).
    face_budget: at most this many faces (None = no limit).
    keep_largest: keep only the largest connected surface.
    decimation: "resample" (default) or "quadric" (needs fast_simplification), see the module doc.

    Raises MonohumanError when nothing in the volume reaches ``level``.
    ``mesh.metadata["surface_timings"]`` holds the seconds spent per stage.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    vol = _checked_volume(volume, face_budget, decimation)
    vmax = float(vol.max()) if vol.size else float("-inf")
    if not vmax >= level:
        raise _empty_volume_error(level, vmax)
    run = _MarchingCubes(vol, level, keep_largest, timings)
    timings["crop_pad"] = time.perf_counter() - t0
    verts, faces = run(1.0)
    if len(faces) == 0:
        raise _empty_volume_error(level, vmax)
    step = 1.0
    timings["decimation"] = 0.0
    if face_budget is not None and len(faces) > face_budget and decimation == "resample":
        t = time.perf_counter()
        inner0 = timings["marching_cubes"] + timings["components"]
        verts, faces, step = _resample_within(run, len(faces), face_budget)
        inner = timings["marching_cubes"] + timings["components"] - inner0
        timings["decimation"] = time.perf_counter() - t - inner  # the re-runs count as their stages

    t = time.perf_counter()
    verts = taubin_smooth(verts, faces, smooth_iterations)
    timings["smoothing"] = time.perf_counter() - t

    t = time.perf_counter()
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    if face_budget is not None and decimation == "quadric" and len(mesh.faces) > face_budget:
        mesh = _quadric_decimate(mesh, face_budget)
        if keep_largest:
            v, f = _largest_component(np.asarray(mesh.vertices), np.asarray(mesh.faces))
            mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
        timings["decimation"] += time.perf_counter() - t
        t = time.perf_counter()
    # outward winding: marching cubes gives it already; guard against a surface seen inside-out
    if signed_volume(mesh.vertices, mesh.faces) < 0:
        mesh.invert()
    mesh.vertex_normals = vertex_normals(mesh.vertices, mesh.faces)  # cached: exporters write them
    timings["normals"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    mesh.metadata.update(surface_timings=timings, surface_step=step, frame="volume")
    return mesh


def _checked_volume(volume, face_budget, decimation) -> np.ndarray:
    """The volume as float32 numpy (a torch tensor on any device too), non-finite values set to 0; the
    options checked (ValueError)."""
    if hasattr(volume, "detach"):
        volume = volume.detach().float().cpu().numpy()
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D (D, H, W), got shape {vol.shape}")
    if decimation not in ("resample", "quadric"):
        raise ValueError(f"decimation must be 'resample' or 'quadric', got {decimation!r}")
    if face_budget is not None and face_budget < 4:
        raise ValueError(f"face_budget must be at least 4, got {face_budget}")
    vol = vol.astype(np.float32, copy=False)
    finite = np.isfinite(vol)
    return vol if finite.all() else np.where(finite, vol, 0.0).astype(np.float32)


class _MarchingCubes:
    """Marching cubes at a given step on the volume cropped to the bounding box of its inside voxels (cubes
    with no inside corner make no triangles) and padded with a value below the level (so the surface closes
    at the borders of the volume); vertices in the volume frame, the largest component kept when asked.
    Adds its seconds to timings["marching_cubes"] and timings["components"]."""

    def __init__(self, vol: np.ndarray, level: float, keep_largest: bool, timings: dict):
        inside = vol >= level
        lo = np.array([np.argmax(inside.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)])
        hi = np.array([vol.shape[k] - np.argmax(inside.any(axis=tuple(a for a in range(3) if a != k))[::-1])
                       for k in range(3)])
        low = 0.0 if level > 0 else float(level) - 1.0
        self.padded = np.pad(vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1, mode="constant", constant_values=low)
        # padded index i along an axis is voxel lo + i - 1, whose centre is at lo + i - 0.5
        self.origin = lo[::-1].astype(np.float64) - 0.5
        self.level, self.keep_largest, self.timings = level, keep_largest, timings

    def __call__(self, step: float):
        t = time.perf_counter()
        v, f = _marching_cubes(self.padded, self.level, step)
        v += self.origin
        self.timings["marching_cubes"] = self.timings.get("marching_cubes", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        if self.keep_largest:
            v, f = _largest_component(v, f)
        self.timings["components"] = self.timings.get("components", 0.0) + time.perf_counter() - t
        return v, f


def _resample_within(run: _MarchingCubes, n_full: int, face_budget: int):
    """Marching cubes at a coarser step until the surface has at most face_budget faces: (verts, faces, step).
    Faces scale like 1 / step^2; aim slightly under, grow the step until within budget."""
    step = float(np.sqrt(n_full / face_budget)) * 1.02
    for _ in range(30):
        verts, faces = run(step)
        if 0 < len(faces) <= face_budget:
            return verts, faces, step
        step *= 1.05 if len(faces) else 0.9
    raise MonohumanError(f"Could not bring the surface under {face_budget} faces.", "Use a larger face budget.")


def surface_to_metric(mesh_vox: trimesh.Trimesh,
                      subject_height: float = frame.DEFAULT_SUBJECT_HEIGHT) -> tuple[trimesh.Trimesh, np.ndarray]:
    """Volume-frame mesh -> (metric-frame mesh, 4x4 transform used).

    The transform comes from :func:`core.frame.metric_transform` on the mesh's own vertices: the mesh's
    y extent becomes ``subject_height`` metres, its feet sit on Z = 0, it faces -Y.  Apply the returned
    transform (``core.frame.apply_transform``) to joints or landmarks of the same volume.
    The axis change is a rotation, so winding and normals stay outward; visuals (UVs, colours) are kept.
    """
    T = frame.metric_transform(mesh_vox.vertices, subject_height)
    out = mesh_vox.copy()
    out.apply_transform(T)  # uniform scale + rotation: trimesh keeps normals consistent
    _ = out.vertex_normals
    out.metadata = dict(mesh_vox.metadata)
    out.metadata["frame"] = "metric"
    out.metadata["subject_height"] = float(subject_height)
    out.metadata["vox_to_metric"] = T.tolist()
    return out, T
