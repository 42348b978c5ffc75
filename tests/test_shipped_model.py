"""Quality of the shipped VRN weights, measured on bodies rendered at test time with seeds never used in training.

Each floor is the model's figure on these four fixed bodies (rendered deterministically) minus a margin for
numerical differences between machines; it guards against a broken, swapped or regressed model file. The
floors are far below issue 13's bar (0.80): docs/RESULTS.md has the honest figures on larger held-out sets.
The default model is body-guided (`vrn-body-residual`): its evaluation fits the body to each render first,
as inference does. `vrn-default`, the earlier image-only model, is still shipped and still guarded.
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
# (model, bodies) -> IoU floor on the four bodies below (measured figure in the comment)
FLOORS = {
    ("vrn-body-residual", "tight"): 0.42,  # 0.487 (the 3-epoch --least-noise model before it: 0.496; vrn-default 0.518)
    ("vrn-body-residual", "clothed"): 0.49,  # 0.557 (before: 0.541; on the 60 clothed renders of docs/RESULTS.md
    # 0.512 against 0.510, on 40 tight ones 0.480 against 0.483)
    ("vrn-default", "tight"): 0.48,  # 0.518 (the model before it: 0.471)
}
# measured with the volume kept to the person mask, as inference and train.evaluate do (core.silhouette); the
# body-guided model with the fit it has now (the pose lifter's directions among its evidence, mediapipe run on the
# photo and its mirror image)
BODIES = {"tight": ("777", "0"), "clothed": ("778", "1")}  # seed, share of dressed bodies; training used 101/2026/2027


def test_the_default_is_the_body_guided_model_and_small():
    assert DEFAULT_MODELS["vrn"] == "vrn-body-residual"
    for name in {model for model, _ in FLOORS}:
        loaded = load_model(name)
        assert (REPO / "models" / f"{name}.safetensors").stat().st_size < 50 * 2**20
        meta = json.loads((REPO / "models" / f"{name}.json").read_text())
        assert meta["training"]["command"].startswith("python -m train.fit")
        assert meta["metrics"]["history"], "a shipped model must carry its training figures"
    guided = load_model("vrn-body-residual")
    assert guided.config.body_prior and "body" in guided.config.inputs
    assert guided.config.volume_shape == (128, 128, 128)  # issue 13: 128^3 for the animator's mesh
    assert guided.meta["guide"]["noise"], "a guided model records the fit noise it was trained on"


@pytest.fixture(scope="module")
def heldout_renders(tmp_path_factory):
    made = {}

    def renders(kind: str) -> Path:
        if kind not in made:
            seed, clothing = BODIES[kind]
            out = tmp_path_factory.mktemp(f"heldout-{kind}")
            assert make_dataset(["--out", str(out), "--count", "4", "--size", "128", "--volume", "128x128x128",
                                 "--samples", "8", "--seed", seed, "--split-every", "1", "--workers", "1",
                                 "--clothing", clothing]) == 0
            made[kind] = out
        return made[kind]
    return renders


@pytest.mark.slow  # renders four bodies with Blender (and fits the body to each for the guided model)
@pytest.mark.parametrize("model,kind", list(FLOORS))
def test_shipped_model_reconstructs_heldout_renders(heldout_renders, model, kind):
    summary = evaluate_model(model, [heldout_renders(kind)], split="test", surface=False, device="cpu")
    assert summary["samples"] == 4
    assert summary["iou_mean"] >= FLOORS[(model, kind)], summary["per_sample"]
