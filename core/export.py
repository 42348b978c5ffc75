"""Mesh -> OBJ / PLY / GLB file (format chosen by the path's suffix).

* Every file is written atomically: into a temporary file beside the target, then ``os.replace``; a
  crash never leaves a half-written mesh under the final name. Several files (an OBJ and its side files,
  a mesh and its preview) are written all or nothing (:func:`write_files`); modes follow the umask.
* Vertex normals are written in all three formats.
* A mesh with UVs and a texture image (``trimesh.visual.TextureVisuals`` whose material holds a PIL
  image) keeps them: OBJ writes ``NAME.obj.mtl`` and ``NAME.obj.png`` beside ``NAME.obj`` (named from the
  whole output name, :func:`side_name`, so they never replace a photo ``NAME.png``); GLB embeds the image.
  PLY carries geometry, normals and vertex colours only.
* Axes: OBJ and PLY are written as given (our metric frame: Z up, the person facing -Y; Blender's OBJ/PLY
  importers are told "Z up, -Y forward", or re-orient on import as their defaults do). glTF is Y up by
  specification, and Blender's glTF importer converts Y-up back to Z-up with ``(x, y, z)_blender =
  (x, -z, y)_gltf``.  So GLB export applies the standard Z-up -> Y-up rotation (-90 degrees about X):
  ``(x, y, z) -> (x, z, -y)``, matrix :data:`ZUP_TO_YUP`.  The person then faces +Z in glTF (the glTF
  "front"), and lands in Blender Z up, facing -Y, exactly as in the metric frame.  Undo it with
  :data:`YUP_TO_ZUP` after loading a GLB with trimesh (which does not convert axes).
* Skin (GLB only; OBJ/PLY ignore it): ``save_mesh(mesh, "x.glb", skin=rig)`` with a :class:`core.rig.Rig` in
  the mesh's frame adds one node per bone (named after it, children under their parent) whose local frame
  is the bone's frame (``Rig.axes``: x, y = head -> tail, z) at its head, turned Y-up like the mesh, so
  Blender's glTF importer (bone tips on the node's +Y) rebuilds the bones with their direction and roll;
  a glTF skin whose bind pose is the rig's rest pose (``inverseBindMatrices`` = the inverse of each bone's
  world matrix); a rig with a ``pose`` (the fitted body) puts the nodes where the pose moves the bones, so
  the mesh (given in its rest pose) shows posed in any glTF viewer and Blender keeps the rest pose as the
  armature's rest; and per vertex the 4 largest skin weights (``JOINTS_0`` / ``WEIGHTS_0``, renormalised to
  sum to 1), the most every glTF reader supports.  Anny's weights have up to 9 influences: dropping the
  rest moves a vertex by up to ~1.5 cm when an arm is raised 60 degrees.  glTF stores no bone lengths;
  importers guess them (Blender: the distance to the nearest child bone).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import trimesh

from core.errors import MonohumanError
from core.files import write_files

SUFFIXES = (".obj", ".ply", ".glb")

# Z-up (ours, Blender) -> Y-up (glTF): rotation of -90 degrees about X, (x, y, z) -> (x, z, -y).
ZUP_TO_YUP = np.array(
    [[1.0, 0.0, 0.0, 0.0],
     [0.0, 0.0, 1.0, 0.0],
     [0.0, -1.0, 0.0, 0.0],
     [0.0, 0.0, 0.0, 1.0]]
)
YUP_TO_ZUP = ZUP_TO_YUP.T.copy()


def side_name(path: Path) -> str:
    """The base name of an OBJ's side files (``.mtl``, ``.png``): the whole output name, so ``body.obj``'s
    texture is ``body.obj.png`` and never the photo ``body.png``. Letters and digits of any script are kept;
    every other character but ``.-_`` becomes ``%XX`` (its UTF-8 bytes, ``%`` itself included), which keeps
    distinct names distinct and the OBJ/MTL lines free of spaces."""
    return "".join(c if c.isalnum() or c in "._-" else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
                   for c in Path(path).name)


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
    """OBJ text plus side files {name: bytes} (MTL + PNG) named ``stem.mtl``, ``stem.png`` (see side_name)."""
    mesh = mesh.copy()
    _ = mesh.vertex_normals
    if _has_texture(mesh):
        img = _texture_image(mesh)
        name = stem
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


def save_mesh(mesh: trimesh.Trimesh, path, *, skin=None, inputs=()) -> Path:
    """Write ``mesh`` to ``path`` (.obj, .ply or .glb, by suffix); returns the path written.

    OBJ/PLY keep the mesh's axes; GLB is rotated Z-up -> Y-up (see the module doc).  ``skin``: a
    :class:`core.rig.Rig` for ``mesh`` (same vertices, same frame), written as a glTF skin in a GLB; OBJ and
    PLY cannot carry one and ignore it (the caller warns). ``inputs``: files (the photo) that no output,
    side files included, may replace: an OutputError instead. All files are written or none.
    """
    from core.validate import outputs_apart

    files = mesh_files(mesh, path, skin=skin)
    outputs_apart(files, inputs)
    write_files(files)
    return Path(path)


def mesh_files(mesh: trimesh.Trimesh, path, *, skin=None) -> dict[Path, bytes]:
    """The bytes of every file ``save_mesh`` writes for ``path``: {path: bytes}, OBJ side files included."""
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
    if skin is not None and suffix == ".glb":
        _check_skin(skin, len(mesh.vertices))

    if suffix == ".obj":
        text, files = _obj_bytes(mesh, side_name(path))
        return {**{path.parent / name: data for name, data in files.items()}, path: text.encode("utf-8")}
    m = mesh.copy()
    if suffix == ".ply":
        _ = m.vertex_normals
        return {path: trimesh.exchange.ply.export_ply(m, encoding="binary", vertex_normal=True)}
    m.apply_transform(ZUP_TO_YUP)  # .glb
    _ = m.vertex_normals
    scene = trimesh.Scene()
    scene.add_geometry(m, node_name="monohuman_body", geom_name="monohuman_body")
    data = trimesh.exchange.gltf.export_glb(scene, include_normals=True)
    return {path: _add_skin(data, skin) if skin is not None else data}


# glTF constants
_FLOAT, _USHORT, _ARRAY_BUFFER = 5126, 5123, 34962
_INFLUENCES = 4  # JOINTS_0 / WEIGHTS_0 hold 4 bones per vertex, what every glTF reader supports


def _skin_error(problem: str) -> MonohumanError:
    return MonohumanError(f"Cannot save the armature: {problem}.",
                          "Build the rig for this mesh (core.rig) and pass it unchanged.")


def _layout_error(problem: str) -> MonohumanError:
    return MonohumanError(f"Cannot add the armature to the GLB written by trimesh: {problem}.",
                          f"Report this together with the trimesh version ({trimesh.__version__}).")


def _check_skin(rig, vertex_count: int) -> None:
    """Refuse a rig that does not fit the mesh, before anything is written."""
    n = len(rig.names)
    index, weight = np.asarray(rig.skin_index), np.asarray(rig.skin_weight, dtype=np.float64)
    parents = np.asarray(rig.parents)
    if index.ndim != 2 or index.shape != weight.shape:
        raise _skin_error(f"its skin indices {index.shape} and weights {weight.shape} differ in shape")
    if len(index) != vertex_count:
        raise _skin_error(f"its skin weights are for {len(index)} vertices, the mesh has {vertex_count}")
    if not (0 < n < 65536) or parents.shape != (n,) or np.shape(rig.heads) != (n, 3) \
            or np.shape(rig.axes) != (n, 3, 3):
        raise _skin_error(f"its bone arrays do not match its {n} bone names")
    if not all(-1 <= p < b for b, p in enumerate(parents)) or (parents == -1).sum() != 1:
        raise _skin_error("it needs exactly one root bone (parent -1), each parent listed before its children")
    if index.size and (index.min() < 0 or index.max() >= n):
        raise _skin_error(f"its skin weights name bone numbers outside 0..{n - 1}")
    if not np.isfinite(weight).all() or (weight < 0).any() or (np.abs(weight.sum(1) - 1) > 1e-3).any():
        raise _skin_error("its skin weights must be finite, not negative, and sum to 1 on each vertex")


def _bone_worlds(rig, posed: bool = False) -> np.ndarray:
    """(J, 4, 4) bind-pose world matrix of each bone in the glTF frame: its axes (made exactly orthonormal)
    at its head, turned Z-up -> Y-up. posed=True: moved by the rig's pose, when it has one."""
    u, _, vt = np.linalg.svd(np.asarray(rig.axes, dtype=np.float64))
    worlds = np.tile(np.eye(4), (len(rig.names), 1, 1))
    worlds[:, :3, :3] = u @ vt  # axes are rotations already; this only removes rounding
    worlds[:, :3, 3] = rig.heads
    if posed and getattr(rig, "pose", None) is not None:
        worlds = np.asarray(rig.pose, dtype=np.float64) @ worlds
    return ZUP_TO_YUP @ worlds


def _influences(rig) -> tuple[np.ndarray, np.ndarray]:
    """The 4 largest weights per vertex (padded with weight 0 on bone 0), renormalised to sum to 1."""
    weight = np.asarray(rig.skin_weight, dtype=np.float64)
    index = np.asarray(rig.skin_index)
    if weight.shape[1] < _INFLUENCES:
        pad = ((0, 0), (0, _INFLUENCES - weight.shape[1]))
        weight, index = np.pad(weight, pad), np.pad(index, pad)
    keep = np.argsort(-weight, axis=1, kind="stable")[:, :_INFLUENCES]
    weight = np.take_along_axis(weight, keep, axis=1)
    index = np.where(weight > 0, np.take_along_axis(index, keep, axis=1), 0)
    return index.astype(np.uint16), (weight / weight.sum(1, keepdims=True)).astype(np.float32)


def _read_glb(glb: bytes) -> tuple[dict, bytearray]:
    """GLB = 12-byte header, then a JSON chunk (padded with spaces) and a BIN chunk (padded with zeros), each
    with an 8-byte header. Returns (the JSON, the BIN chunk padded to 4 bytes, so new views start aligned)."""
    magic, version, _ = struct.unpack_from("<4sII", glb, 0)
    json_len, json_type = struct.unpack_from("<I4s", glb, 12)
    bin_len, bin_type = struct.unpack_from("<I4s", glb, 20 + json_len)
    if (magic, version, json_type, bin_type) != (b"glTF", 2, b"JSON", b"BIN\0"):
        raise _layout_error("its chunks are not JSON + BIN")
    binary = bytearray(glb[28 + json_len:28 + json_len + bin_len])
    binary.extend(b"\0" * (-len(binary) % 4))  # trimesh pads already
    return json.loads(glb[20:20 + json_len]), binary


def _write_glb(gltf: dict, binary: bytearray) -> bytes:
    gltf["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total), struct.pack("<I4s", len(text), b"JSON"), text,
                     struct.pack("<I4s", len(binary), b"BIN\0"), bytes(binary)])


def _the_mesh(gltf: dict, vertex_count: int) -> tuple[dict, dict]:
    """(primitive, node) of the one mesh trimesh wrote, checked to take a skin of `vertex_count` vertices."""
    meshes, mesh_nodes = gltf.get("meshes", []), [node for node in gltf["nodes"] if "mesh" in node]
    if len(meshes) != 1 or len(meshes[0]["primitives"]) != 1 or len(mesh_nodes) != 1:
        raise _layout_error("it is not one mesh node with one primitive")
    primitive, mesh_node = meshes[0]["primitives"][0], mesh_nodes[0]
    count = gltf["accessors"][primitive["attributes"]["POSITION"]]["count"]
    if count != vertex_count:  # trimesh must keep the vertices as they are, one for one
        raise _layout_error(f"it holds {count} vertices, the skin is for {vertex_count}")
    identity = np.eye(4).ravel().tolist()
    if mesh_node.pop("matrix", identity) != identity or {"translation", "rotation", "scale"} & mesh_node.keys():
        raise _layout_error("the mesh node has a transform, which a skinned mesh ignores")
    return primitive, mesh_node


def _append_accessor(gltf: dict, binary: bytearray, array: np.ndarray, kind: str, component: int,
                     target: int | None = None) -> int:
    """Append ``array`` to the BIN chunk as a new buffer view + accessor; returns the accessor index."""
    view = {"buffer": 0, "byteOffset": len(binary), "byteLength": array.nbytes}
    if target is not None:
        view["target"] = target
    binary.extend(array.tobytes())
    binary.extend(b"\0" * (-len(binary) % 4))
    gltf["bufferViews"].append(view)
    gltf["accessors"].append({"bufferView": len(gltf["bufferViews"]) - 1, "componentType": component,
                              "count": len(array), "type": kind})
    return len(gltf["accessors"]) - 1


def _add_bone_nodes(gltf: dict, rig) -> tuple[int, int]:
    """One node per bone where the bone is (the bind pose, or the rig's pose), parented as the rig says, the
    root added to the scene. Returns (index of the first bone node, index of the root's node)."""
    worlds = _bone_worlds(rig, posed=True)
    first = len(gltf["nodes"])
    for b, name in enumerate(rig.names):
        parent = int(rig.parents[b])
        local = worlds[b] if parent < 0 else np.linalg.inv(worlds[parent]) @ worlds[b]
        w, x, y, z = trimesh.transformations.quaternion_from_matrix(local)
        gltf["nodes"].append({"name": str(name), "translation": local[:3, 3].tolist(),
                              "rotation": [float(x), float(y), float(z), float(w)]})
        if parent >= 0:
            gltf["nodes"][first + parent].setdefault("children", []).append(first + b)
    root = first + int(np.flatnonzero(np.asarray(rig.parents) < 0)[0])
    gltf["scenes"][gltf.get("scene", 0)]["nodes"].append(root)
    return first, root


def _add_skin(glb: bytes, rig) -> bytes:
    """The GLB written by trimesh (one mesh node) with ``rig`` added: bone nodes, a skin, JOINTS_0 and WEIGHTS_0
    (the new arrays at the end of the BIN chunk)."""
    gltf, binary = _read_glb(glb)
    primitive, mesh_node = _the_mesh(gltf, len(rig.skin_index))
    joints, weights = _influences(rig)
    primitive["attributes"]["JOINTS_0"] = _append_accessor(gltf, binary, joints, "VEC4", _USHORT, _ARRAY_BUFFER)
    primitive["attributes"]["WEIGHTS_0"] = _append_accessor(gltf, binary, weights, "VEC4", _FLOAT, _ARRAY_BUFFER)
    first, root = _add_bone_nodes(gltf, rig)
    inverse_binds = np.linalg.inv(_bone_worlds(rig)).transpose(0, 2, 1).astype(np.float32)  # column-major
    ibm = _append_accessor(gltf, binary, inverse_binds, "MAT4", _FLOAT)
    gltf.setdefault("skins", []).append({"joints": list(range(first, first + len(rig.names))),
                                         "inverseBindMatrices": ibm, "skeleton": root})
    mesh_node["skin"] = len(gltf["skins"]) - 1
    return _write_glb(gltf, binary)
