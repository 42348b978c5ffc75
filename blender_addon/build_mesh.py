"""Result arrays -> Blender data. Plain functions (no operators, no UI), main thread only.

:func:`build_result` turns a reconstruction result (the dict :func:`load_result` reads from the backend's
.npz, see core/backend.py) into

* a mesh object named after the photo, at the 3D cursor, in the metric frame (metres, Z up, facing -Y,
  feet on the cursor's z), smooth shaded, in the collection "Monohuman";
* a material that projects the photo onto the front through the result's UVs and fills the unseen back
  with the person's mean colour, blended by how much the surface faces the camera (object-space normal
  along -Y);
* when the result carries a rig and it is asked for: an armature, the mesh parented to it with vertex
  groups (weights) and an Armature modifier;
* optionally the photo with the detected landmarks drawn, as an image datablock.

All or nothing: if anything fails, every datablock created so far is removed again and the exception
propagates, so the scene is left as it was. The caller (an operator with the UNDO flag) makes it one
undo step.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np

from . import paths

COLLECTION_NAME = "Monohuman"
# Blend from photo to fill as the object-space normal's Y goes from FRONT_Y (facing the camera) to BACK_Y.
FRONT_Y, BACK_Y = -0.35, 0.15
MIN_WEIGHT = 1e-3
FIT_PARAMS_PROP = "monohuman_fit_params"  # on a fitted body's armature: its parameters (JSON), for a refit


def load_result(path) -> dict:
    """The backend's result file, read by the library's own reader (core.backend.load_result, numpy only,
    loaded under this add-on's name: see paths.protocol)."""
    return paths.protocol().load_result(path)


def object_name_for(photo: str) -> str:
    stem = Path(photo).stem if photo else ""
    return (stem or "Monohuman")[:60]


class _Created:
    """Everything build_result makes, so a failure can take it all back."""

    def __init__(self):
        self.items: list = []  # (collection of datablocks, datablock) or a callable that undoes a change

    def add(self, coll, block):
        self.items.append((coll, block))
        return block

    def on_rollback(self, fn) -> None:
        self.items.append(fn)

    def rollback(self) -> None:
        for item in reversed(self.items):
            try:
                if callable(item):
                    item()
                else:
                    item[0].remove(item[1])
            except (ReferenceError, RuntimeError):
                pass
        self.items.clear()


# --------------------------------------------------------------------------------------------------
# Pieces


def make_mesh(name: str, vertices, faces, uv=None) -> bpy.types.Mesh:
    """A triangle mesh from (N, 3) vertices, (F, 3) faces and optional per-vertex (N, 2) UVs
    (core/blender_mesh.py, shared with the training renders)."""
    return paths.core_file("blender_mesh").mesh_from_arrays(name, vertices, faces, uv=uv)


def _socket(sockets, identifier: str, fallback):
    for s in sockets:
        if s.identifier == identifier:
            return s
    return sockets[fallback]


def _photo_node(nodes, links, image) -> bpy.types.Node:
    """The photo, looked up through the UV map "Photo"."""
    uvmap = nodes.new("ShaderNodeUVMap")
    uvmap.uv_map = "Photo"
    uvmap.location = (-900, 200)
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.extension = "EXTEND"
    tex.location = (-650, 250)
    links.new(uvmap.outputs["UV"], tex.inputs["Vector"])
    return tex


def _facing_node(nodes, links) -> bpy.types.Node:
    """0 where the surface faces the camera (object-space normal.y <= FRONT_Y), 1 on the back (>= BACK_Y)."""
    coord = nodes.new("ShaderNodeTexCoord")  # its Normal output is in object space
    coord.location = (-900, -200)
    sep = nodes.new("ShaderNodeSeparateXYZ")
    sep.location = (-650, -200)
    links.new(coord.outputs["Normal"], sep.inputs["Vector"])
    ramp = nodes.new("ShaderNodeMapRange")
    ramp.location = (-450, -200)
    ramp.label = "Front (photo) -> back (fill)"
    ramp.clamp = True
    ramp.inputs["From Min"].default_value = FRONT_Y
    ramp.inputs["From Max"].default_value = BACK_Y
    ramp.inputs["To Min"].default_value = 0.0
    ramp.inputs["To Max"].default_value = 1.0
    links.new(sep.outputs["Y"], ramp.inputs["Value"])
    return ramp


def make_material(name: str, image: bpy.types.Image | None, fill_rgb) -> bpy.types.Material:
    """Photo projected through the UV map 'Photo' on the front, `fill_rgb` (sRGB 0..1) on the back."""
    mat = bpy.data.materials.new(name)
    try:
        if bpy.app.version < (5, 0, 0):
            mat.use_nodes = True  # always on (and deprecated) from Blender 5
        nt = mat.node_tree
        nodes, links = nt.nodes, nt.links
        bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None)
        if out is None:
            out = nodes.new("ShaderNodeOutputMaterial")
        if bsdf is None:
            bsdf = nodes.new("ShaderNodeBsdfPrincipled")
            links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
        bsdf.location, out.location = (300, 0), (600, 0)
        _socket(bsdf.inputs, "Roughness", "Roughness").default_value = 0.8

        fill = _srgb_to_linear(np.asarray(fill_rgb, dtype=np.float64).reshape(3))
        if image is None:
            bsdf.inputs["Base Color"].default_value = (*fill, 1.0)
            mat.diffuse_color = (*fill, 1.0)
            return mat

        tex = _photo_node(nodes, links, image)
        ramp = _facing_node(nodes, links)
        rgb = nodes.new("ShaderNodeRGB")
        rgb.label = "Back fill (person's mean colour)"
        rgb.outputs[0].default_value = (*fill, 1.0)
        rgb.location = (-450, 0)

        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        mix.location = (0, 100)
        links.new(ramp.outputs["Result"], _socket(mix.inputs, "Factor_Float", 0))
        links.new(tex.outputs["Color"], _socket(mix.inputs, "A_Color", 6))
        links.new(rgb.outputs[0], _socket(mix.inputs, "B_Color", 7))
        links.new(_socket(mix.outputs, "Result_Color", 2), bsdf.inputs["Base Color"])
        mat.diffuse_color = (*fill, 1.0)  # solid-mode viewport colour
    except BaseException:
        bpy.data.materials.remove(mat)
        raise
    return mat


def _srgb_to_linear(c: np.ndarray) -> tuple[float, float, float]:
    c = np.clip(c, 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return tuple(float(x) for x in lin)


def load_image(path: str, name: str, created: _Created) -> bpy.types.Image:
    """Load a PNG written by the backend, packed into the .blend (the results folder is a cache)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"The result's image is missing: {path}")
    img = created.add(bpy.data.images, bpy.data.images.load(path, check_existing=False))
    img.name = name
    img.pack()
    return img


def ensure_collection(scene: bpy.types.Scene, created: _Created) -> bpy.types.Collection:
    coll = bpy.data.collections.get(COLLECTION_NAME)
    if coll is None:
        coll = created.add(bpy.data.collections, bpy.data.collections.new(COLLECTION_NAME))
    if scene.collection.children.get(coll.name) is None and coll not in _all_children(scene.collection):
        scene.collection.children.link(coll)
        created.on_rollback(lambda: scene.collection.children.unlink(coll))
    return coll


def _all_children(coll):
    out = []
    for c in coll.children:
        out.append(c)
        out.extend(_all_children(c))
    return out


def make_armature(name: str, result: dict, mesh_obj: bpy.types.Object, coll: bpy.types.Collection,
                  view_layer: bpy.types.ViewLayer, created: _Created) -> bpy.types.Object:
    """Armature from the result's rig; the mesh gets vertex groups, a parent and an Armature modifier."""
    names = [str(n) for n in result["armature_names"]]
    heads = np.asarray(result["armature_heads"], np.float64)
    tails = np.asarray(result["armature_tails"], np.float64)
    parents = np.asarray(result["armature_parents"], np.int64)
    weights = np.asarray(result["armature_weights"], np.float32)
    axes_key = paths.protocol().ARMATURE_AXES
    axes = np.asarray(result[axes_key], np.float64) if axes_key in result else None
    n_verts = len(mesh_obj.data.vertices)
    if not (len(names) == len(heads) == len(tails) == len(parents)) or weights.shape != (n_verts, len(names)):
        raise ValueError("The result's armature arrays do not match each other or the mesh.")

    arm_data = created.add(bpy.data.armatures, bpy.data.armatures.new(name + " rig"))
    arm_obj = created.add(bpy.data.objects, bpy.data.objects.new(name + " rig", arm_data))
    arm_obj.location = mesh_obj.location
    coll.objects.link(arm_obj)
    arm_obj.show_in_front = True

    prev_active = view_layer.objects.active
    prev_mode = prev_active.mode if prev_active is not None else "OBJECT"
    if prev_mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = arm_obj
    try:
        with bpy.context.temp_override(active_object=arm_obj, object=arm_obj, view_layer=view_layer):
            bpy.ops.object.mode_set(mode="EDIT")
            try:
                bones = []
                for j, (n, h, t) in enumerate(zip(names, heads, tails)):
                    b = arm_data.edit_bones.new(n)
                    b.head, b.tail = h.tolist(), t.tolist()
                    if (b.tail - b.head).length < 1e-5:
                        b.tail = (h + np.array([0.0, 0.0, 0.01])).tolist()
                    if axes is not None:  # the roll: the bone's z axis as the rig has it
                        b.align_roll(axes[j][:, 2].tolist())
                    bones.append(b)
                for b, p in zip(bones, parents):
                    if 0 <= p < len(bones):
                        b.parent = bones[p]
            finally:
                bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        view_layer.objects.active = prev_active

    for j, bone_name in enumerate(names):
        col = weights[:, j]
        idx = np.nonzero(col > MIN_WEIGHT)[0]
        if len(idx) == 0:
            continue
        vg = mesh_obj.vertex_groups.new(name=bone_name)
        for w in np.unique(np.round(col[idx], 4)):
            sel = idx[np.round(col[idx], 4) == w]
            vg.add(sel.tolist(), float(w), "REPLACE")
    mesh_obj.parent = arm_obj
    mesh_obj.location = (0.0, 0.0, 0.0)
    mod = mesh_obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    return arm_obj


def fitted_rig(obj) -> bpy.types.Object | None:
    """The fitted body's armature behind `obj` (the armature itself or the mesh it deforms), or None."""
    for o in (obj, getattr(obj, "parent", None)):
        if o is not None and o.type == "ARMATURE" and FIT_PARAMS_PROP in o:
            return o
    return None


def armature_pose(arm_obj: bpy.types.Object) -> dict:
    """The rig's pose as the animator left it, the inverse of `pose_armature`: per bone, rest -> posed in armature
    space (pose bone matrix times the inverse of its rest matrix). What a refit sends as "init_pose"."""
    bones = arm_obj.data.bones
    names = [b.name for b in bones]
    parents = [names.index(b.parent.name) if b.parent is not None else -1 for b in bones]
    posed = np.array([arm_obj.pose.bones[b.name].matrix for b in bones], np.float64)
    pose = posed @ np.linalg.inv(np.array([b.matrix_local for b in bones], np.float64))
    return {"names": names, "parents": parents, "pose": pose.tolist()}


def pose_armature(arm_obj: bpy.types.Object, pose, names, parents) -> None:
    """Pose an armature built in its rest pose: `pose` (J, 4, 4) moves bone j from rest to posed in armature
    space. A bone's matrix_basis (relative to its rest and its parent's pose) is rest^-1 parent_pose^-1 pose
    rest, computed here without a depsgraph update per bone."""
    from mathutils import Matrix

    pose = np.asarray(pose, np.float64)
    for j, name in enumerate(names):
        pb = arm_obj.pose.bones[str(name)]
        rest = np.array(pb.bone.matrix_local, np.float64)
        p = int(parents[j])
        rel = pose[j] if p < 0 else np.linalg.inv(pose[p]) @ pose[j]
        pb.rotation_mode = "QUATERNION"
        pb.matrix_basis = Matrix((np.linalg.inv(rest) @ rel @ rest).tolist())


# --------------------------------------------------------------------------------------------------
# The whole thing


def build_result(result: dict, *, scene: bpy.types.Scene | None = None,
                 view_layer: bpy.types.ViewLayer | None = None, location=None, name: str | None = None,
                 project_texture: bool = True, add_armature: bool = True,
                 show_landmarks: bool = False) -> dict:
    """Create the Blender object(s) for a result; returns {"object", "armature", "material", "landmarks"}.

    `location` defaults to the scene's 3D cursor. All or nothing (see the module docstring)."""
    scene = scene or bpy.context.scene
    view_layer = view_layer or bpy.context.view_layer
    if location is None:
        location = tuple(scene.cursor.location)
    name = name or object_name_for(result.get("photo", ""))
    created = _Created()
    try:
        coll = ensure_collection(scene, created)
        rigged = add_armature and all(k in result for k in paths.protocol().ARMATURE_KEYS)
        posed = rigged and all(k in result for k in paths.protocol().POSE_KEYS)
        # a posed rig (the fit): the mesh is built in the rest pose and the armature poses it as in the photo
        verts = result["rest_vertices"] if posed else result["vertices"]
        me = created.add(bpy.data.meshes, make_mesh(name, verts, result["faces"], result.get("uv")))
        image = None
        if project_texture and result.get("texture"):
            image = load_image(result["texture"], f"{name} photo", created)
        fill = result.get("person_colour", np.array([0.6, 0.5, 0.45]))
        mat = created.add(bpy.data.materials, make_material(name, image, fill))
        me.materials.append(mat)

        obj = created.add(bpy.data.objects, bpy.data.objects.new(name, me))
        obj.location = location
        coll.objects.link(obj)
        obj["monohuman_photo"] = str(result.get("photo", ""))
        obj["monohuman_model"] = str(result.get("model_name", ""))
        if result.get("warnings"):
            obj["monohuman_warnings"] = "; ".join(result["warnings"])

        arm_obj = None
        if rigged:
            arm_obj = make_armature(name, result, obj, coll, view_layer, created)
            if posed:
                pose_armature(arm_obj, result["armature_pose"], result["armature_names"], result["armature_parents"])
            fit_params = result.get(paths.protocol().FIT_PARAMS)
            if fit_params:  # what "Refit to Photo" starts from (with the rig's pose as the animator leaves it)
                arm_obj[FIT_PARAMS_PROP] = str(fit_params)
                arm_obj["monohuman_photo"] = str(result.get("photo", ""))

        landmarks = None
        if show_landmarks and result.get("landmarks_image"):
            landmarks = load_image(result["landmarks_image"], f"{name} landmarks", created)
            obj["monohuman_landmarks_image"] = landmarks.name

        for o in view_layer.objects:
            if o.select_get(view_layer=view_layer):
                o.select_set(False, view_layer=view_layer)
        obj.select_set(True, view_layer=view_layer)
        view_layer.objects.active = obj
        view_layer.update()  # matrix_world and bounds are valid for the caller
    except BaseException:
        created.rollback()
        raise
    return {"object": obj, "armature": arm_obj, "material": mat, "landmarks": landmarks}


def show_image_in_editors(image: bpy.types.Image, screen=None) -> int:
    """Show `image` in every open Image Editor of the screen; returns how many."""
    screen = screen or getattr(bpy.context, "screen", None)
    count = 0
    for area in getattr(screen, "areas", []):
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            area.tag_redraw()
            count += 1
    return count


def image_file_for(image: bpy.types.Image, out_dir: Path) -> str:
    """A file path core can read for an image datablock: its own file, or a PNG copy in `out_dir`
    (packed or generated images). The copy goes through a temporary image that is removed again."""
    if image.packed_file is None and image.source == "FILE":
        path = bpy.path.abspath(image.filepath, library=image.library)
        if path and os.path.isfile(path):
            return os.path.normpath(path)
    w, h = image.size
    if w == 0 or h == 0:
        raise FileNotFoundError(f"The image '{image.name}' has no pixels.")
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in image.name)[:40] or "image"
    path = out_dir / f"{safe}.png"
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    tmp = bpy.data.images.new("monohuman-export", w, h, alpha=True)
    try:
        if not image.is_float:
            tmp.colorspace_settings.name = image.colorspace_settings.name
        tmp.pixels.foreach_set(pixels)
        tmp.filepath_raw = str(path)
        tmp.file_format = "PNG"
        tmp.save()
    finally:
        bpy.data.images.remove(tmp)
    return str(path)
