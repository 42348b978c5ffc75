"""Body-guided VRN training (#13): each sample's true body, made as wrong as the fit, is an input plane set
(train/body_guides.py), and the trained model records the noise it was given."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.encode import INPUT_CHANNELS
from train.body_guides import BODY_PARAMS_FILE
from train.dataset import VolumeDataset

GUIDED = ("image", "landmarks", "mask", "body")


@pytest.fixture(scope="module")
def guided_data(tiny_dataset, tmp_path_factory):
    """A copy of the tiny dataset (the true bodies are measured into it)."""
    data = tmp_path_factory.mktemp("guided") / "data"
    shutil.copytree(tiny_dataset, data)
    return data


def test_guide_planes_show_the_body_where_the_target_is(guided_data):
    ds = VolumeDataset([str(guided_data)], "train", GUIDED, seed=0)
    lines = (guided_data / BODY_PARAMS_FILE).read_text().splitlines()
    assert len(lines) == len(ds) == 12  # measured once for every training sample, kept beside the manifest
    start = sum(INPUT_CHANNELS[k] for k in ("image", "landmarks", "mask"))
    ious = []
    for index in range(4):
        x, y = ds[index]
        front, back, cover = x[start].numpy(), x[start + 1].numpy(), x[start + 2].numpy() > 0.5
        assert x.shape[0] == start + 3 and (front[cover] <= back[cover]).all()
        seen = y.numpy().any(0)  # the target seen from the camera, at the input size (64 px = the volume's H, W)
        ious.append((cover & seen).sum() / (cover | seen).sum())
    assert np.mean(ious) > 0.5, ious  # a perturbed body, but on the person
    again = VolumeDataset([str(guided_data)], "train", GUIDED, seed=0)[0][0]
    assert np.array_equal(again.numpy(), ds[0][0].numpy())  # draws are a function of (seed, epoch, index)


@pytest.fixture(scope="module")
def guided_model(guided_data, tmp_path_factory):
    """A 16-wide one-stack body-guided VRN trained for one epoch on the tiny dataset: its model.json path."""
    from train.fit import TrainConfig, fit

    run = tmp_path_factory.mktemp("guided_run") / "run"
    cfg = TrainConfig(data=[str(guided_data)], out=str(run), variant="body-guided", features=16, stacks=1,
                      norm="group", epochs=1, batch_size=4, val_samples=1, workers=0, optimizer="adam", lr=1e-3,
                      name="guided-test")
    assert fit(cfg) == 0
    return run / "model.json"


def test_guided_model_trains_and_records_its_noise(guided_model):
    doc = json.loads(guided_model.read_text())
    assert doc["config"]["inputs"] == list(GUIDED)
    assert doc["guide"]["noise"]["format"] == "monohuman-fit-noise" and doc["guide"]["noise"]["samples"] > 0
    assert 0.0 <= doc["metrics"]["val_iou"] <= 1.0


def test_inference_gives_a_guided_model_the_fitted_body(guided_model, person_photo):
    """Inference fits the body to the photo and hands it to the network in the network's own crop frame: the
    guide's coverage is the person (the one-epoch model itself is not good enough to judge a surface by)."""
    import torch

    from core.checkpoint import load_model
    from core.detect import detect_person
    from core.image_io import load_image
    from core.reconstruct import _crop_inputs, fitted_body, vrn_inputs

    loaded = load_model(guided_model, device="cpu")
    rgb = load_image(person_photo)
    det = detect_person(rgb)
    crops = _crop_inputs(rgb, det, loaded)
    warnings = []
    body = fitted_body(rgb, det, loaded, crops[0], load_model("hmnet-default", device="cpu"), torch.device("cpu"),
                       warnings)
    x = vrn_inputs(loaded, crops, body)
    start = sum(INPUT_CHANNELS[k] for k in ("image", "landmarks", "mask"))
    cover, person = x[start + 2] > 0.5, crops[2] > 0.5
    assert body.fitted is not None and not warnings
    assert (cover & person).sum() / (cover | person).sum() > 0.7


def test_guided_evaluation_fits_every_sample(guided_model, guided_data):
    """train.evaluate gives a guided model the body fitted to each held-out render, not the true one."""
    from unittest import mock

    import train.evaluate as evaluate

    with mock.patch.object(evaluate, "fitted_guide", wraps=evaluate.fitted_guide) as fitted:
        summary = evaluate.evaluate_model(str(guided_model), [str(guided_data)], surface=False, device="cpu")
    assert summary["samples"] == 4 and fitted.call_count == 4
    assert 0.0 <= summary["iou_mean"] <= 1.0 and "guide" not in summary
    # --true-guide (analysis only) gives it the true bodies instead, and says so in the figures
    with mock.patch.object(evaluate, "fitted_guide", wraps=evaluate.fitted_guide) as fitted:
        ceiling = evaluate.evaluate_model(str(guided_model), [str(guided_data)], surface=False, device="cpu",
                                          true_guide=True)
    assert fitted.call_count == 0 and ceiling["samples"] == 4 and "true body" in ceiling["guide"]


@pytest.fixture(scope="module")
def guided_model_low_level(guided_model, tmp_path_factory):
    """The one-epoch guided model with a low surface level: its probabilities stay under 0.5 (at most about 0.3
    on the test photo), so at the usual 0.5 it has no surface at all. Returns the model's stem."""
    out = tmp_path_factory.mktemp("guided_low") / "model"
    doc = json.loads(guided_model.read_text())
    doc["inference"] = {"iso_level": 0.2, "chosen_on": "test: a one-epoch model"}
    out.with_suffix(".json").write_text(json.dumps(doc))
    shutil.copy(guided_model.with_suffix(".safetensors"), out.with_suffix(".safetensors"))
    return out


def test_guided_reconstruction_fits_once_for_guide_hands_feet_and_rig(guided_model_low_level, person_photo,
                                                                     monkeypatch):
    """#13: the body fitted for a guided model's input also gives the surface its hands, feet and rig (no second
    fit), and the surface passes within 2 cm of each of its fingertips and toe tips; the volume keeps to the
    person mask (core.silhouette); body_parts=False and match_mask=False (CLI --raw-surface) keep the volume's
    own watertight surface."""
    from core.checkpoint import load_model
    from core.crop import crop_image
    from core.silhouette import mask_at
    import core.reconstruct as reconstruct_module
    from test_extremities import tip_distances

    fits = []
    real_fit = reconstruct_module.fit_person
    monkeypatch.setattr(reconstruct_module, "fit_person", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    model = str(guided_model_low_level)
    result = reconstruct_module.reconstruct(person_photo, model=model, method="vrn", rig=True, device="cpu")
    assert len(fits) == 1 and result.rig is not None and result.body.fitted is not None
    assert tip_distances(result.mesh, result.rig).max() < 0.02
    assert len(result.rig.skin_index) == len(result.mesh.vertices) == len(result.uv)
    _, h, w = result.volume.shape
    front = (result.volume > 0.2).any(0)
    input_hw = tuple(load_model(model).config.input_size)  # the mask the network saw, as reconstruct crops it
    on_mask = mask_at(crop_image(result.mask, result.crop_box, input_hw), (h, w))
    assert front.any() and not (front & ~on_mask).any()

    raw = reconstruct_module.reconstruct(person_photo, model=model, method="vrn", body_parts=False,
                                         match_mask=False, device="cpu")
    assert len(fits) == 2 and raw.body is None and raw.rig is None and raw.mesh.is_watertight
