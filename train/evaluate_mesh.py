"""Held-out evaluation of HumanMeshNet models: the paper's mesh errors (section 4.2, tables 2 and 4).

    python -m train.evaluate_mesh --data /work/data/anny128-a                       # the shipped model
    python -m train.evaluate_mesh --data DIR --model runs/a/model runs/b/model --write docs/RESULTS.md

`python -m train.evaluate --model hmnet-default` lands here too (models are dispatched by method).

Per sample: mean vertex error over the full Anny mesh and mean joint error (the joints regressed from the
predicted surface, as the paper evaluates), in millimetres, before and after Procrustes alignment (scale,
rotation, translation) onto the ground truth. Inputs are what inference has: the crop and the off-the-shelf
part split of mediapipe's mask by its landmarks, whatever parts the variant was trained on. The "mean body"
row is the neutral Anny body upright in the frame for every photo: the floor any model must beat.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import load_model
from core.errors import MonohumanError
from core.networks.hmnet import neutral_body_unit
from core.reconstruct import pick_device
from train.evaluate import evaluation_parser, replace_section
from train.fit_hmnet import MeshDataset
from train.metrics_mesh import mesh_errors
from train.samples import read_sample

RESULTS_BEGIN = "<!-- evaluate-mesh:begin -->"
RESULTS_END = "<!-- evaluate-mesh:end -->"
KEYS = ("surface_mm", "joint_mm", "pa_surface_mm", "pa_joint_mm")


def _summarise(name: str, variant: str, rows: list[dict], split: str) -> dict:
    out = {"model": name, "variant": variant, "samples": len(rows), "split": split}
    for k in KEYS + (("iou",) if rows and "iou" in rows[0] else ()):
        out[f"{k}_mean"] = float(np.mean([r[k] for r in rows]))
        out[f"{k}_median"] = float(np.median([r[k] for r in rows]))
    out["per_sample"] = rows
    return out


def _iou(path, pred_unit: np.ndarray, volume_shape) -> float:
    """The predicted body's volume IoU against the sample's (the fit's rule, `train.evaluate_fit`)."""
    from core.networks.hmnet import from_unit
    from train.evaluate_fit import volume_agreement

    return volume_agreement(read_sample(path), from_unit(pred_unit, tuple(volume_shape)))


def evaluate_mesh_model(model_ref, data_dirs, split: str = "test", limit: int = 0, device: str = "auto",
                        batch_size: int = 16, with_iou: bool = True) -> dict:
    torch_device = pick_device(device)
    loaded = load_model(model_ref, device=str(torch_device))
    model = loaded.network.eval()
    cfg = dataclasses.replace(loaded.config, parts_source="detected")  # inference has no rendered parts
    data = MeshDataset(data_dirs, split, cfg)
    indices = list(range(len(data)))[: limit or None]
    rows = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(indices), batch_size), desc=f"evaluate {loaded.name}", file=sys.stderr):
            items = [data[j] for j in indices[i:i + batch_size]]
            x, parts, verts, joints, unit_per_m = (torch.stack(t) for t in zip(*items))
            out = model(x.to(torch_device), parts.to(torch_device))
            pred_v = model.full_vertices(out).double().cpu()
            pred_j = out["surface_joints"].double().cpu()
            for b, j in enumerate(indices[i:i + batch_size]):
                errors = mesh_errors(pred_v[b], verts[b], pred_j[b], joints[b], 1000.0 / float(unit_per_m[b]))
                if with_iou:
                    errors["iou"] = _iou(data.rows[j]["path"], pred_v[b].numpy(), cfg.volume_shape)
                rows.append({"file": data.rows[j]["file"], **errors})
    return {**_summarise(loaded.name, cfg.variant, rows, split),
            "history": (loaded.meta.get("metrics") or {}).get("history", []),
            "training": loaded.meta.get("training", {})}


def evaluate_mean_body(data_dirs, split: str = "test", limit: int = 0) -> dict:
    """The neutral body for every sample (no network): what the errors are before anything is learnt."""
    from core.networks.hmnet import config_for
    from core.template import load_template

    template = load_template()
    data = MeshDataset(data_dirs, split, config_for("baseline"))
    neutral, neutral_j = None, None
    rows = []
    for j in range(min(limit or len(data), len(data))):
        _, _, verts, joints, unit_per_m = data[j]
        if neutral is None:  # the frame is the data's: build the neutral body for its volume shape
            shape = tuple(int(v) for v in read_sample(data.rows[j]["path"], volume=False)["volume_shape"])
            neutral = torch.from_numpy(neutral_body_unit(template, config_for("baseline", volume_shape=shape)))
            neutral_j = template.regressor("full").to(neutral.dtype) @ neutral
        rows.append({"file": data.rows[j]["file"],
                     **mesh_errors(neutral, verts, neutral_j, joints, 1000.0 / float(unit_per_m))})
    return _summarise("mean body (no network)", "-", rows, split)


def results_table(summaries: list[dict]) -> str:
    lines = ["| model | variant | epochs | samples | surface mm | joint mm | PA surface mm | PA joint mm | IoU |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        iou = f"{s['iou_mean']:.3f}" if "iou_mean" in s else "-"
        lines.append(f"| {s['model']} | {s['variant']} | {len(s.get('history', [])) or '-'} | {s['samples']} | "
                     + " | ".join(f"{s[k + '_mean']:.1f}" for k in KEYS) + f" | {iou} |")
    return "\n".join(lines)


def write_results(path: Path, summaries: list[dict], data_dirs, command: str) -> None:
    body = [f"HumanMeshNet, held-out split of {', '.join(map(str, data_dirs))} (means over samples; joints "
            "regressed from the predicted surface; PA = after Procrustes alignment: scale, rotation, translation).",
            f"Reproduce: `{command}`", "", results_table(summaries)]
    replace_section(path, RESULTS_BEGIN, RESULTS_END, body, title="# Results")


def main(argv=None) -> int:
    """The command: one line and its exit code for every expected failure (core.errors.run_command)."""
    from core.errors import run_command

    return run_command(lambda: _main(argv))


@dataclasses.dataclass
class MeshEvaluation:
    """What `python -m train.evaluate_mesh` is asked to do; its fields are the flags."""
    data: list
    model: list
    split: str = "test"
    limit: int = 0
    device: str = "auto"
    write: str | None = None
    json: str | None = None
    no_mean_body: bool = False
    photos: int = 0


def _main(argv=None) -> int:
    parser = evaluation_parser("python -m train.evaluate_mesh", __doc__, "hmnet")
    parser.add_argument("--no-mean-body", action="store_true", help="leave out the mean-body row")
    parser.add_argument("--photos", type=int, default=0,
                        help="with the fit among the models: also fit this many photo-like renders (2D joint "
                             "error in pixels, front silhouette against the person mask)")
    args = parser.parse_args(argv)
    command = "python -m train.evaluate_mesh " + " ".join(argv if argv is not None else sys.argv[1:])
    return evaluate_meshes(MeshEvaluation(**vars(args)), command)


def evaluate_meshes(job: MeshEvaluation, command: str) -> int:
    """Print the mesh metrics table of `job`'s models (and write it where asked); the exit code."""
    try:
        from train.evaluate_fit import evaluate_fit, is_fit_model

        summaries = [evaluate_fit(m, job.data, job.split, job.limit, job.device) if is_fit_model(m) else
                     evaluate_mesh_model(m, job.data, job.split, job.limit, job.device) for m in job.model]
        if not job.no_mean_body:
            summaries.append(evaluate_mean_body(job.data, job.split, job.limit))
    except MonohumanError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(results_table(summaries))
    photo_rows = []
    if job.photos and any(is_fit_model(m) for m in job.model):
        from train.evaluate_fit import evaluate_fit_photos

        photos = evaluate_fit_photos(job.photos, device=job.device)
        print(f"fit on {job.photos} photo-like renders ({photos['size']} px): joints {photos['joint_px_mean']:.1f} px "
              f"({photos['joint_pct_height_mean']:.1f} % of the person's height) from the true ones; front silhouette "
              f"IoU {photos['vs_true_mask_mean']:.3f} against the true mask, {photos['vs_detected_mask_mean']:.3f} "
              "against mediapipe's")
        photo_rows.append({"photos": photos})
    if job.json:
        Path(job.json).write_text(json.dumps(summaries + photo_rows, indent=1))
    if job.write:
        write_results(Path(job.write), summaries, job.data, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
