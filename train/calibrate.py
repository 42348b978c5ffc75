"""Choose a model's surface iso-level on its validation slice and record it in the model's JSON.

    python -m train.calibrate --data DIR [DIR ...] --model vrn-default [--levels 0.5,0.4,0.3,0.25,0.2]

A network trained with per-voxel cross-entropy on ~1 % occupancy is under-confident on thin parts, so 0.5
is not always the level that best separates inside from outside. The level is chosen on the bodies that
training held back for validation (the same `split_train_val` slice, from the run's own seed and size),
never on the held-out test split, and stored as `inference.iso_level`; `core.reconstruct` extracts the
surface there. `train.evaluate` reports IoU at 0.5 (the paper's) and at the model's level.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_model
from core.encode import encode
from core.errors import MonohumanError
from core.files import write_atomic
from core.reconstruct import pick_device, predict_volume
from train.dataset import VolumeDataset, model_depth_anchor, target_volume, training_mask
from train.evaluate import inference_landmarks
from train.loop import split_train_val
from train.metrics import volume_iou
from train.samples import read_sample

DEFAULT_LEVELS = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)


def validation_rows(loaded, data_dirs) -> list[dict]:
    recipe = (loaded.meta.get("training") or {}).get("recipe") or {}
    dataset = VolumeDataset(data_dirs, "train", loaded.config.inputs)
    _, val_idx = split_train_val(dataset, int(recipe.get("val_samples", 64)), int(recipe.get("seed", 0)))
    return [dataset.rows[i] for i in val_idx]


def iou_by_level(loaded, rows, levels, device) -> dict[float, float]:
    scores = {level: [] for level in levels}
    for row in rows:
        sample = read_sample(row["path"])
        target = target_volume(sample["volume"], loaded.config.volume_shape, model_depth_anchor(loaded))
        x = encode(sample["rgb"], inference_landmarks(sample), training_mask(sample), loaded.config.inputs)
        prob = predict_volume(loaded, x, device)
        for level in levels:
            scores[level].append(float(volume_iou(prob > level, target)))
    return {level: float(np.mean(v)) for level, v in scores.items()}


def record_level(json_path: Path, level: float, table: dict, n_bodies: int) -> None:
    """Rewrite the model JSON with the chosen level (atomically; the weights and their hash are untouched)."""
    doc = json.loads(json_path.read_text())
    doc["inference"] = {"iso_level": level, "chosen_on": f"validation slice, {n_bodies} held-back training bodies",
                        "val_iou_by_level": {f"{k:g}": round(v, 4) for k, v in table.items()}}
    write_atomic(json_path, json.dumps(doc, indent=2) + "\n")


def main(argv=None) -> int:
    """The command: one line and its exit code for every expected failure (core.errors.run_command)."""
    from core.errors import run_command

    return run_command(lambda: _main(argv))


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="the dataset folders the model was trained on")
    ap.add_argument("--model", required=True, help="model name or path")
    ap.add_argument("--levels", default=",".join(f"{v:g}" for v in DEFAULT_LEVELS))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    try:
        device = pick_device(args.device)
        loaded = load_model(args.model, device=str(device))
        rows = validation_rows(loaded, args.data)
        table = iou_by_level(loaded, rows, [float(v) for v in args.levels.split(",")], device)
    except MonohumanError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    best = max(table, key=table.get)
    for level, iou in table.items():
        print(f"level {level:g}: validation IoU {iou:.4f}{'  <- chosen' if level == best else ''}")
    record_level(Path(loaded.path), best, table, len(rows))
    print(f"recorded iso_level {best:g} in {loaded.path}")
    return 0


if __name__ == "__main__":
    with torch.inference_mode():
        sys.exit(main())
