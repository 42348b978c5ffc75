"""Issue 16, training side: train.fit and train.make_dataset refuse bad options in one line with their exit
code, resume the folder they are given, and never mix or lose data. Fast: a synthetic 16 px dataset written
with train.samples (no Blender), 8-wide networks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from train.fit import main as fit
from train.samples import sample_path, write_sample

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--variant", "multistack", "--features", "8", "--stacks", "1", "--norm", "group", "--batch-size", "2",
         "--val-samples", "1", "--workers", "0", "--threads", "1", "--optimizer", "adam"]


def write_synthetic(out: Path, i: int, shift: int = 0) -> None:
    """Sample `i`: a 16 px crop and an 8x16x16 volume (a box), as train.samples writes them."""
    rng = np.random.default_rng(i)
    volume = np.zeros((8, 16, 16), bool)
    volume[2:6, 3:13, 5 + shift:11] = True
    meta = {"index": i, "split": "train", "body_id": i, "source": "anny", "seed": 0, "input_hw": [16, 16],
            "volume_shape": [8, 16, 16], "front_iou": 1.0, "detected": False, "body": {}}
    write_sample(sample_path(out, i), rgb=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mask=volume.any(0),
                 parts=np.zeros((16, 16), np.uint8), landmarks16=rng.uniform(0, 16, (16, 3)),
                 landmarks16_detected=np.full((16, 3), np.nan), volume=volume, vertices_vox=np.zeros((4, 3)),
                 joints_vox=np.zeros((2, 3)), vertices_cam=np.zeros((4, 3)), joints_cam=np.zeros((2, 3)), meta=meta)


def synthetic_dataset(out: Path, count: int = 6) -> Path:
    """`count` synthetic samples with the manifest train.fit reads."""
    rows = []
    for i in range(count):
        write_synthetic(out, i)
        rows.append(json.dumps({"index": i, "file": f"samples/{sample_path(out, i).name}", "split": "train"}))
    (out / "manifest.jsonl").write_text("".join(r + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("synthetic"))


def fails(capsys, command, argv, code: int, *words: str) -> str:
    """`command(argv)` exits with `code` and one stderr line naming `words`."""
    try:
        rc = command([str(a) for a in argv])
    except SystemExit as stop:
        rc = stop.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == code, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def state_meta(run: Path) -> dict:
    with safe_open(str(run / "state.safetensors"), "pt") as f:
        return json.loads(f.metadata()["train_state"])


# ------------------------------------------------------------------------- train.fit: options

@pytest.mark.parametrize("args,words", [
    (["--variant", "nope"], ["--variant", "nope"]), (["--norm", "layer"], ["--norm", "layer"]),
    (["--inputs", "image,depth"], ["--inputs", "depth"]), (["--volume", "8x16"], ["--volume", "8x16"]),
    (["--lr", "nan"], ["--lr", "finite"]), (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["--epochs", "0"], ["--epochs", "at least 1"]), (["--optimizer", "sgd"], ["--optimizer", "sgd"]),
    (["--lr-drop", "2"], ["--lr-drop"]), (["--workers", "-1"], ["--workers"]),
])
def test_fit_bad_options(capsys, data, tmp_path, args, words):
    fails(capsys, fit, ["--data", data, "--out", tmp_path / "run", *SMALL, *args], 2, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_fit_device_cuda_without_gpu_is_an_error(capsys, data, tmp_path):
    fails(capsys, fit, ["--data", data, "--out", tmp_path / "run", *SMALL, "--device", "cuda"], 2, "cuda")
    assert not (tmp_path / "run").exists()


def test_fit_batch_of_one_with_batch_norm(capsys, data, tmp_path):
    args = ["--data", data, "--out", tmp_path / "run", *SMALL, "--norm", "batch", "--batch-size", "1"]
    fails(capsys, fit, args, 2, "--batch-size 1", "batch norm")
    assert not (tmp_path / "run").exists()


def test_fit_cut_manifest_line(capsys, data, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(data, cut)
    text = (cut / "manifest.jsonl").read_text()
    (cut / "manifest.jsonl").write_text(text[:-20])  # a copy that stopped mid-line
    fails(capsys, fit, ["--data", cut, "--out", tmp_path / "run", *SMALL], 5, "line 6")


# ------------------------------------------------------------------------- train.fit: resume where it is

def test_resume_copied_and_moved_runs_in_place(capsys, data, tmp_path):
    first = tmp_path / "first"
    assert fit(["--data", str(data), "--out", str(first), *SMALL, "--epochs", "3", "--max-steps", "1"]) == 0
    before = snapshot(first)
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert fit(["--out", str(copy), "--resume", "--max-steps", "3"]) == 0
    assert snapshot(first) == before  # the original is untouched
    assert state_meta(copy)["step"] == 3 and (copy / "model.json").is_file()
    moved = tmp_path / "moved"
    first.rename(moved)
    assert fit(["--out", str(moved), "--resume", "--max-steps", "2"]) == 0
    assert state_meta(moved)["step"] == 2 and not first.exists()


def test_resume_without_config_json(capsys, data, tmp_path):
    run = tmp_path / "run"
    assert fit(["--data", str(data), "--out", str(run), *SMALL, "--epochs", "2", "--max-steps", "1"]) == 0
    capsys.readouterr()
    (run / "config.json").write_text('{"variant": "multistack", "colour": 3}')  # edited by hand
    fails(capsys, fit, ["--out", run, "--resume"], 5, "config.json", "damaged or edited")
    (run / "config.json").unlink()
    before = snapshot(run)
    fails(capsys, fit, ["--out", run, "--resume"], 5, "config.json", "missing")
    assert snapshot(run) == before


def test_sigterm_exits_143_after_saving(data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.fit", "--data", str(data), "--out", str(run), *SMALL, "--epochs", "100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "log.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: Stopped by SIGTERM") and "--resume" in err
    assert 1 <= state_meta(run)["epoch"] < 100000


# ------------------------------------------------------------------------- train.make_dataset

@pytest.fixture
def no_render(monkeypatch):
    """make_dataset with its Blender sample replaced by a synthetic one (the checks around it are real)."""
    from train import make_dataset as md

    monkeypatch.setattr(md, "make_sample", lambda i, ctx: write_synthetic(Path(ctx.args.out), i) or {})
    monkeypatch.setattr(md, "_joint_names", lambda: None)
    return md.main


MAKE = ["--count", "3", "--size", "16", "--volume", "8x16x16", "--no-detect", "--progress", "none"]


@pytest.mark.parametrize("args,words", [
    (["--size", "0"], ["--size"]), (["--count", "0"], ["--count"]), (["--volume", "8x0x16"], ["--volume"]),
    (["--backgrounds", "/no/such/folder"], ["--backgrounds", "does not exist"]), (["--workers", "0"], ["--workers"]),
])
def test_make_dataset_bad_options(capsys, no_render, tmp_path, args, words):
    fails(capsys, no_render, ["--out", tmp_path / "d", *MAKE, *args], 2, *words)
    assert not (tmp_path / "d").exists()


def test_make_dataset_rerun_with_other_settings_is_refused(capsys, no_render, tmp_path):
    out = tmp_path / "d"
    assert no_render(["--out", str(out), *MAKE]) == 0
    assert json.loads((out / "settings.json").read_text())["size"] == 16
    capsys.readouterr()
    before = snapshot(out)
    fails(capsys, no_render, ["--out", out, *MAKE, "--size", "32", "--seed", "4"], 5, "--size 32 (made with 16)",
          "--seed 4 (made with 0)")
    assert snapshot(out) == before
    assert no_render(["--out", str(out), *MAKE[:1], "5", *MAKE[2:]]) == 0  # more samples, same settings: fine


def test_make_dataset_remakes_broken_samples(capsys, no_render, tmp_path):
    from train.samples import read_sample, sample_problem

    out = tmp_path / "d"
    assert no_render(["--out", str(out), *MAKE]) == 0
    broken = sample_path(out, 1)
    broken.write_bytes(broken.read_bytes()[:200])  # what a full disk or a crash outside the atomic write leaves
    assert sample_problem(broken)
    capsys.readouterr()
    assert no_render(["--out", str(out), *MAKE]) == 0
    assert "remaking broken sample 0000001.npz" in capsys.readouterr().err
    assert sample_problem(broken) is None and read_sample(broken)["volume"].sum() > 0


def test_merge_checks_everything_before_linking(capsys, no_render, tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for i in (0, 1):
        write_synthetic(a, i)
    write_synthetic(b, 1, shift=2)  # the same index made differently
    fails(capsys, no_render, ["merge", out, a, b], 5, "0000001.npz", "differs")
    assert not (out / "samples").exists() or not any((out / "samples").iterdir())
    fails(capsys, no_render, ["merge", tmp_path / "out2", a, tmp_path / "missing"], 2, "missing", "does not exist")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("module", ["train.evaluate", "train.evaluate_mesh", "train.calibrate"])
def test_evaluation_commands_answer_bad_data_in_one_line(module, tmp_path):
    """The evaluation commands end like the others (core.errors.run_command): one line, the data exit code."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", module, "--data", str(tmp_path / "missing"), "--model",
                           "hmnet-default"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MONOHUMAN_DEBUG": ""})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and "manifest" in lines[-1] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------- train.fit: numbers held still

# Recorded with the training script as it was before issue 14 moved the loop into train/loop.py (CPU, one
# thread, torch 2.13.0 on this project's x86 machine): a refactor of the loop must reproduce every number and
# the weights. One-thread CPU training is not bit-reproducible here even so: identical processes end on one
# of two weight files (about 1e-16 apart in the sum below), the old loop and the new alike, so both are held.
VRN_HISTORY = [{"epoch": 1, "step": 2, "lr": 0.01, "train_loss": 0.37072, "val_iou": 0.0},
               {"epoch": 2, "step": 4, "lr": 0.01, "train_loss": 0.3307, "val_iou": 0.0},
               {"epoch": 3, "step": 6, "lr": 0.001, "train_loss": 0.31587, "val_iou": 0.0},
               {"epoch": 4, "step": 8, "lr": 0.001, "train_loss": 0.31528, "val_iou": 0.0}]
VRN_WEIGHTS_SHA256 = {"2183e4573070c3dac382ba164ba43cae9434ba50e29334f572e4ae7b547c6ce2",
                      "47f252ce7ca4cde93904fd02e27a880b3559756ca332904d786b311ce9eb3228"}
VRN_WEIGHTS_ABS_SUM = 904.9661115198905
RECORDED_TORCH = "2.13.0"


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_abs_sum(path: Path) -> float:
    from safetensors.torch import load_file

    return sum(float(t.double().abs().sum()) for t in load_file(str(path)).values() if t.is_floating_point())


def test_refactors_keep_the_numbers(data, tmp_path, on_recording_cpu):
    """A fixed-seed 4-epoch run (the learning rate drops after the second) gives the recorded per-epoch history
    and weights; stopped mid-epoch and resumed, it ends on the same history and weights, bit for bit. On
    another CPU than the recording's (conftest.RECORDED_CPU): the two runs agree with each other and come
    within 1e-6 of the recorded weights and 1e-3 of the recorded losses."""
    args = ["--data", data, "--out", tmp_path / "run", *SMALL, "--epochs", "4", "--lr", "1e-2", "--lr-late", "1e-3"]
    assert fit([str(a) for a in args]) == 0
    args = ["--data", data, "--out", tmp_path / "cut", *SMALL, "--epochs", "4", "--lr", "1e-2", "--lr-late", "1e-3"]
    assert fit([str(a) for a in args] + ["--max-steps", "3"]) == 0
    assert fit(["--out", str(tmp_path / "cut"), "--resume"]) == 0
    histories, sums = [], []
    for run in ("run", "cut"):
        meta = json.loads((tmp_path / run / "model.json").read_text())
        histories.append([{k: v for k, v in h.items() if k != "samples_per_s"} for h in meta["metrics"]["history"]])
        assert meta["metrics"]["val_iou"] == histories[-1][-1]["val_iou"]
        sums.append(weights_abs_sum(tmp_path / run / "model.safetensors"))
        if on_recording_cpu:
            assert histories[-1] == VRN_HISTORY
            assert sums[-1] == pytest.approx(VRN_WEIGHTS_ABS_SUM, rel=1e-12)
            if torch.__version__.split("+")[0] == RECORDED_TORCH:  # another build may round differently
                assert file_sha256(tmp_path / run / "model.safetensors") in VRN_WEIGHTS_SHA256, run
        else:
            assert histories[-1] == [pytest.approx(h, rel=1e-3) for h in VRN_HISTORY]
            assert sums[-1] == pytest.approx(VRN_WEIGHTS_ABS_SUM, rel=1e-6)
    assert histories[0] == histories[1] and sums[0] == pytest.approx(sums[1], rel=1e-12)
