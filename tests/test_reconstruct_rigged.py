"""Both methods give a posable character: HMNet's Anny body with its rig, and a VRN surface rigged from a fitted
HMNet body. Real parts: the shipped models, mediapipe, a photo the project renders."""

from __future__ import annotations

import os

import numpy as np
import pytest

from core.errors import ModelError
from core.reconstruct import reconstruct
from core.rig import pose_transforms, raise_arm, skin

HMNET = os.environ.get("MONOHUMAN_TEST_HMNET", "default")


def _bones_below(rig, name):
    return rig.descendants(rig.index(name))


def _posed_motion(mesh, rig, side="L", degrees=60.0):
    G = pose_transforms(rig, raise_arm(rig, side, degrees))
    v = np.asarray(mesh.vertices)
    return np.linalg.norm(skin(v, rig.skin_index, rig.skin_weight, G) - v, axis=1)


def _weight_on(rig, bones: np.ndarray) -> np.ndarray:
    """Per vertex: the total skin weight on the given bones."""
    return (rig.skin_weight * bones[rig.skin_index]).sum(1)


def _check_rig(mesh, rig):
    n = len(mesh.vertices)
    assert rig.skin_index.shape[0] == rig.skin_weight.shape[0] == n
    assert np.allclose(rig.skin_weight.sum(1), 1.0, atol=1e-5) and (rig.skin_weight >= 0).all()
    assert len(rig.names) == 104 and rig.heads.shape == rig.tails.shape == (104, 3)
    lo, hi = mesh.bounds
    assert ((rig.heads > lo - 0.1) & (rig.heads < hi + 0.1)).all()  # the armature is inside the body

    moved = _posed_motion(mesh, rig, "L", 60.0)
    arm = _weight_on(rig, _bones_below(rig, "lowerarm01.L")) > 0.9  # forearm and hand
    legs = _weight_on(rig, _bones_below(rig, "upperleg01.L") | _bones_below(rig, "upperleg01.R")) > 0.999
    assert arm.sum() > 0.01 * n and legs.sum() > 0.05 * n
    assert moved[arm].min() > 0.05  # no forearm or hand vertex left at the rest position
    assert moved[legs].max() < 1e-6


@pytest.fixture(scope="module")
def hmnet_result(person_photo):
    return reconstruct(person_photo, model=HMNET, method="hmnet", device="cpu", subject_height=1.80)


def test_hmnet_gives_anny_topology_at_the_subject_height(hmnet_result):
    from core.template import load_template

    mesh = hmnet_result.mesh
    assert len(mesh.vertices) == 13718 and np.array_equal(mesh.faces, load_template().faces)
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert extent[2] == pytest.approx(1.80, abs=1e-6) and extent[0] < extent[2] and extent[1] < extent[2]
    assert hmnet_result.volume is None and hmnet_result.method == "hmnet"
    assert hmnet_result.joints.shape == (104, 3)
    assert np.allclose(hmnet_result.rig.heads, hmnet_result.joints)
    assert hmnet_result.uv.shape == (13718, 2) and (hmnet_result.uv >= 0).all() and (hmnet_result.uv <= 1).all()


def test_hmnet_body_poses(hmnet_result):
    _check_rig(hmnet_result.mesh, hmnet_result.rig)


@pytest.fixture(scope="module")
def vrn_rigged(person_photo):
    return reconstruct(person_photo, method="vrn", rig=True, rig_model=HMNET, device="cpu")


def test_vrn_surface_is_rigged_from_the_fitted_body(vrn_rigged):
    result = vrn_rigged
    assert result.rig is not None and "rig" in result.timings
    _check_rig(result.mesh, result.rig)
    # the fit put the arm's bones where the surface's arm is: forearm/hand vertices lie near their bones
    arm = _weight_on(result.rig, _bones_below(result.rig, "lowerarm01.L")) > 0.9
    bones = np.nonzero(_bones_below(result.rig, "lowerarm01.L"))[0]
    near = np.min(np.linalg.norm(np.asarray(result.mesh.vertices)[arm, None] - result.rig.heads[bones][None], axis=2),
                  axis=1)
    assert np.median(near) < 0.15


def test_vrn_surface_has_the_fitted_hands_and_feet(vrn_rigged):
    """#13: whatever the volume resolves, the rigged surface has ten fingers and two feet (the fitted body's,
    `core.extremities`): it passes within 2 cm of each fingertip and toe tip of the body it was rigged from."""
    from test_extremities import tip_distances

    assert tip_distances(vrn_rigged.mesh, vrn_rigged.rig).max() < 0.02
    assert vrn_rigged.body is not None and vrn_rigged.body.fitted is not None and "extremities" in vrn_rigged.timings
    assert len(vrn_rigged.uv) == len(vrn_rigged.mesh.vertices) and ((vrn_rigged.uv >= 0) & (vrn_rigged.uv <= 1)).all()


def test_a_model_of_the_other_method_is_refused(person_photo):
    with pytest.raises(ModelError, match="vrn model, not a hmnet model"):
        reconstruct(person_photo, model="vrn-default", method="hmnet", device="cpu")


def test_cli_hmnet_writes_a_skinned_glb(person_photo, tmp_path, capsys):
    import json

    from core.cli import main
    from test_export_skin import read_glb

    out = tmp_path / "body.glb"
    assert main(["reconstruct", str(person_photo), "--method", "hmnet", "--model", HMNET, "-o", str(out),
                 "--json", "-q", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == "hmnet" and summary["bones"] == 104 and summary["vertices"] == 13718
    gltf, _ = read_glb(out)
    assert len(gltf["skins"][0]["joints"]) == 104
    assert {"JOINTS_0", "WEIGHTS_0"} <= set(gltf["meshes"][0]["primitives"][0]["attributes"])


def test_backend_result_carries_the_rig_for_blender(person_photo, tmp_path):
    from core.backend import load_result, run_request

    path = run_request({"photo": str(person_photo), "output": str(tmp_path / "r.npz"), "method": "vrn",
                        "rig": True, "rig_model": HMNET, "device": "cpu"})
    res = load_result(path)
    n = len(res["vertices"])
    assert res["armature_weights"].shape == (n, 104) and np.allclose(res["armature_weights"].sum(1), 1, atol=1e-4)
    assert res["armature_axes"].shape == (104, 3, 3) and len(res["armature_names"]) == 104
