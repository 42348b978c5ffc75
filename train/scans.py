"""A user's scanned body models as training bodies: load, normalise, judge, iterate over a folder.

`load_scan(path)` reads OBJ / PLY / GLB / GLTF / STL / OFF with trimesh (a scene is flattened into one
mesh, its node transforms applied) and FBX through Blender (the `bpy` module, in a child process so that
its factory reset cannot touch a scene the caller is rendering; the file is re-exported as GLB there, so
textures and colours survive). The mesh is then normalised into the metric frame of the project
(docs/ARCHITECTURE.md): metres, Z up, feet on z = 0, centred on x = y = 0:

- Up axis: the file is assumed to be Y-up (glTF, OBJ and most scanners) or Z-up (Blender, many FBX/STL
  exports); whichever of Y and Z has the larger extent is taken as up (X never is: a T-pose may be wider
  than tall, but a standing person is never deeper than tall). A Y-up file is rotated +90 degrees about X,
  which also turns a model facing +Z (the glTF convention) to face -Y, the project's front.
- Scale: a height between 0.5 and 2.5 (file units) is taken as metres and kept; anything else (a scan in
  centimetres or millimetres, or without units) is scaled to `target_height` (default 1.70 m).
  `keep_real_scale=False` always scales to `target_height`.
- Faces are flipped where needed so that neighbours agree on orientation (the winding-number inside test
  needs it); vertices are not merged or reordered.
- The visual (texture + UVs, vertex or face colours) is kept as trimesh loaded it.

`scan_problem(mesh)` says why a mesh cannot be a training body (or None), and `iter_scans(folder)` yields
the good ones, logging "skipping PATH: reason" for the others and handing (path, reason) to the caller's
`skipped` list (train.make_dataset writes those reasons into the dataset's card.json); the run goes on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import DataError

__all__ = ["SCAN_EXTENSIONS", "load_scan", "normalise_scan", "scan_problem", "iter_scans"]

log = logging.getLogger(__name__)

SCAN_EXTENSIONS = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off", ".fbx")
PLAUSIBLE_HEIGHT_M = (0.5, 2.5)

# FBX -> GLB inside a fresh Blender (factory settings, empty scene); argv: input, output.
_FBX_TO_GLB = r"""
import sys
import bpy
src, dst = sys.argv[-2], sys.argv[-1]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.fbx(filepath=src)
meshes = [o for o in bpy.data.objects if o.type == "MESH"]
if not meshes:
    sys.exit(3)
bpy.ops.export_scene.gltf(filepath=dst, export_format="GLB", export_apply=True, use_selection=False,
                          export_animations=False)
"""


def _fbx_to_trimesh(path: Path, timeout_s: float = 300.0):
    import trimesh

    with tempfile.TemporaryDirectory(prefix="monohuman-fbx-") as tmp:
        out = Path(tmp) / "scan.glb"
        script = Path(tmp) / "fbx_to_glb.py"
        script.write_text(_FBX_TO_GLB)
        try:
            proc = subprocess.run([sys.executable, str(script), str(path), str(out)], capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DataError(f"{path}: Blender took more than {timeout_s:.0f} s to import the FBX file.",
                            "Re-export it as GLB or OBJ.") from None
        if proc.returncode == 3:
            raise DataError(f"{path}: the FBX file holds no mesh.", "Export the body's mesh into it.")
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"{path}: Blender could not import the FBX file ({tail[0][:200]}).",
                            "Re-export it as GLB or OBJ.")
        return trimesh.load(str(out), force="mesh", process=False)


def normalise_scan(mesh, target_height: float = 1.70, keep_real_scale: bool = True):
    """Mesh (Y-up or Z-up, any units) -> metres, Z up, feet on z = 0, centred on x = y = 0, in place."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    extent = v.max(axis=0) - v.min(axis=0)
    T = np.eye(4)
    if extent[1] > extent[2]:  # Y-up: rotate +90 degrees about X (y -> z, z -> -y)
        T[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    height = float(max(extent[1], extent[2]))
    if height <= 0 or not np.isfinite(height):
        raise DataError("the scan has no height.", "Check that the file holds the body's mesh.")
    lo_h, hi_h = PLAUSIBLE_HEIGHT_M
    scale = 1.0 if (keep_real_scale and lo_h <= height <= hi_h) else target_height / height
    S = np.diag([scale, scale, scale, 1.0])
    M = S @ T
    up = (M[:3, :3] @ v.T).T
    lo, hi = up.min(axis=0), up.max(axis=0)
    M[:3, 3] = -np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), lo[2]])
    mesh.apply_transform(M)
    return mesh


def load_scan(path, target_height: float = 1.70, keep_real_scale: bool = True):
    """Read a scanned body (OBJ/PLY/GLB/GLTF/STL/OFF/FBX) -> normalised trimesh.Trimesh.

    Raises DataError when the file is missing, unreadable, of another type, or holds no triangles.
    """
    import trimesh

    path = Path(path)
    ext = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file.", "Check the scan folder.")
    if ext not in SCAN_EXTENSIONS:
        raise DataError(f"{path}: {ext or 'no extension'} is not a mesh format this tool reads.",
                        f"Convert it to one of {', '.join(SCAN_EXTENSIONS)}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty.", "Re-export the scan.")
    try:
        if ext == ".fbx":
            mesh = _fbx_to_trimesh(path)
        else:
            mesh = trimesh.load(str(path), force="mesh", process=False)
    except DataError:
        raise
    except Exception as exc:  # trimesh raises many types on garbage
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:200]}).",
                        "Re-export the scan as OBJ, PLY or GLB.") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise DataError(f"{path}: holds no triangle mesh (got {type(mesh).__name__}).",
                        "Export the body as a mesh, not points or curves.")
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise DataError(f"{path}: holds no triangles.", "Export the body's mesh with its faces.")
    if not np.all(np.isfinite(mesh.vertices)):
        raise DataError(f"{path}: has NaN or infinite vertex coordinates.", "Re-export the scan.")
    _make_winding_consistent(mesh)
    return normalise_scan(mesh, target_height=target_height, keep_real_scale=keep_real_scale)


def _make_winding_consistent(mesh) -> int:
    """Flip faces so that neighbours agree on orientation (winding numbers need it); returns how many.

    Judged on a copy with equal positions merged (a scan split along UV seams is still one surface); the
    faces of `mesh` itself are flipped in place, its vertices and visual untouched.
    """
    import trimesh

    merged = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=False)
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    if len(merged.faces) != len(mesh.faces) or merged.is_winding_consistent:
        return 0
    before = merged.face_normals.copy()
    try:
        trimesh.repair.fix_winding(merged)
    except Exception:  # leave the mesh as it is; scan_problem judges it
        return 0
    flipped = np.einsum("ij,ij->i", before, merged.face_normals) < 0
    if flipped.any():
        faces = np.asarray(mesh.faces).copy()
        faces[flipped] = faces[flipped][:, ::-1]
        mesh.faces = faces
    return int(flipped.sum())


def scan_problem(mesh, grid: int = 40, max_ambiguous: float = 0.10) -> str | None:
    """Why `mesh` cannot be a training body, or None when it can.

    Reports: not a mesh; empty; no faces; non-finite or out-of-range indices; degenerate (flat, zero area)
    (`_structure_problem`); and open so badly that inside is undefined (`_inside_problem`).
    """
    if mesh is None or not hasattr(mesh, "vertices") or not hasattr(mesh, "faces"):
        return f"not a triangle mesh ({type(mesh).__name__})"
    v = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    return _structure_problem(v, f) or _inside_problem(v, f, grid, max_ambiguous)


def _structure_problem(v: np.ndarray, f: np.ndarray) -> str | None:
    """Empty, no faces, bad numbers or indices, flat or of no area."""
    if len(v) == 0:
        return "empty: no vertices"
    if len(f) == 0:
        return "no faces (a point cloud?)"
    if not np.all(np.isfinite(v)):
        return "NaN or infinite vertex coordinates"
    if f.min() < 0 or f.max() >= len(v):
        return "faces index vertices that do not exist"
    extent = v.max(axis=0) - v.min(axis=0)
    size = float(extent.max())
    if size <= 0 or float(extent.min()) < 1e-3 * size:
        return f"degenerate: flat (extent {np.array2string(extent, precision=4)})"
    tri = v[f]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if len(f) < 4 or areas.sum() <= 1e-9 * size * size:
        return f"degenerate: {len(f)} faces with a total area of {areas.sum():.3g}"
    if np.mean(areas <= 1e-12 * size * size) > 0.5:
        return "degenerate: most faces have zero area"
    return None


def _inside_problem(v: np.ndarray, f: np.ndarray, grid: int, max_ambiguous: float) -> str | None:
    """Whether inside is defined. A closed (after merging equal vertices) mesh passes at once once its inside
    is neither empty nor the whole box; an open one is voxelised on a `grid`^3 box around it with exact winding
    numbers near its holes (train.voxelise, method "winding") and rejected when more than `max_ambiguous` of
    the inside voxels have a winding number between 0.25 and 0.75 (a hole so large that inside is a guess)."""
    from train.voxelise import mesh_is_closed, voxelise, winding_numbers

    extent = v.max(axis=0) - v.min(axis=0)
    pitch = float(extent.max()) / (grid - 2)  # an isotropic grid around the mesh, 1 voxel margin
    lo = v.min(axis=0) - pitch
    shape_xyz = np.ceil((extent + 2 * pitch) / pitch).astype(int) + 1
    vox = (v - lo) / pitch
    occ = voxelise(vox, f, (int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0])), method="auto")
    n_in = int(occ.sum())
    if n_in == 0:
        return "inside is empty (a surface with no volume, or open everywhere)"
    if n_in > 0.95 * occ.size:
        return "inside fills the whole bounding box (inverted or open mesh)"
    if mesh_is_closed(v, f)[0]:
        return None
    # how much of the inside is a guess: sample the inside voxels near the surface and far from it
    d, h, w = np.nonzero(occ)
    pick = np.random.default_rng(0).choice(len(d), size=min(len(d), 2000), replace=False)
    pts = np.stack([w[pick] + 0.5, h[pick] + 0.5, d[pick] + 0.5], axis=1)
    wn = np.abs(winding_numbers(pts, vox, f))
    ambiguous = float(np.mean((wn > 0.25) & (wn < 0.75)))
    if ambiguous > max_ambiguous:
        return (f"too open: inside is undefined for {100 * ambiguous:.0f} % of the body's volume "
                f"(holes too large; close them in a mesh editor)")
    return None


def iter_scans(folder, target_height: float = 1.70, keep_real_scale: bool = True, recursive: bool = True,
               skipped: list | None = None) -> Iterator[tuple[Path, object]]:
    """Yield (path, normalised mesh) for every usable scan under `folder`, sorted by path.

    Files with a mesh extension that cannot be used are logged as "skipping PATH: reason" (warning) and,
    when `skipped` is a list, appended to it as (path, reason); other files (textures, .mtl) are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of scans.", "Pass the folder that holds the scans.")
    files = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(p for p in files if p.is_file() and p.suffix.lower() in SCAN_EXTENSIONS):
        try:
            mesh = load_scan(path, target_height=target_height, keep_real_scale=keep_real_scale)
            reason = scan_problem(mesh)
        except DataError as exc:
            reason = exc.problem
            prefix = f"{path}: "
            if reason.startswith(prefix):
                reason = reason[len(prefix):]
        except Exception as exc:  # keep the dataset run going whatever a file holds
            reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            log.warning("skipping %s: %s", path, reason)
            if skipped is not None:
                skipped.append((path, reason))
            continue
        yield path, mesh


if __name__ == "__main__":  # pragma: no cover - a quick look at a folder
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad: list = []
    for p, m in iter_scans(sys.argv[1] if len(sys.argv) > 1 else os.getcwd(), skipped=bad):
        print(f"ok {p}: {len(m.vertices)} vertices, height {m.extents[2]:.3f} m")
    print(f"{len(bad)} skipped")
