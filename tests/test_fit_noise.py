"""The fit's noise model (train/fit_noise.py): the truth written in the fit's parameters is the truth, and
perturbed bodies are as wrong as the model says."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from core.body_model import FIT_BONES, load_body_model
from core.bodyfit import pose_body
from core.errors import DataError
from train.dataset import read_manifest
from train.fit_noise import POSE_PARTS, SWAPS, NoiseModel, parameter_errors, perturb, rest_height, truth_params, with_truth
from train.metrics_mesh import pa_mean_distance
from train.samples import read_sample


@pytest.fixture(scope="module")
def sample_and_truth(tiny_dataset):
    row = next(r for r in read_manifest(tiny_dataset) if r.get("split") == "test")
    sample = read_sample(row["path"])
    return sample, truth_params(sample)


def _pa_mm(sample, params, body) -> float:
    """PA surface error (mm) of a parameter set against the sample's true body (a 32x64x64 tiny volume is too
    small for the IoU of train.evaluate_fit)."""
    shape = tuple(int(x) for x in sample["volume_shape"])
    vertices = pose_body(params, shape, body).vertices
    return float(pa_mean_distance(vertices, sample["vertices_vox"].astype(np.float64))) * 1000.0 / float(
        sample["meta"]["px_per_metre"])


def _model(scale: float) -> NoiseModel:
    n = len(FIT_BONES)
    return NoiseModel(np.zeros((n, 3)), np.full((n, 3), 0.15 * scale), np.zeros(3), np.full(3, 0.1 * scale),
                      np.zeros(6), np.full(6, 0.1 * scale), 0.0, 0.03 * scale, np.full(2, 0.02 * scale),
                      flip_rate=0.0, samples=1)


def test_truth_in_fit_parameters_is_the_truth(sample_and_truth):
    sample, truth = sample_and_truth
    error = _pa_mm(sample, truth, load_body_model())
    assert error < 20.0, error  # the parameters can express a rendered body closely
    same = parameter_errors(truth, truth)
    assert np.allclose(same["pose"], 0) and np.allclose(same["global"], 0) and same["log_size"] == 0
    assert same["flipped"] == 0


def test_perturbed_bodies_are_as_wrong_as_the_noise(sample_and_truth):
    sample, truth = sample_and_truth
    body = load_body_model()
    unchanged = perturb(truth, _model(0.0), np.random.default_rng(0))
    assert np.allclose(unchanged.pose, truth.pose) and np.allclose(unchanged.global_rotation, truth.global_rotation)
    assert np.isclose(unchanged.scale, truth.scale)
    none = perturb(truth, dataclasses.replace(_model(1.0), flip_rate=1.0), np.random.default_rng(0), amount=0.0)
    assert np.allclose(none.pose, truth.pose) and np.allclose(none.global_rotation, truth.global_rotation)
    assert np.isclose(none.scale, truth.scale) and np.allclose(none.phenotype, truth.phenotype)
    full = perturb(truth, _model(1.0), np.random.default_rng(5), amount=1.0)
    assert np.array_equal(perturb(truth, _model(1.0), np.random.default_rng(5)).pose, full.pose)
    flipped = perturb(truth, dataclasses.replace(_model(0.0), flip_rate=1.0), np.random.default_rng(0))
    turned = Rotation.from_rotvec(flipped.global_rotation) * Rotation.from_rotvec(truth.global_rotation).inv()
    assert np.degrees(turned.magnitude()) == pytest.approx(180.0)

    def mean_error(scale):
        rng = np.random.default_rng(1)
        return np.mean([_pa_mm(sample, perturb(truth, _model(scale), rng), body) for _ in range(3)])

    small, large = mean_error(0.5), mean_error(2.0)
    assert 5.0 < small < large, (small, large)


def test_swapping_in_the_truth_fixes_only_what_it_names(sample_and_truth):
    """`--swaps` scores the fit with one group of parameters from the truth: that group must equal the truth's,
    the rest stay the fit's, and a true phenotype keeps the fit's size in the image."""
    sample, truth = sample_and_truth
    body = load_body_model()
    fit = perturb(truth, _model(2.0), np.random.default_rng(3))
    size = lambda p: p.scale * rest_height(p.phenotype, body)  # noqa: E731
    both = with_truth(fit, truth, "pose+global", body)
    assert np.array_equal(both.pose, truth.pose) and np.array_equal(both.global_rotation, truth.global_rotation)
    assert np.array_equal(both.phenotype, fit.phenotype) and both.scale == fit.scale
    shaped = with_truth(fit, truth, "phenotype", body)
    assert np.array_equal(shaped.phenotype, truth.phenotype) and size(shaped) == pytest.approx(size(fit))
    assert np.array_equal(shaped.pose, fit.pose)
    sized = with_truth(fit, truth, "size", body)
    assert size(sized) == pytest.approx(size(truth)) and np.array_equal(sized.phenotype, fit.phenotype)
    everything = with_truth(fit, truth, "pose+global+phenotype+size", body)
    assert _pa_mm(sample, everything, body) == pytest.approx(_pa_mm(sample, truth, body), abs=1e-6)
    arms = with_truth(fit, truth, "arms", body)  # a part of the pose: its bones only
    is_arm = np.array([b.startswith(POSE_PARTS["arms"]) for b in FIT_BONES])
    assert is_arm.sum() == 6
    assert np.array_equal(arms.pose[is_arm], truth.pose[is_arm]) and np.array_equal(arms.pose[~is_arm], fit.pose[~is_arm])
    assert all(set(w.split("+")) <= {"global", "pose", "phenotype", "size", *POSE_PARTS} for w in SWAPS)


def test_noise_model_round_trip_and_refusal():
    model = _model(1.0)
    again = NoiseModel.from_json(json.loads(json.dumps(model.to_json())))
    assert np.allclose(again.pose_std, model.pose_std) and again.log_size_std == pytest.approx(0.03)
    with pytest.raises(DataError, match="noise model"):
        NoiseModel.from_json({"format": "something else"})


def test_truth_start_changes_only_where_the_fit_starts():
    """`fit-truth-start` (analysis: where the evidence's own minimum lies) must be the shipped fit in every term and
    stage, so that its figure differs from `fit`'s by the start alone."""
    from train.evaluate_fit import ABLATIONS, variant

    full, truth, rest = variant("fit"), variant("fit-truth-start"), variant("fit-rest-init")
    assert "fit-truth-start" in ABLATIONS
    assert (full.start, truth.start, rest.start) == ("network", "truth", "rest")
    assert truth._replace(start="network") == full and rest._replace(start="network") == full


def test_refit_ablation_starts_near_the_truth_and_keeps_to_it():
    """`fit-refit-N` (the add-on's refit, measured): the shipped fit with the pull KEEP_POSE, starting from the
    true pose turned about N degrees a bone, the same turn for the same sample every run."""
    from scipy.spatial.transform import Rotation

    from core.bodyfit import KEEP_POSE, FitParams
    from train.evaluate_fit import animator_pose, variant

    full, refit = variant("fit"), variant("fit-refit-10")
    assert (refit.start, refit.turn_deg, refit.priors["init"]) == ("animator", 10.0, KEEP_POSE)
    assert refit._replace(start="network", turn_deg=0.0, priors=full.priors) == full
    assert variant("fit-refit-10-as-is") == refit._replace(refine=False)  # the animator's pose, unfitted
    rng = np.random.default_rng(0)
    truth = FitParams(np.full(6, 0.5), rng.normal(0, 0.3, (17, 3)), np.array([0.1, 0.2, 3.0]), 40.0, np.zeros(2))
    pose, rotation = animator_pose(truth, 10.0, seed=7)
    turns = np.degrees((Rotation.from_rotvec(pose) * Rotation.from_rotvec(truth.pose).inv()).magnitude())
    assert 5.0 < np.median(turns) < 25.0  # a 3-axis N(0, 10 deg) turn: about 15 degrees
    np.testing.assert_array_equal(animator_pose(truth, 10.0, seed=7)[0], pose)
