"""The pose lifter: poses drawn by the project's sampler on real Anny bodies, the shipped network, a tiny training
run through the shared loop, and the fit reading its landmarks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.checkpoint import load_model
from core.errors import DataError
from core.networks.lifter import LIFT_POINTS, LifterConfig, lift, lift_features
from train.fit_lifter import NOISE_M, LiftDataset, LifterTrainConfig, main, make_poses, read_poses, view


@pytest.fixture(scope="module")
def poses(tmp_path_factory):
    """60 bodies in sampled poses (anny's phenotypes, train.poses), written as train.fit_lifter does."""
    path = tmp_path_factory.mktemp("lift") / "poses.npz"
    make_poses(path, count=60, seed=123)
    return path


def test_pose_file_round_trip_and_bad_files(poses, tmp_path):
    points = read_poses([poses])
    assert points.shape == (60, 33, 3) and np.isfinite(points).all()
    heights = np.ptp(points[:, :, 2], axis=1)  # nose above ankles: children and adults, some crouching
    assert 0.2 < heights.min() and heights.max() < 2.1
    with pytest.raises(DataError, match="not found"):
        read_poses([tmp_path / "missing.npz"])
    np.savez(tmp_path / "other.npz", points=np.zeros((3, 17, 3)), info=np.array(json.dumps({"format": "x"})))
    with pytest.raises(DataError, match="not a pose file"):
        read_poses([tmp_path / "other.npz"])


def test_views_keep_bone_lengths_and_turn_about_the_vertical(poses):
    points = read_poses([poses])[:10]
    cam = view(points, np.random.default_rng(0))
    bone = lambda p: np.linalg.norm(p[:, 13] - p[:, 11], axis=-1)  # noqa: E731  (left upper arm)
    np.testing.assert_allclose(bone(cam), bone(points), rtol=1e-9)
    # elevation is at most 25 degrees: the body's up axis stays near the image's up (-y)
    up = cam[:, 11] - cam[:, 27]  # left shoulder above left ankle in every sampled pose but a few
    assert np.median(-up[:, 1] / np.linalg.norm(up, axis=1)) > 0.8


def test_features_are_invariant_to_image_scale_and_shift():
    rng = np.random.default_rng(1)
    xy = rng.normal(size=(len(LIFT_POINTS), 2))
    present = np.ones(len(LIFT_POINTS), bool)
    present[3] = False
    f1, _, s1 = lift_features(xy, present)
    f2, _, s2 = lift_features(xy * 7.0 + 40.0, present)
    np.testing.assert_allclose(f1, f2, atol=1e-5)
    assert np.isclose(s2, 7 * s1) and f1[6:8].tolist() == [0.0, 0.0]  # the absent point reads as zero


def test_shipped_lifter_knows_depth_the_image_does_not_show(poses):
    """On bodies it never saw, from random views, the shipped lifter's depths are far closer to the truth than
    'no depth' (every point at the mean depth). Its validation figure is 40-55 mm on the sampler's views, 74 mm
    on mediapipe's landmarks of held-back renders when it learned from those too (docs/RESULTS.md)."""
    loaded = load_model("pose-lifter")
    assert loaded.meta["metrics"]["val_depth_mm"] < (80 if loaded.meta.get("detections") else 60)
    cam = view(read_poses([poses])[:, list(LIFT_POINTS)], np.random.default_rng(7))
    errors, flat = [], []
    for body in cam:
        pts = np.zeros((33, 3))
        pts[list(LIFT_POINTS)] = body
        got = lift(loaded.network, pts * 200.0, np.ones(33))  # metres -> pixels: the lifter does not care
        assert np.isnan(got[17:23]).all() and np.isfinite(got[list(LIFT_POINTS)]).all()
        z, true_z = got[list(LIFT_POINTS), 2] / 200.0, body[:, 2]
        errors.append(np.abs((z - z.mean()) - (true_z - true_z.mean())).mean())
        flat.append(np.abs(true_z - true_z.mean()).mean())
    assert np.mean(errors) < 0.5 * np.mean(flat)


def test_lift_answers_the_mirrored_person_with_the_mirrored_depths(poses):
    """`lift` averages its answers for the person and their mirror image, so mirroring the 2D points (x negated,
    left and right swapped) mirrors the answer exactly."""
    from core.landmarks import FLIP_33

    net = load_model("pose-lifter").network
    body = view(read_poses([poses])[:1], np.random.default_rng(3))[0] * 200.0
    vis = np.ones(33)
    vis[16] = 0.0  # one point missing: its mirror's answer must not use it either
    got = lift(net, body, vis)
    mirrored = lift(net, body[list(FLIP_33)] * [-1.0, 1.0, 1.0], vis[list(FLIP_33)])
    idx = list(LIFT_POINTS)
    assert np.allclose(mirrored[list(FLIP_33)][idx, 2], got[idx, 2], atol=1e-4)


def test_lift_needs_two_visible_points():
    net = load_model("pose-lifter").network
    vis = np.zeros(33)
    vis[11] = 1.0
    assert lift(net, np.random.default_rng(0).normal(size=(33, 2)), vis) is None


def test_training_runs_in_the_shared_loop_and_resumes(poses, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(poses), "--out", str(run), "--variant", "lifter-small", "--width", "32", "--batch-size", "16",
            "--val-samples", "10", "--threads", "1"]
    assert main(args + ["--epochs", "3", "--max-steps", "4"]) == 0  # stops inside the second epoch
    assert main(["--out", str(run), "--resume"]) == 0
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 4 and log[0].startswith("epoch,step,lr,train_loss,val_depth_mm")
    loaded = load_model(run / "model.json")
    assert isinstance(loaded.config, LifterConfig) and loaded.config.width == 32
    assert loaded.meta["views"]["noise_m"]["25"] == NOISE_M[25]
    val = [float(row.split(",")[4]) for row in log[1:]]
    assert all(np.isfinite(val)) and val[-1] < val[0]


def test_validation_views_stay_fixed_and_training_views_change(poses):
    points = read_poses([poses])
    cfg = LifterTrainConfig()
    fixed, moving = LiftDataset(points, cfg, LIFT_POINTS, True), LiftDataset(points, cfg, LIFT_POINTS, False)
    before_fixed, before_moving = fixed.x.clone(), moving.x.clone()
    fixed.set_epoch(3), moving.set_epoch(3)
    assert torch.equal(fixed.x, before_fixed) and not torch.equal(moving.x, before_moving)


@pytest.fixture(scope="module")
def detections(tiny_dataset, tmp_path_factory):
    """mediapipe on the tiny dataset's renders (train.detections), made in two goes as a stopped run is."""
    from train.detections import make_detections

    path = tmp_path_factory.mktemp("dets") / "dets.npz"
    first = make_detections([tiny_dataset], path, split="train", limit=3)
    whole = make_detections([tiny_dataset], path, split="train")
    return path, first, whole


def test_detections_sit_on_the_true_points_and_a_stopped_run_continues(detections):
    from train.detections import read_detections

    path, first, whole = detections
    got = read_detections([path])
    assert first["detections"] + first["no_person"] == 3
    assert whole["detections"] + whole["no_person"] == 12 and whole["detections"] >= 8
    assert len(set(got["files"])) == len(got["files"]) == whole["detections"]
    vis = got["visibility"] >= 0.5
    joints = [11, 12, 23, 24, 25, 26]  # shoulders, hips, knees: where a 64 px render still shows the joint
    miss = np.linalg.norm(got["points"] - got["truth"][..., :2], axis=-1)[:, joints][vis[:, joints]]
    assert np.median(miss) < 3.0  # volume pixels of a 64-wide frame
    assert np.isnan(got["truth"][:, 17:23]).all() and np.isfinite(got["truth"][:, LIFT_POINTS]).all()
    assert np.all(got["mm_per_unit"] > 0)


def test_lifter_learns_from_real_detections_and_scores_them(poses, detections, tmp_path, capsys):
    from train.detections import read_detections
    from train.fit_lifter import DetectionDataset

    path = detections[0]
    data = read_detections([path])
    fixed, moving = DetectionDataset(data, LIFT_POINTS, 0, True), DetectionDataset(data, LIFT_POINTS, 0, False)
    before = moving.x.clone()
    moving.set_epoch(1), fixed.set_epoch(1)
    assert torch.equal(fixed.x, DetectionDataset(data, LIFT_POINTS, 0, True).x)
    assert not torch.equal(moving.x, before)  # about half the people mirrored
    present = fixed.weight > 0
    assert torch.allclose((fixed.target * present).sum(1), torch.zeros(len(fixed)), atol=1e-4)  # depths about their mean

    run = tmp_path / "run"
    args = ["--data", str(poses), "--detections", str(path), "--real-repeat", "3", "--out", str(run),
            "--variant", "lifter-small", "--width", "32", "--batch-size", "16", "--epochs", "2", "--threads", "1"]
    assert main(args) == 0
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 3 and all(np.isfinite(float(row.split(",")[4])) for row in log[1:])
    assert load_model(run / "model.json").meta["detections"] == [str(path)]
    capsys.readouterr()
    assert main(["--score", str(path), "--out", str(run)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["detections"] == len(data["points"]) and 0 < scored["depth_mm_mean"] < 1000
