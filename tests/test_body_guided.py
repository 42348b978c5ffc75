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


def test_guided_model_trains_and_records_its_noise(guided_data, tmp_path):
    from train.fit import TrainConfig, fit

    cfg = TrainConfig(data=[str(guided_data)], out=str(tmp_path / "run"), variant="body-guided", features=16,
                      stacks=1, norm="group", epochs=1, batch_size=4, val_samples=1, workers=0, optimizer="adam",
                      lr=1e-3, name="guided-test")
    assert fit(cfg) == 0
    doc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert doc["config"]["inputs"] == list(GUIDED)
    assert doc["guide"]["noise"]["format"] == "monohuman-fit-noise" and doc["guide"]["noise"]["samples"] > 0
    assert 0.0 <= doc["metrics"]["val_iou"] <= 1.0
