"""Held-out evaluation: the paper's IoU, surface errors in millimetres, and silhouette agreement.

    python -m train.evaluate --data data/test                       # the shipped model
    python -m train.evaluate --data data/test --model runs/a/model runs/b/model --write docs/RESULTS.md

Inputs are built exactly as at inference: mediapipe's landmarks and mask on the rendered crop when the
sample has them (the projected ground truth otherwise), then `core.encode.encode` and
`core.reconstruct.predict_volume`. Surface errors are in true metres (volume voxels divided by the sample's
pixels-per-metre), so they measure the network's geometry, not the user's height setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import trimesh
from tqdm import tqdm

from core.checkpoint import load_model
from core.encode import encode
from core.errors import MonohumanError
from core.reconstruct import DEFAULT_MODELS, pick_device, predict_volume
from core.surface import extract_surface
from train.dataset import read_manifest, training_mask
from train.samples import read_sample
from train.metrics import silhouette_iou, surface_distances_mm, volume_iou

RESULTS_BEGIN = "<!-- evaluate:begin -->"
RESULTS_END = "<!-- evaluate:end -->"


def inference_landmarks(sample: dict) -> np.ndarray:
    detected = sample.get("landmarks16_detected")
    return detected if detected is not None and np.isfinite(detected).all() else sample["landmarks16"]


def ground_truth_mesh(sample: dict) -> trimesh.Trimesh:
    if "faces" in sample:
        return trimesh.Trimesh(sample["vertices_vox"], sample["faces"], process=False)
    return extract_surface(sample["volume"].astype(np.float32), smooth_iterations=0)


def evaluate_model(model_ref, data_dirs, split: str = "test", limit: int = 0, surface: bool = True,
                   device: str = "auto") -> dict:
    torch_device = pick_device(device)
    loaded = load_model(model_ref, device=str(torch_device))
    cfg = loaded.config
    rows = [r for d in data_dirs for r in read_manifest(d) if r.get("split") == split]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise MonohumanError(f"No {split!r} samples in {', '.join(map(str, data_dirs))}.",
                             "Evaluate on a dataset with a held-out split (see its card.json).")
    per_sample = []
    for row in tqdm(rows, desc=f"evaluate {loaded.name}", file=sys.stderr):
        sample = read_sample(row["path"])
        if tuple(sample["volume_shape"]) != tuple(cfg.volume_shape):
            raise MonohumanError(f"Model {loaded.name} predicts {tuple(cfg.volume_shape)} volumes, the data holds "
                                 f"{tuple(sample['volume_shape'])}.", "Evaluate on data made with that --volume.")
        x = encode(sample["rgb"], inference_landmarks(sample), training_mask(sample), cfg.inputs)
        prob = predict_volume(loaded, x, torch_device)
        pred = prob > 0.5
        entry = {"file": row["file"], "iou": float(volume_iou(pred, sample["volume"])),
                 "silhouette_iou": silhouette_iou(pred, sample["mask"])}
        if surface and pred.any():
            metres = 1.0 / float(sample["meta"]["px_per_metre"])
            pred_mesh = extract_surface(prob, smooth_iterations=10)
            gt_mesh = ground_truth_mesh(sample)
            pred_mesh.apply_scale(metres)
            gt_mesh.apply_scale(metres)
            entry.update(surface_distances_mm(pred_mesh, gt_mesh, samples=5000))
        per_sample.append(entry)
    summary = {"model": loaded.name, "variant": cfg.variant, "samples": len(per_sample), "split": split}
    for key in ("iou", "silhouette_iou", "chamfer_mm", "p2s_mm"):
        values = [e[key] for e in per_sample if key in e]
        if values:
            summary[f"{key}_mean"] = float(np.mean(values))
            summary[f"{key}_median"] = float(np.median(values))
    summary["history"] = (loaded.meta.get("metrics") or {}).get("history", [])
    summary["per_sample"] = per_sample
    return summary


def results_table(summaries: list[dict]) -> str:
    lines = ["| model | variant | samples | IoU mean | IoU median | silhouette IoU | Chamfer mm | P2S mm |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        def cell(key, fmt="{:.3f}"):
            return fmt.format(s[key]) if key in s else "n/a"
        lines.append(f"| {s['model']} | {s['variant']} | {s['samples']} | {cell('iou_mean')} | "
                     f"{cell('iou_median')} | {cell('silhouette_iou_mean')} | {cell('chamfer_mm_mean', '{:.1f}')} | "
                     f"{cell('p2s_mm_mean', '{:.1f}')} |")
    return "\n".join(lines)


def plot_history(summaries: list[dict], path: Path) -> bool:
    """IoU against epoch per model (validation IoU recorded during training)."""
    curves = [(s["model"], s["history"]) for s in summaries if s["history"]]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, history in curves:
        ax.plot([h["epoch"] for h in history], [h["val_iou"] for h in history], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation IoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_results(path: Path, summaries: list[dict], data_dirs, command: str) -> None:
    """Replace the evaluate section of RESULTS.md, keeping everything else a person wrote there."""
    plot = path.parent / "figures" / "iou_by_epoch.png"
    body = [RESULTS_BEGIN, f"Held-out split, data: {', '.join(map(str, data_dirs))}.",
            f"Reproduce: `{command}`", "", results_table(summaries)]
    if plot_history(summaries, plot):
        body += ["", f"![validation IoU by epoch]({plot.relative_to(path.parent)})"]
    body.append(RESULTS_END)
    text = path.read_text() if path.exists() else "# Results\n\n"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        text = head + "\n".join(body) + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(body) + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders with a held-out split")
    parser.add_argument("--model", nargs="+", default=[DEFAULT_MODELS["vrn"]], help="model names or paths")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most this many samples")
    parser.add_argument("--no-surface", action="store_true", help="skip the (slower) surface metrics")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", help="update this markdown file (e.g. docs/RESULTS.md)")
    parser.add_argument("--json", help="write all figures, per sample too, to this JSON file")
    args = parser.parse_args(argv)
    try:
        summaries = [evaluate_model(m, args.data, args.split, args.limit, not args.no_surface, args.device)
                     for m in args.model]
    except MonohumanError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(results_table(summaries))
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=1))
    if args.write:
        command = "python -m train.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results(Path(args.write), summaries, args.data, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
