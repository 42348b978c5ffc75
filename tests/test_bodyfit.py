"""The fitted body (`--method fit`): real Blender renders made here, real mediapipe, the shipped body model.

Tolerances from what was measured (docs/RESULTS.md): the posed 256 px render below fits with a mean vertex
error of 71 mm after Procrustes (86 mm before the pose lifter; HumanMeshNet alone: 220 mm); depth along the
line of sight is the weak part.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.poses import ARM_RAISED_KNEE_BENT

pytestmark = pytest.mark.slow

# An arm raised sideways and a knee bent forward: a pose HumanMeshNet's generic standing body does not have.
POSE = ARM_RAISED_KNEE_BENT


def _render(tmp_path_factory, name, yaw):
    from train.render import render_person_photo

    path = tmp_path_factory.mktemp(name) / f"{name}.png"
    info = render_person_photo(path, size=256, seed=7, samples=16, pose_spec=POSE, yaw_deg=(yaw, yaw))
    return {"path": path, **info}


@pytest.fixture(scope="module")
def posed_front(tmp_path_factory):
    return _render(tmp_path_factory, "posed_front", 0.0)


@pytest.fixture(scope="module")
def posed_back(tmp_path_factory):
    return _render(tmp_path_factory, "posed_back", 180.0)


def _fit(rgb):
    import torch

    from core.checkpoint import load_model
    from core.detect import detect_person
    from core.reconstruct import fit_person

    det = detect_person(rgb)
    fitted, _, _ = fit_person(rgb, det, load_model("hmnet-default"), torch.device("cpu"))
    return fitted


def _facing_z(fitted) -> float:
    """Depth component (volume frame: + away from the camera) of the direction the fitted body faces."""
    from core.body_model import rotvec_to_matrix
    from core.bodyfit import ANNY_TO_VOX

    import torch

    R = ANNY_TO_VOX @ rotvec_to_matrix(torch.as_tensor(fitted.params.global_rotation))
    return float((R @ torch.tensor([0.0, -1.0, 0.0], dtype=R.dtype))[2])


def test_fit_matches_a_known_pose(posed_front):
    from train.metrics_mesh import procrustes_align

    fitted = _fit(posed_front["rgb"])
    truth = posed_front["body"]
    aligned = procrustes_align(fitted.vertices, truth.vertices)
    err = np.linalg.norm(aligned - truth.vertices, axis=1)
    assert err.mean() < 0.11, f"mean vertex error after Procrustes {err.mean() * 1000:.0f} mm"
    names = list(truth.joint_names)
    heads = procrustes_align(fitted.heads, truth.joints)
    # The bent knee's depth (thigh 45 degrees towards the camera) is the hardest part: 0.18 m off with
    # mediapipe's world landmarks alone, 0.29 m with the pose lifter (mediapipe puts the knee 2 px low, so the
    # 2D thigh is barely foreshortened: 0.96 of the other's length against 0.83 in truth, and the lifter reads
    # it as leaning back), which is 12 mm better on the first 24 held-out renders (docs/RESULTS.md).
    for bone, tolerance in (("wrist.L", 0.12), ("wrist.R", 0.12), ("lowerleg01.R", 0.33), ("foot.R", 0.33)):
        j = names.index(bone)
        assert np.linalg.norm(heads[j] - truth.joints[j]) < tolerance, bone
    # the raised arm is up: the left wrist well above the left shoulder, in the body's own up direction
    up = truth.joints[names.index("neck01")] - truth.joints[names.index("root")]
    lift = (heads[names.index("wrist.L")] - heads[names.index("upperarm01.L")]) @ (up / np.linalg.norm(up))
    assert lift > 0.2
    assert _facing_z(fitted) < -0.5  # facing the camera


def test_body_seen_from_behind_is_not_fitted_facing_the_camera(posed_back):
    fitted = _fit(posed_back["rgb"])
    assert _facing_z(fitted) > 0.5


def test_prior_keeps_wrists_untwisted_and_joints_within_limits(posed_front):
    from core.body_model import FIT_BONES, load_body_model

    fitted = _fit(posed_front["rgb"])
    body = load_body_model()
    pose = fitted.params.pose
    lo, hi = np.asarray(body.limits_lo), np.asarray(body.limits_hi)
    assert np.all(pose >= lo - 1e-3) and np.all(pose <= hi + 1e-3)
    for side in ("L", "R"):  # no hand landmarks are used: the wrists must stay near the prior's range
        angle = np.degrees(np.linalg.norm(pose[FIT_BONES.index(f"wrist.{side}")]))
        assert angle < 45.0, f"wrist.{side} turned {angle:.0f} degrees"


def test_half_body_photo_fits_with_a_warning(posed_front):
    from core.reconstruct import reconstruct

    rgb = np.ascontiguousarray(posed_front["rgb"][: int(0.5 * posed_front["rgb"].shape[0])])
    result = reconstruct(rgb, method="fit")
    assert len(result.mesh.vertices) == 13718
    guessed = [w for w in result.warnings if "guessed" in w]
    assert guessed and "leg" in guessed[0], result.warnings


def test_portrait_without_hips_is_fitted_upright():
    """skimage's astronaut (a real photo, read at test time): a portrait cut at the waist. With nothing below the
    waist the arms' 3D directions leaned the whole body 19 degrees towards the camera; `half_body_priors` keeps
    it at 13 (7.5 of them the camera elevation the prior expects)."""
    from skimage import data

    fitted = _fit(np.ascontiguousarray(data.astronaut()))
    assert {"left leg", "right leg"} <= set(fitted.guessed)
    assert _lean_towards_camera(fitted) < 16.0


def _lean_towards_camera(fitted) -> float:
    """Degrees by which the fitted torso (mid-hips -> mid-shoulders) leans towards the camera."""
    from core.body_model import load_body_model

    names = load_body_model().names
    at = lambda b: fitted.heads[names.index(b)]  # noqa: E731
    up = (at("upperarm01.L") + at("upperarm01.R") - at("upperleg01.L") - at("upperleg01.R")) / 2
    return float(np.degrees(np.arcsin(-up[2] / np.linalg.norm(up))))


def test_no_person_is_still_no_person():
    from core.errors import NoPersonError
    from core.reconstruct import reconstruct

    with pytest.raises(NoPersonError):
        reconstruct(np.full((256, 256, 3), 128, np.uint8), method="fit")


def test_parameters_reload_to_the_same_mesh(person_photo, tmp_path):
    from core.cli import main

    out1, out2 = tmp_path / "a.glb", tmp_path / "b.glb"
    assert main(["reconstruct", str(person_photo), "-o", str(out1), "--method", "fit", "-q"]) == 0
    params = tmp_path / "a.glb.fit.json"
    doc = json.loads(params.read_text())
    assert set(doc["phenotype"]) == {"gender", "age", "muscle", "weight", "height", "proportions"}
    assert main(["reconstruct", str(person_photo), "-o", str(out2), "--init", str(params), "--no-refine",
                 "-q"]) == 0
    import trimesh

    a = trimesh.load(out1, force="mesh", process=False)
    b = trimesh.load(out2, force="mesh", process=False)
    assert np.abs(np.asarray(a.vertices) - np.asarray(b.vertices)).max() < 1e-5


def test_bad_parameters_file_is_one_clear_error(person_photo, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    proc = subprocess.run([sys.executable, "-m", "core", "reconstruct", str(person_photo), "-o",
                           str(tmp_path / "x.glb"), "--init", str(bad), "-q"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "MONOHUMAN_DEBUG": ""})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "fit parameters" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "x.glb").exists()


def test_body_model_poses_like_anny():
    """core.body_model (no anny at run time) against anny itself: a random shape in a random pose."""
    import torch
    from scipy.spatial.transform import Rotation

    from core.body_model import FIT_BONES, PHENOTYPE_KEYS, load_body_model
    from train import bodies, poses

    body = load_body_model()
    rng = np.random.default_rng(21)
    phenotype = {k: float(rng.uniform(0.1, 0.9)) for k in PHENOTYPE_KEYS}
    rest = {k: v for k, v in bodies.rest_skeleton(phenotype).items() if k != "__vertices__"}
    pose = poses.sample_pose(rng, rest, kind="running")
    verts, heads = bodies._forward(phenotype, pose["deltas"])
    rotvecs = np.array([Rotation.from_matrix(pose["deltas"].get(b, np.eye(3))).as_rotvec() for b in FIT_BONES])
    with torch.no_grad():
        rv, rh = body.rest(torch.tensor([phenotype[k] for k in PHENOTYPE_KEYS], dtype=torch.float64))
        posed = body.pose(rv, rh, torch.as_tensor(rotvecs))
    err = np.linalg.norm(posed.vertices.numpy() - verts, axis=1)
    assert err.mean() < 0.004 and err.max() < 0.02, (err.mean(), err.max())
    assert np.linalg.norm(posed.heads.numpy() - heads, axis=1).max() < 0.01
    # the keypoints the fit reads are anny's COCO regressor on the same vertices
    pts, weight = body.mediapipe_points(posed, body.keypoint_matrices(np.arange(body.n_vertices)))
    coco = bodies.topology().kp_weights @ verts
    from core.correspondence import COCO17_TO_MEDIAPIPE

    assert np.abs(pts.numpy()[COCO17_TO_MEDIAPIPE] - coco).max() < 0.02


def test_lying_person_and_upper_body_are_named(posed_front):
    """Issue 16, case 8: a photo turned on its side and a close-up without hips are said, not silently
    reconstructed as if standing and whole."""
    from core.detect import detect_person

    side = np.ascontiguousarray(np.rot90(posed_front["rgb"]))
    assert any("lying down" in w for w in detect_person(side).warnings)
    close = np.ascontiguousarray(posed_front["rgb"][: int(0.42 * posed_front["rgb"].shape[0])])
    assert any("upper body" in w for w in detect_person(close).warnings)
    assert not detect_person(posed_front["rgb"]).warnings


def test_rotation_has_a_gradient_at_rest():
    """A bone that starts at rest (axis-angle 0) must be able to move: Rodrigues' normalised-axis form has a
    zero gradient there, which froze every pose started from the rest pose."""
    import torch
    from scipy.spatial.transform import Rotation

    from core.body_model import rotvec_to_matrix

    rv = np.array([[0.3, -0.2, 1.1], [1e-6, 0.0, 0.0], [0.0, 0.0, 0.0], [2.5, 0.1, -0.4]])
    np.testing.assert_allclose(rotvec_to_matrix(torch.tensor(rv)).numpy(), Rotation.from_rotvec(rv).as_matrix(),
                               atol=1e-12)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    rotvec_to_matrix(x)[1, 0].backward()  # d R / d rv at rest is the cross-product matrix: R[1, 0] = rv_z
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0, 1.0], atol=1e-12)


def test_camera_elevation_prior_prefers_a_camera_slightly_above():
    """A camera above the person sees the head nearer than the feet: the prior is least for that tilt
    (CAMERA_ELEVATION_DEG's mean), and a camera below the person costs more than one level with them."""
    import torch

    from core.body_model import rotvec_to_matrix
    from core.bodyfit import ANNY_TO_VOX, CAMERA_ELEVATION_DEG, camera_elevation_prior

    def tilt(deg):  # the body turned about its left-right axis
        return torch.tensor([np.radians(deg), 0.0, 0.0], dtype=torch.float64)

    mean = CAMERA_ELEVATION_DEG[0]
    best = min((-mean, mean), key=lambda d: float(camera_elevation_prior(tilt(d))))
    assert float(camera_elevation_prior(tilt(best))) < 1e-12
    head = ANNY_TO_VOX @ rotvec_to_matrix(tilt(best)) @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert float(head[2]) < 0  # the head is nearer the camera than the body's centre
    below = float(camera_elevation_prior(tilt(-best)))
    assert below > float(camera_elevation_prior(tilt(0.0))) > 0


def test_fit_starts_from_anny_mean_phenotype(posed_front):
    """Without a given phenotype the start is anny's mean person, not the middle of every range (0.5 made the
    fits 0.2 too young and too tall: the fit barely moves the phenotype)."""
    from core.body_model import load_body_model
    from core.bodyfit import evidence_from_detection, initial_params
    from core.crop import crop_box_from_mask
    from core.detect import detect_person

    det = detect_person(posed_front["rgb"])
    ev = evidence_from_detection(det, crop_box_from_mask(det.mask, aspect_wh=1.0), (128, 128, 128))
    start = initial_params(ev)
    np.testing.assert_allclose(start.phenotype, load_body_model().phenotype_mean.numpy())


def test_evidence_carries_the_lifted_landmarks(posed_front):
    """The evidence holds the pose lifter's 3D landmarks on the detected 2D ones (its depth is tested in
    tests/test_lifter.py); `lifted=False` leaves them out, which is the `fit-no-lifter` ablation."""
    from core.bodyfit import evidence_from_detection
    from core.crop import crop_box_from_mask
    from core.detect import detect_person

    det = detect_person(posed_front["rgb"])
    box = crop_box_from_mask(det.mask, aspect_wh=1.0)
    ev = evidence_from_detection(det, box, (128, 128, 128))
    body = [0, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]
    np.testing.assert_allclose(ev.lifted[body, :2], ev.points[body])
    assert np.isfinite(ev.lifted[body]).all() and np.isnan(ev.lifted[17:23]).all()  # no hand points
    spread = np.ptp(ev.lifted[body, 2])  # a standing body is deep, in pixels of the 128 px volume
    assert 5 < spread < 60
    assert evidence_from_detection(det, box, (128, 128, 128), lifted=False).lifted is None


def test_armature_pose_reads_back_as_fit_parameters():
    """What the add-on's refit sends: the rig's pose (rest -> posed per bone, metric frame, scaled to the subject's
    height) gives back the bone rotations and the orientation that made it, so a re-posed rig can start a refit."""
    from scipy.spatial.transform import Rotation

    from core.body_model import FIT_BONES, load_body_model
    from core.bodyfit import FitParams, params_from_armature_pose, pose_body
    from core.reconstruct import fit_to_metric, rest_rig

    body = load_body_model()
    rng = np.random.default_rng(3)
    lo, hi = np.asarray(body.limits_lo), np.asarray(body.limits_hi)
    pose = lo + (hi - lo) * rng.uniform(0.3, 0.7, lo.shape)
    params = FitParams(body.phenotype_mean.numpy().copy(), pose, np.array([0.2, -0.4, 2.9]), 40.0, np.array([60.0, 70.0]))
    fitted = pose_body(params, (128, 128, 128), body)
    _, rig = rest_rig(fitted, fit_to_metric(fitted, 1.62), 1.62)
    back = params_from_armature_pose(params, rig.names, rig.parents, rig.pose)
    turned = Rotation.from_rotvec(back.pose) * Rotation.from_rotvec(pose).inv()
    assert np.degrees(turned.magnitude()).max() < 1e-4
    assert np.degrees((Rotation.from_rotvec(back.global_rotation) * Rotation.from_rotvec(params.global_rotation).inv()
                       ).magnitude()) < 1e-4
    # an animator turns the left forearm: only that bone's rotation changes
    j = list(rig.names).index("lowerarm01.L")
    below = rig.descendants(j)
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_rotvec([0.0, 0.0, 0.5]).as_matrix()
    head = rig.pose[j] @ np.r_[rig.heads[j], 1.0]
    turn[:3, 3] = head[:3] - turn[:3, :3] @ head[:3]
    moved = rig.pose.copy()
    moved[below] = turn @ moved[below]
    again = params_from_armature_pose(params, rig.names, rig.parents, moved)
    changed = np.degrees(np.abs(again.pose - back.pose).max(1)) > 1e-3
    assert list(np.array(FIT_BONES)[changed]) == ["lowerarm01.L"]
