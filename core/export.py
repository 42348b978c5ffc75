"""Mesh -> OBJ / PLY / GLB file (format chosen by the path's suffix).

* Every file is written atomically: into a temporary file beside the target, then ``os.replace``; a
  crash never leaves a half-written mesh under the final name.
* Vertex normals are written in all three formats.
* A mesh with UVs and a texture image (``trimesh.visual.TextureVisuals`` whose material holds a PIL
  image) keeps them: OBJ writes ``NAME.mtl`` and ``NAME.png`` beside ``NAME.obj``; GLB embeds the image.
  PLY carries geometry, normals and vertex colours only.
* Axes: OBJ and PLY are written as given (our metric frame: Z up, the person facing -Y; Blender's OBJ/PLY
  importers are told "Z up, -Y forward", or re-orient on import as their defaults do). glTF is Y up by
  specification, and Blender's glTF importer converts Y-up back to Z-up with ``(x, y, z)_blender =
  (x, -z, y)_gltf``.  So GLB export applies the standard Z-up -> Y-up rotation (-90 degrees about X):
  ``(x, y, z) -> (x, z, -y)``, matrix :data:`ZUP_TO_YUP`.  The person then faces +Z in glTF (the glTF
  "front"), and lands in Blender Z up, facing -Y, exactly as in the metric frame.  Undo it with
  :data:`YUP_TO_ZUP` after loading a GLB with trimesh (which does not convert axes).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from core.errors import MonohumanError

SUFFIXES = (".obj", ".ply", ".glb")

# Z-up (ours, Blender) -> Y-up (glTF): rotation of -90 degrees about X, (x, y, z) -> (x, z, -y).
ZUP_TO_YUP = np.array(
    [[1.0, 0.0, 0.0, 0.0],
     [0.0, 0.0, 1.0, 0.0],
     [0.0, -1.0, 0.0, 0.0],
     [0.0, 0.0, 0.0, 1.0]]
)
YUP_TO_ZUP = ZUP_TO_YUP.T.copy()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that it is either complete or absent (temporary file + rename), never half-written."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _has_texture(mesh: trimesh.Trimesh) -> bool:
    vis = mesh.visual
    return (
        getattr(vis, "kind", None) == "texture"
        and getattr(vis, "uv", None) is not None
        and len(vis.uv) == len(mesh.vertices)
    )


def _texture_image(mesh: trimesh.Trimesh):
    mat = getattr(mesh.visual, "material", None)
    if mat is None:
        return None
    img = getattr(mat, "image", None)
    if img is None:
        img = getattr(mat, "baseColorTexture", None)
    return img


def _obj_bytes(mesh: trimesh.Trimesh, stem: str) -> tuple[str, dict[str, bytes]]:
    """OBJ text plus side files {name: bytes} (MTL + PNG) named after ``stem``."""
    mesh = mesh.copy()
    _ = mesh.vertex_normals
    if _has_texture(mesh):
        img = _texture_image(mesh)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "material"
        mat = trimesh.visual.material.SimpleMaterial(
            image=img.copy() if img is not None else None,  # .copy(): no source format -> PNG
            name=name,
        )
        mesh.visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=mat)
        text, files = trimesh.exchange.obj.export_obj(
            mesh, include_normals=True, include_texture=True, return_texture=True,
            mtl_name=f"{name}.mtl",
        )
        return text, files
    text = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_texture=False)
    return text, {}


def save_mesh(mesh: trimesh.Trimesh, path) -> Path:
    """Write ``mesh`` to ``path`` (.obj, .ply or .glb, by suffix); returns the path written.

    OBJ/PLY keep the mesh's axes; GLB is rotated Z-up -> Y-up (see the module doc).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise MonohumanError(
            f"Cannot save a mesh as '{path.name}': unknown file type '{path.suffix or '(none)'}'.",
            "Use a path ending in .obj, .ply or .glb.",
        )
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MonohumanError(
            f"Cannot save '{path.name}': there is no mesh to save.",
            "Check the reconstruction step that produced it.",
        )
    if path.is_dir():
        raise MonohumanError(f"Cannot save the mesh: '{path}' is a folder.", "Give a file name.")

    if suffix == ".obj":
        text, files = _obj_bytes(mesh, path.stem)
        for name, data in files.items():  # side files first: the OBJ only appears once they exist
            write_atomic(path.parent / name, data)
        write_atomic(path, text)
    elif suffix == ".ply":
        m = mesh.copy()
        _ = m.vertex_normals
        data = trimesh.exchange.ply.export_ply(m, encoding="binary", vertex_normal=True)
        write_atomic(path, data)
    else:  # .glb
        m = mesh.copy()
        m.apply_transform(ZUP_TO_YUP)
        _ = m.vertex_normals
        scene = trimesh.Scene()
        scene.add_geometry(m, node_name="monohuman_body", geom_name="monohuman_body")
        data = trimesh.exchange.gltf.export_glb(scene, include_normals=True)
        write_atomic(path, data)
    return path
