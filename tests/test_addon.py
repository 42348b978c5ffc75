"""The Blender add-on, with real Blender (the bpy module), headless, on the CPU.

The end-to-end tests use the fixtures `person_photo` (a project-rendered photo) and `tiny_model` (a small
trained checkpoint) from tests/conftest.py and skip, saying so, while those are not there.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402  (ships with bpy)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ASTRONAUT = Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"  # ships in the wheel
ADDON = "blender_addon"
E2E_TIMEOUT = 300.0

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def need(assets, name):
    if assets[name] is None:
        pytest.skip(f"fixture '{name}' is not provided yet (tests/conftest.py)")
    return assets[name]


# --------------------------------------------------------------------------------------------------
# Fixtures
#
# Other tests in the session (rendering) reset Blender with read_factory_settings, which disables add-ons
# and frees the scene: so the add-on is (re-)enabled per test, and the session fixtures that render
# (`person_photo`, `tiny_model`) are resolved first, through `assets`, before any bpy pointer is taken.


@pytest.fixture(scope="module")
def user_dir_env(tmp_path_factory):
    old = os.environ.get("MONOHUMAN_USER_DIR")
    os.environ["MONOHUMAN_USER_DIR"] = str(tmp_path_factory.mktemp("monohuman_user"))
    yield
    from blender_addon import jobs

    jobs.shutdown()
    if ADDON in bpy.context.preferences.addons:
        addon_utils.disable(ADDON, default_set=True, handle_error=_raise)
    if old is None:
        os.environ.pop("MONOHUMAN_USER_DIR", None)
    else:
        os.environ["MONOHUMAN_USER_DIR"] = old


@pytest.fixture
def assets(request):
    """The conftest's rendered photo and tiny model (None while they are not provided)."""
    out = {}
    for name in ("person_photo", "tiny_model"):
        try:
            out[name] = str(request.getfixturevalue(name))
        except pytest.FixtureLookupError:
            out[name] = None
    return out


@pytest.fixture
def addon(user_dir_env):
    """The add-on enabled as Blender enables add-ons, with its user folder in a temp dir."""
    if ADDON not in bpy.context.preferences.addons or not hasattr(bpy.types, "MONOHUMAN_PT_main"):
        mod = addon_utils.enable(ADDON, default_set=True, handle_error=_raise)
        assert mod is not None
    return sys.modules[ADDON]


def _raise(exc):
    raise exc


@pytest.fixture
def prefs(addon):
    p = bpy.context.preferences.addons[ADDON].preferences
    saved = {k: getattr(p, k) for k in ("backend_python", "models_dir", "device", "execution")}
    p.device = "CPU"
    yield p
    for k, v in saved.items():
        setattr(p, k, v)


@pytest.fixture
def props(addon):
    p = bpy.context.scene.monohuman
    names = ("photo_source", "photo_path", "method", "model", "subject_height", "smoothing", "face_budget",
             "project_texture", "add_armature", "show_landmarks")
    saved = {k: getattr(p, k) for k in names}
    p.method = "vrn"  # the end-to-end fixtures' model (tiny_model) is a VRN model; the default method is "fit"
    yield p
    for k, v in saved.items():
        setattr(p, k, v)
    p.photo_image = None


DATA_KINDS = ("objects", "meshes", "materials", "images", "collections", "armatures")


def snapshot():
    scene = bpy.context.scene
    return ({k: set(getattr(bpy.data, k).keys()) for k in DATA_KINDS},
            set(scene.collection.children.keys()), set(scene.objects.keys()))


@pytest.fixture
def clean_scene(addon):
    """Snapshot of the scene; whatever a test adds is removed afterwards."""
    before = snapshot()
    yield before
    for kind in DATA_KINDS:
        coll = getattr(bpy.data, kind)
        for name in set(coll.keys()) - before[0][kind]:
            if name in coll:
                coll.remove(coll[name])


def run_reconstruct(**kw):
    return bpy.ops.monohuman.reconstruct(wait=True, timeout=E2E_TIMEOUT, **kw)


class FakeOp:
    """Collects reports like an operator (for finish_job outside an operator)."""

    def __init__(self):
        self.reports = []

    def report(self, kind, message):
        self.reports.append((set(kind), message))


# --------------------------------------------------------------------------------------------------
# Packaging


def test_manifest_is_valid():
    with open(ROOT / "blender_manifest.toml", "rb") as f:
        m = tomllib.load(f)
    for key in ("schema_version", "id", "version", "name", "tagline", "maintainer", "type", "license",
                "blender_version_min"):
        assert m.get(key), key
    assert m["schema_version"] == "1.0.0" and m["id"] == "monohuman" and m["type"] == "add-on"
    assert m["blender_version_min"] == "4.2.0"
    assert "SPDX:GPL-3.0-or-later" in m["license"]
    assert len(m["tagline"]) <= 64 and m["tagline"][-1].isalnum()
    assert m["permissions"]["files"] and "network" not in m["permissions"]


def test_built_zip_has_manifest_addon_and_nothing_else(tmp_path):
    from scripts.build_addon import blender_ext_script, build, validate

    zip_path = build(tmp_path, include_models=False)
    assert zip_path.name.startswith("monohuman-") and zip_path.suffix == ".zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert manifest["id"] == "monohuman"
    assert zip_path.name == f"monohuman-{manifest['version']}.zip"
    for required in ("__init__.py", "jobs.py", "operators.py", "panel.py", "preferences.py", "properties.py",
                     "build_mesh.py", "server.py", "vendor/__init__.py", "vendor/core/__init__.py",
                     "vendor/core/backend.py", "vendor/core/reconstruct.py", "vendor/models/anny-template.npz",
                     "vendor/models/pose-lifter.json", "vendor/models/pose-lifter.safetensors",
                     "LICENSE"):
        assert required in names, required
    for n in names:
        assert not n.startswith(("tests/", "train/", ".venv/", "venv/", "blender_addon/", "dist/")), n
        assert "__pycache__" not in n and not n.endswith(".pyc"), n
        assert not n.endswith(".npz") or n == "vendor/models/anny-template.npz", n
        assert "site-packages" not in n, n
    with zipfile.ZipFile(zip_path) as zf:
        assert "GNU GENERAL PUBLIC LICENSE" in zf.read("LICENSE").decode() and "Version 3" in zf.read("LICENSE").decode()
        for n in names:  # the vendored library never imports a top-level `core`
            if n.startswith("vendor/core/") and n.endswith(".py"):
                for node in ast.walk(ast.parse(zf.read(n).decode())):
                    if isinstance(node, ast.Import):
                        assert not any(a.name.split(".")[0] == "core" for a in node.names), (n, node.lineno)
                    if isinstance(node, ast.ImportFrom) and node.level == 0:
                        assert (node.module or "").split(".")[0] != "core", (n, node.lineno)
    ok, message = validate(zip_path)
    assert ok, message
    if blender_ext_script() is not None:
        assert "Success" in message


def test_addon_module_imports_no_torch_or_core():
    code = ("import sys; sys.path.insert(0, %r); import bpy, blender_addon, blender_addon.jobs, "
            "blender_addon.build_mesh; bad = [m for m in ('torch', 'core', 'mediapipe', 'cv2') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)" % str(ROOT))
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_register_unregister_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("MONOHUMAN_USER_DIR", str(tmp_path))
    was_enabled = ADDON in bpy.context.preferences.addons
    if was_enabled:
        addon_utils.disable(ADDON, default_set=True, handle_error=_raise)
    for _ in range(2):
        assert addon_utils.enable(ADDON, default_set=True, handle_error=_raise) is not None
        assert hasattr(bpy.types, "MONOHUMAN_PT_main") and hasattr(bpy.types, "MONOHUMAN_OT_reconstruct")
        assert bpy.context.scene.monohuman.subject_height == pytest.approx(1.70)
        assert bpy.context.preferences.addons[ADDON].preferences.device == "AUTO"
        addon_utils.disable(ADDON, default_set=True, handle_error=_raise)
        assert not hasattr(bpy.types, "MONOHUMAN_PT_main")
        assert not hasattr(bpy.types, "MONOHUMAN_OT_reconstruct")
        assert not hasattr(bpy.types.Scene, "monohuman")
    if was_enabled:
        addon_utils.enable(ADDON, default_set=True, handle_error=_raise)


def test_backend_python_autodetected_from_checkout():
    from blender_addon import paths

    detected = paths.detect_backend_python()
    venv = paths.venv_python(ROOT)
    assert detected == (str(venv) if venv else "")
    assert paths.checkout_for_python(ROOT / ".venv" / "bin" / "python") == ROOT
    assert paths.backend_cwd(str(ROOT / ".venv" / "bin" / "python")) == ROOT


def test_model_listing_shows_the_metric_training_wrote(prefs, props, tmp_path):
    """The add-on lists models through core.models, and shows the headline metric under the key training
    writes: a tiny VRN saved the way training saves it (metrics.val_iou + history), and the shipped models
    (written by the real training runs: val_iou for VRN, val_surface_mm for HumanMeshNet)."""
    import json

    from blender_addon import paths, properties
    from core.checkpoint import save_model
    from core.networks import build_vrn, config_for

    net = build_vrn(config_for("multistack", features=16, volume_shape=(12, 32, 16)))
    history = [{"epoch": 1, "step": 4, "train_loss": 1.3, "val_iou": 0.61}]
    save_model(tmp_path / "mine", net, {"metrics": {"val_iou": 0.61, "history": history}})
    entries = {e.name: e for e in paths.list_models(str(tmp_path), "", "vrn")}
    assert entries["mine"].summary == "validation IoU 0.61"
    assert "validation IoU 0.61" in paths.model_description(entries["mine"])
    shipped = {e.name: e for e in paths.list_models("", "", None)}
    for name, key in (("vrn-default", "val_iou"), ("hmnet-default", "val_surface_mm")):
        metrics = json.loads((ROOT / "models" / f"{name}.json").read_text())["metrics"]
        assert key in metrics and shipped[name].summary.endswith(format(metrics[key], ".2f" if key == "val_iou"
                                                                        else ".0f"))
    assert "anny-body" not in shipped  # the fit's body model is data, not a network
    prefs.models_dir, props.method = str(tmp_path), "fit"
    names = [n for n, _ in properties._model_search(props, bpy.context, "")]
    assert names[0] == "default" and "hmnet-default" in names and "mine" not in names and names[-1] == "none"


# --------------------------------------------------------------------------------------------------
# build_mesh on a synthetic result


def synthetic_result(tmp_path, height=1.70, armature=False):
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=3, radius=1.0)
    v = np.array([x.co[:] for x in bm.verts], np.float64)
    f = np.array([[lp.vert.index for lp in face.loops] for face in bm.faces], np.int32)
    bm.free()
    v = (v - v.min(axis=0)) / (v.max(axis=0) - v.min(axis=0))  # unit box
    v = v * np.array([0.45, 0.25, height]) - np.array([0.225, 0.125, 0.0])  # feet on z = 0, centred
    uv = np.stack([v[:, 0] / 0.45 + 0.5, v[:, 2] / height], axis=1)
    photo = np.zeros((64, 48, 3), np.uint8)
    photo[..., 0] = 200
    photo[16:48, 12:36] = (40, 160, 90)
    tex = tmp_path / "photo_texture.png"
    from PIL import Image

    Image.fromarray(photo).save(tex)
    res = {"vertices": v.astype(np.float32), "faces": f, "uv": uv.astype(np.float32), "texture": str(tex),
           "landmarks_image": str(tex), "photo": str(tmp_path / "jane doe.jpg"),
           "person_colour": np.array([0.2, 0.6, 0.35], np.float32), "warnings": [], "model_name": "synthetic"}
    if armature:
        res.update({"armature_names": np.array(["hips", "chest"]),
                    "armature_heads": np.array([[0, 0, 0.9], [0, 0, 1.2]], np.float32),
                    "armature_tails": np.array([[0, 0, 1.2], [0, 0, 1.5]], np.float32),
                    "armature_parents": np.array([-1, 0], np.int32),
                    "armature_weights": np.stack([v[:, 2] < 1.2, v[:, 2] >= 1.2], 1).astype(np.float32)})
    return res


def world_z_range(obj):
    from mathutils import Vector

    zs = [(obj.matrix_world @ Vector(c)).z for c in obj.bound_box]
    return min(zs), max(zs)


def check_body(obj, height, cursor_z, photo_image_size=None):
    assert obj.type == "MESH" and len(obj.data.polygons) > 0
    assert obj.users_collection[0].name == "Monohuman"
    zmin, zmax = world_z_range(obj)
    assert zmin == pytest.approx(cursor_z, abs=1e-4)
    assert (zmax - zmin) == pytest.approx(height, rel=0.02)
    assert all(p.use_smooth for p in obj.data.polygons)
    mat = obj.active_material
    assert mat is not None
    images = [n.image for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]
    assert len(images) == 1 and images[0].packed_file is not None
    if photo_image_size is not None:
        assert tuple(images[0].size) == tuple(photo_image_size)
    assert "Photo" in obj.data.uv_layers


def test_build_mesh_from_synthetic_result(addon, clean_scene, tmp_path):
    from blender_addon import build_mesh

    bpy.context.scene.cursor.location = (0.4, -0.3, 0.25)
    out = build_mesh.build_result(synthetic_result(tmp_path), show_landmarks=True)
    objs, children, scene_objs = snapshot()
    new = objs["objects"] - clean_scene[0]["objects"]
    assert new == {"jane doe"}
    obj = out["object"]
    assert obj.name == "jane doe" and out["armature"] is None
    assert tuple(obj.location) == pytest.approx((0.4, -0.3, 0.25))
    check_body(obj, 1.70, 0.25, photo_image_size=(48, 64))
    assert "Monohuman" in children
    assert out["landmarks"] is not None and obj["monohuman_landmarks_image"] == out["landmarks"].name
    assert bpy.context.view_layer.objects.active == obj
    # faces -Y: the front (most negative y) of the mesh is where the photo projects
    co = np.array([v.co[:] for v in obj.data.vertices])
    assert co[:, 1].min() == pytest.approx(-0.125, abs=1e-3)


def test_build_mesh_with_armature(addon, clean_scene, tmp_path):
    from blender_addon import build_mesh

    bpy.context.scene.cursor.location = (0, 0, 0)
    out = build_mesh.build_result(synthetic_result(tmp_path, armature=True))
    obj, arm = out["object"], out["armature"]
    assert arm is not None and arm.type == "ARMATURE" and obj.parent == arm
    assert [b.name for b in arm.data.bones] == ["hips", "chest"] and arm.data.bones["chest"].parent.name == "hips"
    assert {g.name for g in obj.vertex_groups} == {"hips", "chest"}
    assert any(m.type == "ARMATURE" and m.object == arm for m in obj.modifiers)
    check_body(obj, 1.70, 0.0)


def evaluated_vertices(obj) -> np.ndarray:
    """The mesh's vertices as the armature (its modifiers) shows them now."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    evaluated = obj.evaluated_get(depsgraph)
    co = np.array([v.co[:] for v in evaluated.to_mesh().vertices])
    evaluated.to_mesh_clear()
    return co


def _built_in_blender(assets, tmp_path, method: str):
    """The backend's result for the test photo, built in the scene: (result, mesh object, armature)."""
    from blender_addon import build_mesh
    from core.backend import run_request

    photo = need(assets, "person_photo")
    result = build_mesh.load_result(run_request({"photo": photo, "output": str(tmp_path / "r.npz"),
                                                 "method": method, "device": "cpu"}))
    bpy.context.scene.cursor.location = (0, 0, 0)
    out = build_mesh.build_result(result)
    return result, out["object"], out["armature"]


def test_rigged_reconstruction_poses_in_blender(addon, clean_scene, assets, tmp_path):
    """A real HMNet result (the shipped model): 104 bones with their roll, and posing the left upper arm 60
    degrees moves every forearm and hand vertex and no leg vertex."""
    from math import radians

    result, obj, arm = _built_in_blender(assets, tmp_path, "hmnet")
    assert len(arm.data.bones) == 104 and obj.parent == arm
    bones = [arm.data.bones[str(n)] for n in result["armature_names"]]
    for k in (1, 2):  # direction (y) and roll (z) as the rig has them, in armature space
        got = np.array([[b.matrix_local[r][k] for r in range(3)] for b in bones])
        assert np.einsum("ji,ji->j", got, result["armature_axes"][:, :, k]).min() > 0.999

    arm.pose.bones["upperarm01.L"].rotation_mode = "XYZ"
    arm.pose.bones["upperarm01.L"].rotation_euler = (0.0, 0.0, radians(60))
    posed = evaluated_vertices(obj)
    moved = np.linalg.norm(posed - np.array([v.co[:] for v in obj.data.vertices]), axis=1)
    names = [str(n) for n in result["armature_names"]]
    w = result["armature_weights"]
    below = lambda prefixes: w[:, [i for i, n in enumerate(names) if n.startswith(prefixes)]].sum(1)  # noqa: E731
    forearm = below(("lowerarm01.L", "lowerarm02.L", "wrist.L", "finger", "metacarpal")) > 0.9
    forearm &= np.array([names[j].endswith(".L") for j in w.argmax(1)])
    legs = below(("upperleg", "lowerleg", "foot", "toe")) > 0.999
    assert forearm.sum() > 100 and legs.sum() > 1000
    assert moved[forearm].min() > 0.05 and moved[legs].max() < 1e-4


def test_fitted_body_is_posed_as_in_the_photo_with_anny_rest_pose(addon, clean_scene, assets, tmp_path):
    """The fit's result: the armature's rest is Anny's rest pose (the mesh data), its pose shows the body as in
    the photo (the evaluated mesh is the fitted one), and clearing the pose gives the rest body back."""
    result, obj, arm = _built_in_blender(assets, tmp_path, "fit")
    rest = np.array([v.co[:] for v in obj.data.vertices])
    assert np.abs(rest - result["rest_vertices"]).max() < 1e-5
    assert np.ptp(rest[:, 2]) == pytest.approx(1.70, abs=1e-3)  # the rest pose is the subject height

    posed = evaluated_vertices(obj)
    assert np.linalg.norm(posed - result["vertices"], axis=1).max() < 2e-3  # as fitted
    assert np.linalg.norm(posed - rest, axis=1).max() > 0.05  # and not the rest pose
    for pb in arm.pose.bones:  # Pose > Clear Transform: back to Anny's rest pose
        pb.matrix_basis.identity()
    assert np.linalg.norm(evaluated_vertices(obj) - rest, axis=1).max() < 1e-4


def test_refit_keeps_the_animators_pose_where_the_photo_cannot_tell(assets, prefs, props, clean_scene):
    """Refit to Photo: the fitted rig's left forearm swung 30 degrees towards the camera (depth, which the photo
    barely shows) is kept by the refit, which starts from the rig as posed; the first body stays as it was."""
    from blender_addon import build_mesh
    from scipy.spatial.transform import Rotation

    photo = need(assets, "person_photo")
    prefs.execution, prefs.backend_python = "IN_PROCESS", PYTHON
    props.photo_source, props.photo_path, props.model, props.method = "FILE", str(photo), "default", "fit"
    assert run_reconstruct() == {"FINISHED"}
    rig = build_mesh.fitted_rig(bpy.context.view_layer.objects.active)
    assert rig is not None and rig["monohuman_photo"] == str(photo)

    def forearm(arm):  # the forearm's turn relative to the upper arm, armature space
        pose = build_mesh.armature_pose(arm)
        m = {n: np.array(p)[:3, :3] for n, p in zip(pose["names"], pose["pose"])}
        return Rotation.from_matrix(m["upperarm01.L"]).inv() * Rotation.from_matrix(m["lowerarm01.L"])

    fitted = forearm(rig)
    pb = rig.pose.bones["lowerarm01.L"]
    swing = np.eye(4)
    swing[:3, :3] = Rotation.from_rotvec([np.radians(30.0), 0.0, 0.0]).as_matrix()  # about X: into depth
    head = np.array(pb.matrix, np.float64)[:3, 3]
    swing[:3, 3] = head - swing[:3, :3] @ head
    from mathutils import Matrix

    pb.matrix = Matrix((swing @ np.array(pb.matrix, np.float64)).tolist())
    bpy.context.view_layer.update()
    wanted = forearm(rig)
    assert np.degrees((wanted * fitted.inv()).magnitude()) > 25.0
    bpy.context.view_layer.objects.active = rig
    assert run_reconstruct(refit=True) == {"FINISHED"}
    new_rig = build_mesh.fitted_rig(bpy.context.view_layer.objects.active)
    assert new_rig is not None and new_rig != rig and new_rig.name.endswith("refit rig")
    got = forearm(new_rig)
    to_wanted, to_fitted = (np.degrees((got * r.inv()).magnitude()) for r in (wanted, fitted))
    assert to_wanted < 15.0 and to_wanted < to_fitted, (to_wanted, to_fitted)


def test_refit_needs_a_fitted_rig_and_its_photo(prefs, props, clean_scene):
    """Refit on a mesh that is no fitted body, or one whose photo has gone, is one clear error and adds nothing."""
    from blender_addon import build_mesh, jobs, operators

    mesh = bpy.data.meshes.new("plain")
    obj = bpy.data.objects.new("plain", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    with pytest.raises(jobs.JobError, match="not a fitted body"):
        operators.make_refit_request(bpy.context)
    arm = bpy.data.objects.new("gone rig", bpy.data.armatures.new("gone rig"))
    bpy.context.scene.collection.objects.link(arm)
    arm[build_mesh.FIT_PARAMS_PROP], arm["monohuman_photo"] = "{}", "/nowhere/photo.png"
    obj.parent = arm
    with pytest.raises(jobs.JobError, match="photo this body was fitted to is gone"):
        operators.make_refit_request(bpy.context)
    before = snapshot()
    with pytest.raises(RuntimeError, match="photo this body was fitted to is gone"):  # the operator's report
        run_reconstruct(refit=True)
    assert snapshot() == before


def test_build_mesh_failure_leaves_nothing(addon, clean_scene, tmp_path):
    from blender_addon import build_mesh

    bad = synthetic_result(tmp_path, armature=True)
    bad["armature_weights"] = bad["armature_weights"][:10]  # fails after mesh, material, image exist
    with pytest.raises(ValueError):
        build_mesh.build_result(bad)
    assert snapshot() == clean_scene
    bad = synthetic_result(tmp_path)
    bad["faces"] = bad["faces"] + 10_000
    with pytest.raises(ValueError):
        build_mesh.build_result(bad)
    assert snapshot() == clean_scene


# --------------------------------------------------------------------------------------------------
# Errors through the operator: a report naming the problem and the fix, the scene unchanged


@pytest.fixture
def model_or_missing(assets, tmp_path):
    return assets["tiny_model"] or str(tmp_path / "no-such-model")


def expect_error(match):
    with pytest.raises(RuntimeError, match=match):
        run_reconstruct()


def test_error_missing_photo(prefs, props, clean_scene, tmp_path):
    prefs.execution = "IN_PROCESS"
    props.photo_source, props.photo_path = "FILE", str(tmp_path / "nobody.jpg")
    expect_error(r"Photo not found: .*nobody\.jpg\. Check the path")
    assert snapshot() == clean_scene
    props.photo_path = ""
    expect_error("No photo is chosen")
    assert snapshot() == clean_scene


@pytest.mark.parametrize("execution", ["IN_PROCESS", "BACKEND"])
def test_error_not_an_image(model_or_missing, prefs, props, clean_scene, tmp_path, execution):
    prefs.execution = execution
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    props.photo_source, props.photo_path, props.model = "FILE", str(fake), model_or_missing
    expect_error(r"Not a readable image: .*holiday\.png.*Use a JPEG, PNG or WebP photo")
    assert snapshot() == clean_scene


@pytest.mark.parametrize("execution", ["IN_PROCESS", "BACKEND"])
def test_error_blank_image_no_person(assets, prefs, props, clean_scene, tmp_path, execution):
    model = need(assets, "tiny_model")  # detection runs after the model loads
    prefs.execution = execution
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((240, 320, 3), 127, np.uint8)).save(blank)
    props.photo_source, props.photo_path, props.model = "FILE", str(blank), str(model)
    expect_error(r"No person found")
    assert snapshot() == clean_scene


@pytest.mark.parametrize("execution", ["IN_PROCESS", "BACKEND"])
def test_error_model_missing(prefs, props, clean_scene, tmp_path, execution):
    prefs.execution = execution
    props.photo_source, props.photo_path = "FILE", str(ASTRONAUT)
    props.model = str(tmp_path / "missing-model")
    expect_error(r"missing-model")
    assert snapshot() == clean_scene


def test_error_backend_python_wrong(prefs, props, clean_scene, tmp_path):
    prefs.execution = "BACKEND"
    props.photo_source, props.photo_path = "FILE", str(ASTRONAUT)
    prefs.backend_python = str(tmp_path / "no" / "python")
    expect_error(r"Backend Python not found: .*Set Preferences > Add-ons > Monohuman > Backend Python")
    assert snapshot() == clean_scene
    not_python = tmp_path / "python"  # exists, runs, but is not a Python with core
    not_python.write_text("#!/bin/sh\necho 'not python' >&2\nexit 7\n")
    not_python.chmod(0o755)
    prefs.backend_python = str(not_python)
    expect_error(r"backend process ended \(exit status 7\).*not python.*Backend Python")
    assert snapshot() == clean_scene


# --------------------------------------------------------------------------------------------------
# Cancel


@pytest.mark.parametrize("execution", ["IN_PROCESS", "BACKEND"])
def test_cancel_stops_the_work_and_leaves_the_scene(assets, model_or_missing, prefs, props, clean_scene,
                                                     execution):
    from blender_addon import jobs, operators

    photo = assets["person_photo"] or str(ASTRONAUT)
    prefs.execution = execution
    props.photo_source, props.photo_path, props.model = "FILE", photo, model_or_missing
    job = operators.start_job(bpy.context)
    assert jobs.current() is job and not job.finished
    assert bpy.ops.monohuman.cancel() == {"FINISHED"}
    assert job.wait(timeout=60) == jobs.CANCELLED
    if execution == "BACKEND":
        assert not job.server.pending(job.id)  # the backend has given the request up (or was stopped)
    else:
        assert not job._thread.is_alive()  # the worker has stopped
    op = FakeOp()
    assert operators.finish_job(op, bpy.context, job) == {"CANCELLED"}
    assert any("cancelled" in msg for _, msg in op.reports)
    assert snapshot() == clean_scene


# --------------------------------------------------------------------------------------------------
# End to end: rendered photo + tiny checkpoint -> one mesh object, both paths, same mesh


@pytest.mark.parametrize("execution", ["IN_PROCESS", "BACKEND"])
def test_reconstruct_operator_end_to_end(assets, prefs, props, clean_scene, execution):
    photo = need(assets, "person_photo")
    model = need(assets, "tiny_model")
    prefs.execution = execution
    prefs.backend_python = PYTHON
    props.photo_source, props.photo_path, props.model = "FILE", str(photo), str(model)
    props.subject_height, props.project_texture, props.show_landmarks = 1.82, True, True
    bpy.context.scene.cursor.location = (0.5, -1.0, 0.25)
    assert run_reconstruct() == {"FINISHED"}
    new = snapshot()[0]["objects"] - clean_scene[0]["objects"]
    assert len(new) == 2, new  # the mesh and its rig ("Add Armature" is on by default)
    obj = next(bpy.data.objects[n] for n in new if bpy.data.objects[n].type == "MESH")
    assert obj.name.startswith(Path(photo).stem[:60])
    assert obj.parent is not None and obj.parent.type == "ARMATURE" and len(obj.parent.data.bones) == 104
    assert len(obj.vertex_groups) > 10
    from PIL import Image

    with Image.open(photo) as im:
        size = im.size
    scale = min(1.0, 2048 / max(size))
    check_body(obj, 1.82, 0.25, photo_image_size=(round(size[0] * scale), round(size[1] * scale)))
    assert tuple(obj.matrix_world.translation)[:2] == pytest.approx((0.5, -1.0))
    assert obj["monohuman_photo"] == str(photo)
    assert bpy.data.images.get(obj["monohuman_landmarks_image"]) is not None


def test_in_process_and_backend_give_the_same_mesh(assets, prefs, addon, tmp_path):
    photo = need(assets, "person_photo")
    model = need(assets, "tiny_model")
    from blender_addon import build_mesh, jobs

    results = {}
    for execution in ("IN_PROCESS", "BACKEND"):
        req = {"photo": str(photo), "model": str(model), "method": "vrn", "device": "cpu",
               "subject_height": 1.70, "smoothing": 1, "face_budget": None,
               "output": str(tmp_path / f"{execution}.npz")}
        job = jobs.start(req, execution=execution, python=PYTHON)
        assert job.wait(timeout=E2E_TIMEOUT) == jobs.DONE, job.error
        results[execution] = build_mesh.load_result(job.result_path)
    a, b = results["IN_PROCESS"], results["BACKEND"]
    assert a["faces"].shape == b["faces"].shape and np.array_equal(a["faces"], b["faces"])
    np.testing.assert_allclose(a["vertices"], b["vertices"], atol=1e-5)
    np.testing.assert_allclose(a["uv"], b["uv"], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Smaller pieces


def test_image_already_in_blender_becomes_a_file(addon, clean_scene, tmp_path):
    from blender_addon import build_mesh

    img = bpy.data.images.new("loaded photo", 8, 4, alpha=True)
    px = np.zeros((4, 8, 4), np.float32)
    px[..., 0] = np.linspace(0, 1, 8)[None, :]
    px[..., 3] = 1
    img.pixels.foreach_set(px.ravel())
    path = build_mesh.image_file_for(img, tmp_path)
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape == (4, 8, 3)
    assert np.abs(arr[0, :, 0].astype(float) - np.round(np.linspace(0, 255, 8))).max() <= 1
    assert set(bpy.data.images.keys()) - clean_scene[0]["images"] == {"loaded photo"}  # no temp left


def test_backend_protocol_rejects_bad_request():
    proc = subprocess.run([PYTHON, "-m", "core.backend"], input="not json\n", capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    import json

    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 2 and last["kind"] == "InputError" and "not valid JSON" in last["error"]


def test_check_backend_operator(prefs):
    prefs.backend_python = PYTHON
    assert bpy.ops.monohuman.check_backend(wait=True) == {"FINISHED"}
    assert prefs.check_report.startswith("OK"), prefs.check_report
    assert "torch" in prefs.check_report


class _Layout:
    """Accepts any UILayout call (headless Blender has no real layout to draw into)."""

    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        def call(*args, **kw):
            self.calls.append((name, args, kw))
            return _Layout(self.calls)

        return call

    def __setattr__(self, name, value):
        if name == "calls":
            object.__setattr__(self, name, value)


def test_panel_and_preferences_draw_in_every_state(prefs, props, tmp_path):
    from blender_addon import jobs, panel, preferences

    calls = []
    fake = type("P", (), {"layout": _Layout(calls)})()
    ctx = bpy.context
    for source in ("FILE", "IMAGE"):
        props.photo_source, props.photo_path = source, str(ASTRONAUT)
        panel.MONOHUMAN_PT_main.draw(fake, ctx)
    running = jobs.Job({"output": str(tmp_path / "x.npz")})  # a job that is "running"
    running.stage, running.fraction, running._alive = "network", 0.45, lambda: True
    failed = jobs.Job({"output": str(tmp_path / "y.npz")})
    failed.state, failed.error = jobs.ERROR, "No person found in blank.png. Use a photo of one person."
    old = jobs._current
    try:
        for job in (running, failed):
            jobs._current = job
            panel.MONOHUMAN_PT_main.draw(fake, ctx)
    finally:
        jobs._current = old
    names = [c[0] for c in calls]
    assert "progress" in names and "template_icon" in names
    assert any(c[0] == "operator" and c[1][0] == "monohuman.cancel" for c in calls)
    assert any(c[0] == "label" and "No person found" in c[2].get("text", "") for c in calls)
    preferences.MonohumanPreferences.draw(type("Q", (), {"layout": _Layout(calls), **{
        k: getattr(prefs, k) for k in ("execution", "backend_python", "check_report", "models_dir", "device",
                                     "idle_minutes")}})(),
        ctx)
    panel.unregister_previews()


INSTALLED_SCRIPT = r"""
import json, sys, bpy, addon_utils
zip_path, photo, model = sys.argv[1:4]
r = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
assert r == {"FINISHED"}, r
name = "bl_ext.user_default.monohuman"
assert name in bpy.context.preferences.addons
from bl_ext.user_default.monohuman import paths
out = {"user_dir": str(paths.user_dir()), "core_root": str(paths.core_root()), "objects": []}
if photo:
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.device, prefs.execution = "CPU", "IN_PROCESS"
    p = bpy.context.scene.monohuman
    p.photo_path, p.model, p.method = photo, model, "vrn"
    assert bpy.ops.monohuman.reconstruct(wait=True) == {"FINISHED"}
    out["core_imported"] = "core" in sys.modules
    out["vendored"] = sorted(m for m in sys.modules if m.startswith(name + ".vendor.core."))
    out["objects"] = [o.name for o in bpy.data.collections["Monohuman"].objects]
addon_utils.disable(name, default_set=True)
assert not hasattr(bpy.types, "MONOHUMAN_PT_main")
print("RESULT " + json.dumps(out))
"""


def test_zip_installs_as_an_extension(assets, tmp_path):
    """The built zip installs into a fresh Blender user folder, registers, and (with the fixtures)
    reconstructs in-process with the vendored core, writing into the extension user folder."""
    from scripts.build_addon import build

    zip_path = build(tmp_path / "dist", include_models=False)
    photo, model = assets["person_photo"] or "", assets["tiny_model"] or ""
    if not (photo and model):
        photo = model = ""
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender_home")}
    env.pop("MONOHUMAN_USER_DIR", None)
    proc = subprocess.run([PYTHON, "-c", INSTALLED_SCRIPT, str(zip_path), photo, model], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=E2E_TIMEOUT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json

    out = json.loads(lines[-1][len("RESULT "):])
    ext = tmp_path / "blender_home" / "extensions"
    assert Path(out["user_dir"]) == ext / ".user" / "user_default" / "monohuman"
    assert Path(out["core_root"]) == ext / "user_default" / "monohuman" / "vendor"
    if photo:
        assert not out["core_imported"]  # the vendored library runs as <extension>.vendor.core
        assert "bl_ext.user_default.monohuman.vendor.core.reconstruct" in out["vendored"]
        assert out["objects"] == [Path(photo).stem[:60]]
        assert list((Path(out["user_dir"]) / "results").glob("*.npz"))


# --------------------------------------------------------------------------------------------------
# For real use: headless scripts, the warm backend, the private package name (issue 15)

EXAMPLE = ROOT / "examples" / "person.png"  # the project's own rendered photo; the shipped models run on it


@pytest.mark.slow  # starts Blender or the backend process and reconstructs
def test_headless_script_two_meshes_warm_backend_and_a_decoy_core(tmp_path):
    """A plain script in a fresh Blender user folder, with a stranger package named `core` imported in
    Blender and on PYTHONPATH: two `bpy.ops.monohuman.reconstruct()` calls with the backend give two meshes
    (one warm backend process serves both), and in-process runs the vendored copy under the add-on's name."""
    from scripts.build_addon import build

    zip_path = build(tmp_path / "dist", include_models=False)
    proc = subprocess.run([PYTHON, str(ROOT / "bench" / "addon_headless.py"), "--zip", str(zip_path),
                           "--photo", str(EXAMPLE), "--python", PYTHON, "--runs", "BACKEND,BACKEND,IN_PROCESS",
                           "--decoy", str(tmp_path / "decoy"), "--user-dir", str(tmp_path / "blender_home")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=2 * E2E_TIMEOUT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    import json

    out = json.loads(lines[-1][len("RESULT "):])
    assert out["background"]
    assert [r["return"] for r in out["runs"]] == [["FINISHED"]] * 3
    meshes = [name for name, kind in out["objects"] if kind == "MESH"]
    assert len(meshes) == 3 and all(n.startswith("person") for n in meshes), out["objects"]
    assert len(out["objects"]) == 6  # each with its armature ("Add Armature" is on by default)
    first, second = out["runs"][:2]
    assert first["backend_pid"] is not None and first["backend_pid"] == second["backend_pid"]
    assert out["core_is_decoy"]  # the add-on left the stranger alone ...
    assert "bl_ext.user_default.monohuman.vendor.core.reconstruct" in out["vendored_modules"] or \
        any(m.startswith("bl_ext.user_default.monohuman.vendor.core") for m in out["vendored_modules"])


def test_options_are_captured_when_the_job_starts(prefs, props, clean_scene):
    """Switching "Add Armature", the texture option, the photo and the 3D cursor during a run changes
    nothing in that run's result."""
    from blender_addon import jobs, operators

    prefs.execution, prefs.backend_python = "BACKEND", PYTHON
    props.photo_source, props.photo_path, props.model, props.method = "FILE", str(EXAMPLE), "default", "vrn"
    props.add_armature, props.project_texture, props.show_landmarks = True, True, False
    bpy.context.scene.cursor.location = (1.0, 2.0, 0.5)
    job = operators.start_job(bpy.context)
    props.add_armature, props.project_texture, props.show_landmarks = False, False, True
    props.photo_path = str(ASTRONAUT)
    bpy.context.scene.cursor.location = (-3.0, 0.0, 0.0)
    assert not job.finished  # the switches happened during the run
    assert job.wait(timeout=E2E_TIMEOUT) == jobs.DONE, job.error
    op = FakeOp()
    assert operators.finish_job(op, bpy.context, job) == {"FINISHED"}, op.reports
    new = [bpy.data.objects[n] for n in snapshot()[0]["objects"] - clean_scene[0]["objects"]]
    obj = next(o for o in new if o.type == "MESH")
    assert obj.name.startswith("person") and obj.parent is not None and obj.parent.type == "ARMATURE"
    assert tuple(obj.matrix_world.translation) == pytest.approx((1.0, 2.0, 0.5), abs=1e-4)
    assert any(n.type == "TEX_IMAGE" and n.image is not None for n in obj.active_material.node_tree.nodes)
    assert "monohuman_landmarks_image" not in obj


def test_backend_reads_the_photo_before_heavy_imports(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from core.backend import run_request\n"
            "try:\n    run_request({'photo': sys.argv[2], 'output': sys.argv[3]})\n"
            "except Exception as exc:\n    print(type(exc).__name__, 'torch' in sys.modules, exc)\n")
    proc = subprocess.run([PYTHON, "-c", code, str(ROOT), str(fake), str(tmp_path / "r.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("InputError False Not a readable image"), proc.stdout + proc.stderr


def _server_request(server, op, request, timeout=60.0):
    import queue

    got = queue.Queue()
    server.submit(op, request, got.put)
    msgs = []
    while True:
        msgs.append(got.get(timeout=timeout))
        if any(k in msgs[-1] for k in ("done", "error", "cancelled")):
            return msgs


@pytest.mark.slow  # starts Blender or the backend process and reconstructs
def test_warm_backend_serves_restarts_and_stops(addon, tmp_path):
    """One process answers several requests; a stranger `core` on the caller's PYTHONPATH is not the one it
    runs; killed, the next request gets a new one; idle, it stops by itself; its logs are pruned."""
    from blender_addon import jobs, server

    decoy = tmp_path / "decoy" / "core"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("DECOY = True\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(decoy.parent)
    try:
        first = jobs.backend(PYTHON, idle_timeout=600)
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)
    assert first.wait_ready(60), first.problem
    assert Path(first.info["core"]) == ROOT / "core"
    fake = tmp_path / "notes.png"
    fake.write_text("not a photo")
    for _ in range(2):
        msgs = _server_request(first, "reconstruct", {"photo": str(fake), "output": str(tmp_path / "r.npz")})
        assert msgs[-1]["kind"] == "InputError" and "Not a readable image" in msgs[-1]["error"]
    warm = _server_request(first, "warmup", {"method": "vrn", "model": "default", "device": "cpu"}, timeout=300)
    assert warm[-1] == {"done": ""}, warm  # Start Backend: torch, the detector and the model loaded ahead
    assert first.alive() and jobs.backend(PYTHON, idle_timeout=600) is first
    first.kill()
    first.process.wait(timeout=10)
    second = jobs.backend(PYTHON, idle_timeout=600)
    assert second is not first and second.wait_ready(60) and second.process.pid != first.process.pid
    server.shutdown()
    assert second.process.poll() is not None

    idle = server.BackendServer(PYTHON, ROOT, idle_timeout=0.5)
    assert idle.process.wait(timeout=60) == 0 and idle.info is not None  # said "ready", then left when idle

    logs = server.logs_dir()
    for i in range(8):
        (logs / f"backend-2000010{i}-000000-abcdef.log").write_text("old")
    server.prune_logs(logs)
    assert len(list(logs.glob("backend-*.log"))) == server.KEEP_LOGS


@pytest.mark.slow  # starts Blender or the backend process and reconstructs
def test_cancel_a_queued_request_at_once(addon, tmp_path):
    from blender_addon import server

    backend = server.BackendServer(PYTHON, ROOT, idle_timeout=60)
    try:
        import queue

        got = queue.Queue()
        job_id = backend.submit("reconstruct", {"photo": str(EXAMPLE), "output": str(tmp_path / "r.npz")}, got.put)
        backend.cancel(job_id)  # it reaches the backend before the request has started
        assert got.get(timeout=60) == {"cancelled": True, "kind": "Cancelled"}
        assert not backend.pending(job_id) and backend.alive()
    finally:
        backend.stop()


def test_vendored_source_makes_core_imports_relative():
    from scripts.build_addon import vendored_source

    src = ("from core.errors import InputError\nimport core.networks.hmnet  # noqa: F401\n"
           "def f():\n    from core import frame\n    return frame\n")
    assert vendored_source(src, 1) == ("from .errors import InputError\nfrom .networks import hmnet  # noqa: F401\n"
                                       "def f():\n    from . import frame\n    return frame\n")
    assert vendored_source("from core.parts import X\n", 2) == "from ..parts import X\n"
    with pytest.raises(ValueError, match="cannot vendor"):
        vendored_source("import core\n", 1)
