"""Build HumanMeshNet's template file, models/anny-template.npz (core/template.py documents its contents).

    python -m train.build_template --data /work/data/anny128-a          # once; --out to write elsewhere

Anny's topology, rig and skin weights at the rest phenotype, the subsampled template with its upsampling,
and a joint regressor fitted on the samples' (vertices_vox, joints_vox) pairs; prints its measured errors.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError, run_command
from core.validate import Parser
from train.dataset import read_manifest
from train.samples import read_sample


def _bone_tails(heads: np.ndarray, axes: np.ndarray, parents: list[int]) -> np.ndarray:
    """Tail = head + length * the bone's y axis; length = the projection of the child head furthest along y
    (a chain continues into its child), else half the parent's length (leaves), at least 2 cm."""
    n = len(heads)
    length = np.zeros(n)
    for b in range(n):
        kids = [c for c in range(n) if parents[c] == b]
        proj = [float((heads[c] - heads[b]) @ axes[b][:, 1]) for c in kids]
        length[b] = max(proj) if proj and max(proj) > 1e-3 else 0.0
    for b in range(n):  # parents come before children in Anny's order
        if length[b] <= 1e-3:
            length[b] = max(0.5 * length[parents[b]], 0.02) if parents[b] >= 0 else 0.1
    return heads + length[:, None] * axes[:, :, 1]


def rest_body() -> dict:
    """Anny at the rest phenotype (every phenotype value 0.5), feet on z = 0 and the root over the origin: its
    vertices, faces, part labels, bones (heads, tails, axes, names, parents) and normalised skin weights."""
    from train import bodies

    model = bodies.get_model()
    st = bodies.topology()
    ph = {k: torch.tensor([0.5], dtype=model.dtype) for k in model.phenotype_labels}
    with torch.no_grad():
        res = model(phenotype_kwargs=ph)
    verts = res["vertices"][0].numpy().astype(np.float64)
    poses = res["bone_poses"][0].numpy().astype(np.float64)
    heads, axes = poses[:, :3, 3].copy(), poses[:, :3, :3].copy()
    labels, parents = list(st.bone_labels), list(st.bone_parents)
    shift = np.array([-heads[labels.index("root"), 0], -heads[labels.index("root"), 1], -verts[:, 2].min()])
    verts, heads = verts + shift, heads + shift
    skin_weight = model.vertex_bone_weights.numpy().astype(np.float32)
    return dict(verts=verts, faces=st.faces, parts=st.parts, heads=heads, axes=axes,
                tails=_bone_tails(heads, axes, parents), labels=labels, parents=parents,
                skin_index=model.vertex_bone_indices.numpy().astype(np.int16),
                skin_weight=skin_weight / skin_weight.sum(1, keepdims=True))


def joint_supports(body: dict) -> list[np.ndarray]:
    """Support of joint j: vertices skinned (weight > 0.1 in total) to j, its parent or its children, the 256
    nearest to the rest head; at least the 32 nearest rest vertices when that is too few."""
    verts, heads, parents, skin_index = body["verts"], body["heads"], body["parents"], body["skin_index"]
    n_joints = len(body["labels"])
    dense = np.zeros((len(verts), n_joints))
    np.add.at(dense, (np.repeat(np.arange(len(verts)), skin_index.shape[1]), skin_index.reshape(-1).astype(int)),
              body["skin_weight"].reshape(-1))
    supports = []
    for j in range(n_joints):
        group = [j] + ([parents[j]] if parents[j] >= 0 else []) + [c for c in range(n_joints) if parents[c] == j]
        cand = np.flatnonzero(dense[:, group].sum(1) > 0.1)
        d_all = np.linalg.norm(verts - heads[j], axis=1)
        if len(cand) < 32:
            cand = np.union1d(cand, np.argsort(d_all)[:32])
        cand = cand[np.argsort(d_all[cand], kind="stable")[:256]]
        supports.append(np.sort(cand))
    return supports


def sample_meshes(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices_vox, joints_vox, px_per_metre) stacked over the samples of `rows`."""
    ss = [read_sample(r["path"], volume=False) for r in rows]
    return (np.stack([s["vertices_vox"] for s in ss]), np.stack([s["joints_vox"] for s in ss]),
            np.array([float(s["meta"]["px_per_metre"]) for s in ss]))


def build_template_file(data_dirs, out=None, fit_samples: int = 200, test_samples: int = 50) -> Path:
    """Anny's topology, rig and skin weights + the subsampled template + a joint regressor fitted on the
    samples' (vertices_vox, joints_vox) pairs; writes core.template's file and prints its measured errors."""
    from core.template import TEMPLATE_PATH, fit_regressor, save_template, subsample

    if not data_dirs:
        raise DataError("Building the template needs --data (samples to fit the joint regressor on).",
                        "Pass --data DIR (a folder from train.make_dataset).")
    body = rest_body()
    t0 = time.perf_counter()
    count = int(round(len(body["verts"]) / 4))
    sub_index, up_index, up_weight, sub_edges = subsample(body["verts"], body["faces"], count)
    t_sub = time.perf_counter() - t0

    rows = [r for d in data_dirs for r in read_manifest(d)]
    train_rows = [r for r in rows if r.get("split") == "train"][:fit_samples]
    test_rows = [r for r in rows if r.get("split") != "train"][:test_samples]
    v_train, j_train, _ = sample_meshes(train_rows)
    v_test, j_test, ppm = sample_meshes(test_rows)
    reg_index, reg_weight = fit_regressor(v_train, j_train, joint_supports(body))

    mm = 1000.0 / ppm[:, None]
    regressed = np.einsum("jk,sjkc->sjc", reg_weight, v_test[:, reg_index, :])
    reg_err = float((np.linalg.norm(regressed - j_test, axis=2) * mm).mean())
    up = (v_test[:, sub_index][:, up_index] * up_weight[None, :, :, None]).sum(2)
    up_err = float((np.linalg.norm(up - v_test, axis=2) * mm).mean())
    info = {"built_by": "python -m train.build_template", "data": [str(d) for d in data_dirs],
            "rest_phenotype": "all 0.5", "subsampled_count": count, "subsample_seconds": round(t_sub, 1),
            "regressor_fit_samples": len(train_rows), "test_samples": len(test_rows),
            "regressor_test_error_mm": round(reg_err, 2), "upsample_test_error_mm": round(up_err, 2)}
    arrays = dict(
        rest_vertices=body["verts"].astype(np.float32), faces=body["faces"].astype(np.int32),
        parts=body["parts"].astype(np.uint8), sub_index=sub_index, up_index=up_index, up_weight=up_weight,
        sub_edges=sub_edges, regressor_index=reg_index, regressor_weight=reg_weight,
        joint_names=np.array(body["labels"]), bone_parents=np.array(body["parents"], np.int32),
        bone_heads=body["heads"].astype(np.float32), bone_tails=body["tails"].astype(np.float32),
        bone_axes=body["axes"].astype(np.float32), skin_index=body["skin_index"], skin_weight=body["skin_weight"],
        info=np.array(json.dumps(info)))
    path = save_template(out or TEMPLATE_PATH, arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {json.dumps(info)}", file=sys.stderr)
    return path


def main(argv=None) -> int:
    parser = Parser(prog="python -m train.build_template", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[], help="dataset folders from train.make_dataset")
    parser.add_argument("--out", default="", help="where to write (default: core.template.TEMPLATE_PATH)")
    args = parser.parse_args(argv)
    return run_command(lambda: build_template_file(args.data, args.out or None) and 0)


if __name__ == "__main__":
    sys.exit(main())
