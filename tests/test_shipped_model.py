"""Quality of the shipped weights, measured on bodies rendered at test time with seeds never used in training.

The floor asserted here is the figure recorded in docs/RESULTS.md minus a margin for the small sample; it
guards against a broken, swapped or regressed model file (the previous shipped model scores 0.471 on these
four bodies and fails it). It is below the 0.70 bar that issue 4 asks for: see docs/RESULTS.md for the
honest figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.checkpoint import load_model
from core.reconstruct import DEFAULT_MODELS
from train.evaluate import evaluate_model
from train.make_dataset import main as make_dataset

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / f"{DEFAULT_MODELS['vrn']}.json"
# held-out mean 0.539 (200 bodies, per-body std 0.080). The four bodies below are fixed (seed 777, rendered
# deterministically): the shipped model scores 0.544 on them, the previous model 0.471; 0.50 leaves 0.044
# for numerical differences between machines and still fails the previous model.
HELDOUT_IOU_FLOOR = 0.50
TRAINING_SEED = 101  # the seed of the shipped model's training set (its card in docs/RESULTS.md)


def test_shipped_model_loads_and_is_small():
    loaded = load_model(DEFAULT_MODELS["vrn"])
    assert loaded.config.variant == "multistack" and loaded.config.refine > 0
    assert (REPO / "models" / f"{DEFAULT_MODELS['vrn']}.safetensors").stat().st_size < 50 * 2**20
    meta = json.loads(SHIPPED.read_text())
    assert meta["training"]["command"].startswith("python -m train.fit")
    assert meta["metrics"]["history"], "the shipped model must carry its training figures"


@pytest.fixture(scope="module")
def heldout_renders(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    # every body of this set is "test"; seed 777 draws bodies the training set (seed 101) never saw; tight
    # bodies, as the shipped model was trained on (clothed bodies are #13's)
    assert make_dataset(["--out", str(out), "--count", "4", "--size", "128", "--volume", "128x128x128",
                         "--samples", "8", "--seed", "777", "--split-every", "1", "--workers", "1",
                         "--clothing", "0"]) == 0
    return out


@pytest.mark.slow  # renders four bodies with Blender
def test_shipped_model_reconstructs_heldout_renders(heldout_renders):
    summary = evaluate_model(DEFAULT_MODELS["vrn"], [heldout_renders], split="test", surface=False, device="cpu")
    assert summary["samples"] == 4
    assert summary["iou_mean"] >= HELDOUT_IOU_FLOOR, summary["per_sample"]
