"""Shared fixtures: every image a test uses is rendered by the project itself (headless Blender, Anny bodies).

Session-scoped and built once: a photo of a person, a tiny dataset and a tiny VRN trained on it for a few
epochs (small enough for CPU CI, trained enough to produce a person-shaped volume).

The fast tier (`make test-fast`, `pytest -m "not slow"`) leaves out every test marked `slow`: those that use
one of these renders or the trained model (marked here, by the fixtures they need), whole modules that train
or render in every test, and the tests marked by hand (Blender subprocesses, the add-on end to end).
`make test` runs everything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# anny builds an ~800 MB cache on first load: one stable folder per machine, never one per test.
os.environ.setdefault("ANNY_CACHE_DIR", str(Path.home() / ".cache" / "monohuman" / "anny"))
os.environ.setdefault("PYTHONHASHSEED", "0")

# A test that needs one of these (directly or through another fixture) renders with Blender or trains.
SLOW_FIXTURES = {"person_render", "person_photo", "person_photo_mask", "tiny_dataset", "tiny_model", "assets"}
SLOW_MODULES = {"test_training", "test_bad_training", "test_make_dataset"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        if (module is not None and module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES) or \
                SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


TINY_VOLUME = "32x64x64"
TINY_SIZE = 64


@pytest.fixture(scope="session")
def person_render(tmp_path_factory):
    """A photo-like 256 px render of a clothed standing person, with its true mask and landmarks."""
    from train.render import render_person_photo

    path = tmp_path_factory.mktemp("photo") / "person.png"
    info = render_person_photo(path, size=256, seed=3, samples=16)
    return {"path": path, **info}


@pytest.fixture(scope="session")
def person_photo(person_render) -> Path:
    return person_render["path"]


@pytest.fixture(scope="session")
def person_photo_mask(person_render):
    return person_render["mask"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Sixteen 64 px samples with 32x64x64 volumes (four of them in the held-out split)."""
    from train.make_dataset import main as make_dataset

    out = tmp_path_factory.mktemp("tiny_dataset")
    rc = make_dataset(["--out", str(out), "--count", "16", "--size", str(TINY_SIZE), "--volume", TINY_VOLUME,
                       "--samples", "4", "--seed", "11", "--split-every", "4", "--workers", "1"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory) -> Path:
    """A 16-wide, 2-stack Multistack (image + landmarks + mask) trained on the tiny dataset; returns its stem.

    About 150 Adam steps: enough for a person-shaped, non-empty volume on a new photo (not a good model).
    """
    from train.fit import main as fit

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    rc = fit(["--data", str(tiny_dataset), "--out", str(run), "--variant", "multistack", "--features", "16",
              "--stacks", "2", "--norm", "group", "--inputs", "image,landmarks,mask", "--epochs", "25",
              "--batch-size", "2", "--val-samples", "1", "--workers", "0", "--optimizer", "adam",
              "--lr", "5e-3", "--lr-late", "1e-3", "--lr-drop", "0.8", "--name", "tiny-test"])
    assert rc == 0
    return run / "model"


# Where the "refactors keep the numbers" tests recorded their training numbers (/proc/cpuinfo's model name).
# Another CPU takes other vectorised paths through the same float32 sums and ends elsewhere (an AMD EPYC:
# 1e-9 apart in the VRN weights, 0.2 % in HumanMeshNet's second-epoch error), so there the tests hold a run
# and its resumed twin equal to each other and near the recording instead.
RECORDED_CPU = "Intel(R) Xeon(R) Processor"


@pytest.fixture(scope="session")
def on_recording_cpu() -> bool:
    from bench.machine import cpu_model

    return cpu_model() == RECORDED_CPU
