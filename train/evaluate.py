"""Held-out evaluation: the paper's IoU, surface errors in millimetres, and silhouette agreement.

    python -m train.evaluate --data data/test                       # the shipped model
    python -m train.evaluate --data data/test --model runs/a/model runs/b/model --write docs/RESULTS.md

Inputs are built exactly as at inference: mediapipe's landmarks and mask on the rendered crop when the
sample has them (the projected ground truth otherwise), then `core.encode.encode` and
`core.reconstruct.predict_volume`. Surface errors are in true metres (volume voxels divided by the sample's
pixels-per-metre), so they measure the network's geometry, not the user's height setting.

HumanMeshNet models (method "hmnet") are handed to `train.evaluate_mesh` (the paper's vertex and joint errors).
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
from core.models import find_model
from core.encode import encode
from core.errors import MonohumanError
from core.reconstruct import DEFAULT_MODELS, pick_device, predict_volume, surface_level
from core.silhouette import agree_with_mask
from core.surface import extract_surface
from train.dataset import (DEPTH_ANCHORS, depth_anchor_shift, model_depth_anchor, pooling_factor, read_manifest,
                           target_volume, training_mask)
from train.samples import read_sample
from train.metrics import best_depth_shift_iou, silhouette_iou, surface_distances_mm, volume_iou

RESULTS_BEGIN = "<!-- evaluate:begin -->"
RESULTS_END = "<!-- evaluate:end -->"


def inference_landmarks(sample: dict) -> np.ndarray:
    detected = sample.get("landmarks16_detected")
    return detected if detected is not None and np.isfinite(detected).all() else sample["landmarks16"]


def ground_truth_mesh(sample: dict) -> trimesh.Trimesh:
    """The posed Anny body in the data's volume frame when it wears nothing over its skin; the target volume's
    surface otherwise (garments and hair, train.garments; a scan)."""
    if sample["meta"].get("source") == "anny" and not sample["meta"].get("clothing"):
        from train.bodies import topology

        faces = topology().faces
        if faces.max() < len(sample["vertices_vox"]):
            return trimesh.Trimesh(sample["vertices_vox"], faces, process=False)
    return extract_surface(sample["volume"].astype(np.float32), smooth_iterations=0)


def model_method(model_ref) -> str:
    """The method a model file declares, read from its JSON without loading the weights."""
    js, _ = find_model(model_ref)
    return str(json.loads(js.read_text()).get("method", "vrn"))


def fitted_guide(sample: dict, initialiser, device) -> np.ndarray:
    """The guide planes (core.guide) of the body fitted to a sample's render as inference fits a photo
    (`train.evaluate_fit.fit_sample`); empty planes when mediapipe finds
    nobody (inference would stop there with "no person")."""
    from core.errors import NoPersonError
    from core.guide import GUIDE_CHANNELS, body_guide
    from core.template import load_template
    from train.evaluate_fit import fit_sample

    shape = tuple(int(x) for x in sample["volume_shape"])
    try:
        vertices = fit_sample(sample, "fit", initialiser, device)["fitted"].vertices
    except NoPersonError:
        return np.zeros((len(GUIDE_CHANNELS), *sample["rgb"].shape[:2]), np.float32)
    return body_guide(vertices, load_template().faces, shape, sample["rgb"].shape[:2])


def true_body_guide(sample: dict) -> np.ndarray:
    """The guide planes of the sample's own body (under any garments): what a perfect fit would give."""
    from core.guide import body_guide
    from core.template import load_template

    shape = tuple(int(x) for x in sample["volume_shape"])
    return body_guide(sample["vertices_vox"], load_template().faces, shape, sample["rgb"].shape[:2])


def evaluate_model(model_ref, data_dirs, split: str = "test", limit: int = 0, surface: bool = True,
                   device: str = "auto", depth_anchor: str | None = None, match_mask: bool = True,
                   true_guide: bool = False) -> dict:
    """Held-out figures of one model; targets aligned by `depth_anchor` (default: the model's own); the volume
    keeps to the sample's (detected) person mask as inference does (`core.silhouette`) unless match_mask=False
    (the network's own volume: how Table 1 compares networks). true_guide=True gives a body-guided model the
    sample's true body instead of the fit: never a result, the ceiling a perfect fit would give the network."""
    torch_device = pick_device(device)
    loaded = load_model(model_ref, device=str(torch_device))
    cfg = loaded.config
    anchor = depth_anchor or model_depth_anchor(loaded)
    rows = [r for d in data_dirs for r in read_manifest(d) if r.get("split") == split]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise MonohumanError(f"No {split!r} samples in {', '.join(map(str, data_dirs))}.",
                             "Evaluate on a dataset with a held-out split (see its card.json).")
    # a body-guided model sees the body fitted to each render, exactly as inference fits it (no truth leaks in)
    initialiser = load_model("hmnet-default", device=str(torch_device)) if "body" in cfg.inputs else None
    per_sample = []
    for row in tqdm(rows, desc=f"evaluate {loaded.name}", file=sys.stderr):
        sample = read_sample(row["path"])
        k = pooling_factor(sample["volume"].shape, cfg.volume_shape)  # a coarser model on finer data
        target = target_volume(sample["volume"], cfg.volume_shape, anchor)
        body = None if initialiser is None else true_body_guide(sample) if true_guide else fitted_guide(
            sample, initialiser, torch_device)
        mask = training_mask(sample)
        x = encode(sample["rgb"], inference_landmarks(sample), mask, cfg.inputs, body=body)
        prob = predict_volume(loaded, x, torch_device)
        entry = {"file": row["file"]}
        if match_mask:  # what keeping to the mask adds, from the same prediction
            entry.update(iou_raw=float(volume_iou(prob > 0.5, target)),
                         silhouette_iou_raw=silhouette_iou(prob > 0.5, target.any(axis=0)))
            prob = agree_with_mask(prob, mask, surface_level(loaded))
        pred = prob > 0.5
        entry |= {"iou": float(volume_iou(pred, target)),
                 "iou_at_model_level": float(volume_iou(prob > surface_level(loaded), target)),
                 "silhouette_iou": silhouette_iou(pred, target.any(axis=0))}  # the front view is the mask
        entry["iou_best_depth_shift"], entry["best_depth_shift"] = best_depth_shift_iou(
            prob > surface_level(loaded), target)
        if surface and (prob > surface_level(loaded)).any():
            metres = 1.0 / float(sample["meta"]["px_per_metre"])  # per voxel of the data
            pred_mesh = extract_surface(prob, level=surface_level(loaded), smooth_iterations=10)
            gt_mesh = ground_truth_mesh(sample)
            gt_mesh.apply_translation([0.0, 0.0, depth_anchor_shift(sample["volume"], anchor)])
            pred_mesh.apply_scale(metres * k)
            gt_mesh.apply_scale(metres)
            entry.update(surface_distances_mm(pred_mesh, gt_mesh, samples=5000))
        per_sample.append(entry)
    summary = {"model": loaded.name, "variant": cfg.variant, "samples": len(per_sample), "split": split,
               "level": surface_level(loaded), "depth_anchor": anchor, "match_mask": match_mask,
               **({"guide": "the true body (a ceiling, not a result)"} if true_guide and initialiser else {})}
    for key in ("iou", "iou_at_model_level", "iou_best_depth_shift", "silhouette_iou", "chamfer_mm", "p2s_mm",
                "iou_raw", "silhouette_iou_raw"):
        values = [e[key] for e in per_sample if key in e]
        if values:
            summary[f"{key}_mean"] = float(np.mean(values))
            summary[f"{key}_median"] = float(np.median(values))
    summary["history"] = (loaded.meta.get("metrics") or {}).get("history", [])
    summary["per_sample"] = per_sample
    return summary


def evaluate_photos(model_ref, count: int = 8, seed: int = 1000, size: int = 384, device: str = "auto",
                    match_mask: bool = True) -> dict:
    """Silhouette agreement on photo-like renders (full frame, room background) through the whole pipeline.

    The front projection of the reconstructed volume is compared with mediapipe's person mask (what the user
    sees matching the photo) and with the true rendered mask, both cropped to the volume's grid.
    """
    import tempfile

    from core.crop import crop_image
    from core.reconstruct import reconstruct
    from train.render import render_person_photo

    loaded = load_model(model_ref, device=str(pick_device(device)))
    _, h, w = loaded.config.volume_shape
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in tqdm(range(count), desc="photos", file=sys.stderr):
            photo = Path(tmp) / f"photo{i}.png"
            truth = render_person_photo(photo, size=size, seed=seed + i, samples=16)
            result = reconstruct(photo, model=loaded, method="vrn", device=device, match_mask=match_mask)
            front = (result.volume > surface_level(loaded)).any(axis=0)
            detected = crop_image(result.mask, result.crop_box, (h, w)) > 0.5
            true_mask = crop_image(truth["mask"].astype(np.float32), result.crop_box, (h, w)) > 0.5
            rows.append({"seed": seed + i, "vs_detected_mask": silhouette_iou(front[None], detected),
                         "vs_true_mask": silhouette_iou(front[None], true_mask)})
    return {"model": loaded.name, "photos": count, "size": size, "first_seed": seed, "match_mask": match_mask,
            "vs_detected_mask_mean": float(np.mean([r["vs_detected_mask"] for r in rows])),
            "vs_true_mask_mean": float(np.mean([r["vs_true_mask"] for r in rows])), "per_photo": rows}


def results_table(summaries: list[dict]) -> str:
    lines = ["| model | variant | depth anchor | samples | IoU mean (0.5) | IoU median (0.5) | IoU mean (model level) | "
             "IoU, best depth shift | silhouette IoU | Chamfer mm | P2S mm |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        def cell(key, fmt="{:.3f}"):
            return fmt.format(s[key]) if key in s else "n/a"
        lines.append(f"| {s['model']} | {s['variant']} | {s.get('depth_anchor', 'vertex-mean')} | {s['samples']} | "
                     f"{cell('iou_mean')} | "
                     f"{cell('iou_median')} | {cell('iou_at_model_level_mean')} ({s['level']:g}) | "
                     f"{cell('iou_best_depth_shift_mean')} | {cell('silhouette_iou_mean')} | "
                     f"{cell('chamfer_mm_mean', '{:.1f}')} | {cell('p2s_mm_mean', '{:.1f}')} |")
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


def replace_section(path: Path, begin: str, end: str, lines: list[str], title: str) -> None:
    """Write `lines` between the begin/end markers of a markdown file, keeping everything people wrote
    around them (the markers are appended the first time)."""
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else f"{title}\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_results(path: Path, summaries: list[dict], data_dirs, command: str, photos=()) -> None:
    """Replace the evaluate section of RESULTS.md, keeping everything else a person wrote there."""
    plot = path.parent / "figures" / "iou_by_epoch.png"
    body = [f"Held-out split, data: {', '.join(map(str, data_dirs))}.",
            f"Reproduce: `{command}`", "", results_table(summaries)]
    for p in photos:
        body += ["", f"Photo-like renders through the whole pipeline ({p['photos']} photos, {p['size']} px, seeds "
                 f"{p['first_seed']}+): silhouette IoU of `{p['model']}` {p['vs_detected_mask_mean']:.3f} against "
                 f"mediapipe's mask, {p['vs_true_mask_mean']:.3f} against the true mask."]
    if plot_history(summaries, plot):
        body += ["", f"![validation IoU by epoch]({plot.relative_to(path.parent)})"]
    replace_section(path, RESULTS_BEGIN, RESULTS_END, body, title="# Results")


def evaluation_parser(prog: str, doc: str, method: str) -> argparse.ArgumentParser:
    """The flags every evaluation command shares (this one and train.evaluate_mesh)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders with a held-out split")
    parser.add_argument("--model", nargs="+", default=[DEFAULT_MODELS[method]], help="model names or paths")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most this many samples")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", help="update this markdown file (e.g. docs/RESULTS.md)")
    parser.add_argument("--json", help="write all figures, per sample too, to this JSON file")
    return parser


def command_of(argv) -> str:
    return "python -m train.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])


def main(argv=None) -> int:
    """The command: one line and its exit code for every expected failure (core.errors.run_command)."""
    from core.errors import run_command

    return run_command(lambda: _main(argv))


def _main(argv=None) -> int:
    parser = evaluation_parser("python -m train.evaluate", __doc__, "vrn")
    parser.add_argument("--no-surface", action="store_true", help="skip the (slower) surface metrics")
    parser.add_argument("--depth-anchor", choices=DEPTH_ANCHORS, default=None,
                        help="align the targets by this anchor (default: each model's own, see train/dataset.py)")
    parser.add_argument("--photos", type=int, default=0,
                        help="also reconstruct this many photo-like renders end to end (silhouette agreement)")
    parser.add_argument("--raw-surface", action="store_true",
                        help="the network's own volume, not kept to the person mask (core.silhouette)")
    parser.add_argument("--true-guide", action="store_true",
                        help="analysis only: give a body-guided model the true body instead of the fit (a ceiling)")
    args = parser.parse_args(argv)
    try:
        if all(model_method(m) == "hmnet" for m in args.model):
            from train.evaluate_mesh import MeshEvaluation, evaluate_meshes

            job = MeshEvaluation(args.data, args.model, args.split, args.limit, args.device, args.write, args.json)
            return evaluate_meshes(job, command_of(argv))
        summaries = [evaluate_model(m, args.data, args.split, args.limit, not args.no_surface, args.device,
                                    args.depth_anchor, not args.raw_surface, args.true_guide) for m in args.model]
    except MonohumanError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(results_table(summaries))
    for s in summaries:
        if "iou_raw_mean" in s:
            print(f"{s['model']}: the network's own volume (--raw-surface) IoU {s['iou_raw_mean']:.3f}, silhouette "
                  f"IoU {s['silhouette_iou_raw_mean']:.3f}; kept to the mask {s['iou_mean']:.3f} / "
                  f"{s['silhouette_iou_mean']:.3f}")
    photos = ([evaluate_photos(m, args.photos, device=args.device, match_mask=not args.raw_surface)
               for m in args.model] if args.photos else [])
    for p in photos:
        print(f"{p['model']}: silhouette IoU on {p['photos']} photo-like renders: "
              f"{p['vs_detected_mask_mean']:.3f} against mediapipe's mask, {p['vs_true_mask_mean']:.3f} against the "
              "true mask")
    if args.json:
        Path(args.json).write_text(json.dumps({"heldout": summaries, "photos": photos}, indent=1))
    if args.write:
        write_results(Path(args.write), summaries, args.data, command_of(argv), photos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
