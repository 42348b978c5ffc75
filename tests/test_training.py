"""Training and evaluation on a tiny generated dataset: loss goes down, checkpoints resume exactly, DDP runs,
and IoU is the paper's formula."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from core.landmarks import FLIP_16
from train.dataset import Augment, augment_sample, pool_volume
from train.evaluate import main as evaluate
from train.fit import main as fit
from train.metrics import volume_iou

REPO = Path(__file__).resolve().parents[1]
TINY = ["--variant", "multistack", "--features", "8", "--stacks", "1", "--norm", "group", "--batch-size", "2",
        "--val-samples", "1", "--workers", "0", "--optimizer", "adam", "--lr", "3e-3", "--lr-late", "1e-3"]


def read_log(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def test_iou_is_the_papers_formula():
    a = np.zeros((2, 2, 2), bool)
    b = np.zeros((2, 2, 2), bool)
    a[0, 0, :] = True  # 2 voxels
    b[0, :, 0] = True  # 2 voxels, one shared with a
    assert volume_iou(a, b) == pytest.approx(1 / 3)  # 1 intersecting / 3 set in either
    assert volume_iou(a, a) == 1.0
    assert volume_iou(a, ~a) == 0.0
    assert volume_iou(np.stack([a, a]), np.stack([b, a])).tolist() == pytest.approx([1 / 3, 1.0])


def test_flip_mirrors_volume_and_swaps_landmarks():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    volume = np.zeros((4, 8, 8), bool)
    volume[1, 2, 1] = True
    lm = rng.uniform(0, 8, (16, 3)).astype(np.float32)
    out_rgb, out_mask, out_lm, out_vol = augment_sample(rgb, mask, lm, volume, Augment(0, 0, 1.0), rng)
    assert out_vol[1, 2, 6] and out_vol.sum() == 1
    np.testing.assert_array_equal(out_rgb, rgb[:, ::-1])
    np.testing.assert_allclose(out_lm[:, 0], 8 - lm[FLIP_16, 0])  # r-ankle of the mirror = l-ankle mirrored


def test_pool_volume_majority():
    v = np.zeros((4, 4, 4), bool)
    v[:2, :2, :2] = True  # a full 2x2x2 block
    v[2, 2, 2] = True  # one voxel of eight: not enough
    pooled = pool_volume(v, 2)
    assert pooled.shape == (2, 2, 2) and pooled[0, 0, 0] and pooled.sum() == 1


def test_fit_lowers_loss_writes_checkpoint_and_resumes_exactly(tiny_dataset, tmp_path):
    straight = tmp_path / "straight"
    assert fit(["--data", str(tiny_dataset), "--out", str(straight), "--epochs", "4", *TINY]) == 0
    log = read_log(straight)
    assert len(log) == 4
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert (straight / "model.json").is_file() and (straight / "model.safetensors").is_file()
    assert 0.0 <= float(log[-1]["val_iou"]) <= 1.0

    # the same run, stopped mid-way through epoch 2 (as a kill would), then resumed
    broken = tmp_path / "broken"
    assert fit(["--data", str(tiny_dataset), "--out", str(broken), "--epochs", "4", "--max-steps", "7", *TINY]) == 0
    assert len(read_log(broken)) == 1  # epoch 1 finished, epoch 2 interrupted
    assert fit(["--out", str(broken), "--resume"]) == 0
    a = load_file(str(straight / "state.safetensors"))
    b = load_file(str(broken / "state.safetensors"))
    for key in a:
        if key.startswith("model."):
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert [r["train_loss"] for r in read_log(straight)] == [r["train_loss"] for r in read_log(broken)]


def test_fit_refuses_to_overwrite_and_to_resume_nothing(tiny_dataset, tmp_path):
    assert fit(["--out", str(tmp_path / "none"), "--resume"]) != 0
    run = tmp_path / "run"
    assert fit(["--data", str(tiny_dataset), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert fit(["--data", str(tiny_dataset), "--out", str(run), "--epochs", "1", *TINY]) != 0


def test_init_starts_a_new_run_from_a_models_weights(tiny_dataset, tmp_path):
    """--init: a new run (epoch 1, its own schedule) from a finished model's weights; a network of another
    width is refused with a message instead of half-loading."""
    first = tmp_path / "first"
    assert fit(["--data", str(tiny_dataset), "--out", str(first), "--epochs", "1", *TINY]) == 0
    tiny_lr = [a if a not in ("3e-3", "1e-3") else "1e-12" for a in TINY]  # the start barely moves
    again = tmp_path / "again"
    assert fit(["--data", str(tiny_dataset), "--out", str(again), "--epochs", "1", *tiny_lr,
                "--init", str(first / "model.json")]) == 0
    assert len(read_log(again)) == 1
    a, b = load_file(str(first / "model.safetensors")), load_file(str(again / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6, err_msg=key)
    narrower = [*TINY[:TINY.index("--features")], "--features", "4", *TINY[TINY.index("--features") + 2:]]
    assert fit(["--data", str(tiny_dataset), "--out", str(tmp_path / "wrong"), "--epochs", "1", *narrower,
                "--init", str(first / "model.json")]) != 0


def test_torchrun_two_cpu_processes(tiny_dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "train.fit", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "2", *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["world_size"] == 2
    assert len(read_log(run)) == 2


def test_evaluate_reports_iou_and_writes_results(tiny_dataset, tiny_model, tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nHand-written notes stay.\n")
    figures = tmp_path / "eval.json"
    assert evaluate(["--data", str(tiny_dataset), "--model", str(tiny_model), "--write", str(out),
                     "--json", str(figures)]) == 0
    summary = json.loads(figures.read_text())["heldout"][0]
    assert summary["samples"] == 4  # the held-out split of the tiny dataset
    assert all(0.0 <= s["iou"] <= 1.0 for s in summary["per_sample"])
    assert summary["iou_mean"] == pytest.approx(np.mean([s["iou"] for s in summary["per_sample"]]))
    # kept to the person mask as inference does; the network's own figures beside, from the same prediction
    assert summary["match_mask"] and all(0.0 <= s["silhouette_iou_raw"] <= 1.0 for s in summary["per_sample"])
    assert evaluate(["--data", str(tiny_dataset), "--model", str(tiny_model), "--raw-surface", "--json",
                     str(figures)]) == 0
    raw = json.loads(figures.read_text())["heldout"][0]
    assert raw["iou_mean"] == pytest.approx(summary["iou_raw_mean"]) and "iou_raw_mean" not in raw
    text = out.read_text()
    assert "Hand-written notes stay." in text and "| tiny-test |" in text


def test_calibrate_records_a_validated_level_that_reconstruct_uses(tiny_dataset, tiny_model, tmp_path):
    import shutil

    from core.checkpoint import load_model
    from core.reconstruct import surface_level
    from train.calibrate import main as calibrate

    for ext in (".json", ".safetensors"):
        shutil.copy(str(tiny_model) + ext, tmp_path / f"m{ext}")
    assert surface_level(load_model(tmp_path / "m")) == 0.5  # uncalibrated: the conventional level
    assert calibrate(["--data", str(tiny_dataset), "--model", str(tmp_path / "m"), "--levels", "0.5,0.3"]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    table = doc["inference"]["val_iou_by_level"]
    assert set(table) == {"0.5", "0.3"}
    assert doc["inference"]["iso_level"] == float(max(table, key=table.get))
    assert surface_level(load_model(tmp_path / "m")) == doc["inference"]["iso_level"]  # weights hash still valid


def test_iou_bounds_hand_computed():
    """A 4-voxel-thick box: shifted one voxel keeps 3 of 5 voxels per column, one voxel thicker 4 of 6."""
    from train.iou_bounds import depth_bounds

    v = np.zeros((10, 6, 6), bool)
    v[3:7, 1:5, 2:4] = True
    b = depth_bounds(v)
    assert b["slab_fill"] == pytest.approx(1.0)
    assert b["shifted_one_voxel"] == pytest.approx(3 / 5)
    assert b["one_voxel_thicker"] == pytest.approx(4 / 6)
    assert b["thickness_voxels"] == pytest.approx(4.0)
    assert b["centroid_offset"] == pytest.approx(0.0)  # voxel centres 3.5 .. 6.5 around D/2 = 5
    v[4, 2, 2] = False  # a hole inside a column: the slab fills it back
    assert depth_bounds(v)["slab_fill"] == pytest.approx(v.sum() / (v.sum() + 1))


def test_best_depth_shift_iou_finds_the_offset():
    from train.metrics import best_depth_shift_iou, volume_iou

    target = np.zeros((10, 6, 6), bool)
    target[3:7, 1:5, 2:4] = True
    pred = np.zeros_like(target)
    pred[4:8, 1:5, 2:4] = True  # the right shape, one voxel too deep
    assert float(volume_iou(pred, target)) == pytest.approx(3 / 5)
    assert best_depth_shift_iou(pred, target) == (pytest.approx(1.0), -1)
    assert best_depth_shift_iou(target, target) == (pytest.approx(1.0), 0)


def test_table1_trains_each_variant_and_writes_the_table(tiny_dataset, tmp_path):
    """Three variants (two of the paper's and ours, body-residual: not in the paper), two epochs each; a second
    call keeps the finished runs and writes the same table."""
    from train.table1 import main as table1

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nwritten by a person\n")
    argv = ["--data", str(tiny_dataset), "--out", str(tmp_path / "runs"), "--variants", "vrn-guided,mask-only,body-residual",
            "--epochs", "2", "--features", "8", "--volume", "32x64x64", "--norm", "group", "--batch-size", "2",
            "--optimizer", "adam", "--lr", "3e-3", "--workers", "0", "--threads", "1", "--write", str(results)]
    assert table1(argv) == 0
    text = results.read_text()
    assert "written by a person" in text
    rows = [line for line in text.splitlines() if line.startswith(("| vrn-guided", "| mask-only", "| body-residual"))]
    assert len(rows) == 3 and rows[2].endswith("|  -  |  -  |")
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        val_half, val_final, test = float(cells[1]), float(cells[2]), float(cells[3].split()[0])
        assert all(0.0 <= v <= 1.0 for v in (val_half, val_final, test)), row
        assert cells[3].endswith("(4)")  # the tiny set's four held-out bodies
    command = json.loads((tmp_path / "runs" / "mask-only" / "model.json").read_text())["training"]["command"]
    assert command.startswith(f"python -m train.fit --data {tiny_dataset} --out ") and "--variant mask-only" in command
    state = tmp_path / "runs" / "mask-only" / "state.safetensors"
    before = state.stat().st_mtime_ns
    assert table1(argv) == 0
    assert results.read_text() == text
    assert state.stat().st_mtime_ns == before


def test_depth_anchor_centres_the_occupied_volume():
    """'centroid' moves a stored body so its occupied voxels' mean depth is at D/2; 'vertex-mean' keeps it."""
    from train.dataset import depth_anchor_shift, target_volume

    v = np.zeros((16, 8, 8), bool)
    v[2:6, 2:6, 3:5] = True  # centroid depth 4.0 (voxel centres 2.5 .. 5.5): 4 voxels too near
    assert depth_anchor_shift(v, "vertex-mean") == 0
    assert depth_anchor_shift(v, "centroid") == 4
    moved = target_volume(v, v.shape, "centroid")
    assert moved.sum() == v.sum() and moved[6:10].all(axis=0).sum() == v[2:6].all(axis=0).sum()
    pooled = target_volume(v, (8, 4, 4), "centroid")  # aligned at the data's resolution, then pooled
    assert pooled.shape == (8, 4, 4) and pooled[3:5].any() and not pooled[:3].any()
    assert depth_anchor_shift(np.zeros_like(v), "centroid") == 0
    with pytest.raises(Exception, match="depth anchor"):
        depth_anchor_shift(v, "middle")


def test_sigterm_to_the_whole_process_group_saves_state(tiny_dataset, tmp_path):
    """A scheduler's SIGTERM reaches the data-loader workers too; the run still saves its state and resumes."""
    import signal
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.fit", "--data", str(tiny_dataset), "--out", str(run), "--features", "8",
           "--stacks", "1", "--norm", "group", "--epochs", "1000", "--batch-size", "2", "--val-samples", "1",
           "--workers", "1", "--threads", "1", "--optimizer", "adam"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (run / "log.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and its loader worker alike
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-2000:]  # saved, but stopped: a scheduler can tell
    meta = json.loads((run / "model.json").read_text())
    done = meta["metrics"]["history"][-1]["epoch"]
    assert done >= 1 and done < 1000
    assert fit(["--out", str(run), "--resume", "--max-steps", "1"]) == 0


@pytest.mark.parametrize("where,call", [("evaluate", 2), ("export", 2), ("export", 3)])
def test_interrupt_at_an_epochs_end_logs_that_epoch_once(tiny_dataset, tmp_path, monkeypatch, where, call):
    """Issue 16, case 7: Ctrl-C while epoch 2 (or the last, 3) is being validated or exported, then --resume:
    every epoch is in the log exactly once and the run ends where an uninterrupted one does, its model
    exported."""
    import train.fit
    import train.loop

    owner = train.fit.VRNTask if where == "evaluate" else train.loop
    real = getattr(owner, where)
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(owner, where, interrupted)
    assert fit(["--data", str(tiny_dataset), "--out", str(run), "--epochs", "3", *TINY]) == 130
    monkeypatch.setattr(owner, where, real)
    assert fit(["--out", str(run), "--resume"]) == 0
    assert [int(r["epoch"]) for r in read_log(run)] == [1, 2, 3]
    assert json.loads((run / "model.json").read_text())["training"]["epochs"] == 3
