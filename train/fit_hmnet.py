"""Train HumanMeshNet (core/networks/hmnet.py) on datasets made by `train.make_dataset`; build its template.

    python -m train.fit_hmnet --build-template --data /work/data/anny128-a        # once: models/anny-template.npz
    python -m train.fit_hmnet --data DIR [DIR ...] --out runs/hmnet --variant hmnet --epochs 30
    python -m train.fit_hmnet --out runs/hmnet --resume                               # continue exactly

The paper's recipe is the default: Adam, learning rate 1e-4, the three losses of eq. 1 (L_S after the
eq. 3 smoothing, L_J, L_JS) weighted to contribute equally (see `core.networks.hmnet.hmnet_loss`).

nanoGPT-style: one loop in one function, a config dataclass whose fields are the flags, an evaluation every
`eval_every` steps, and the resumable state of `train.fit` (`save_state` / `load_state`: weights, optimizer,
RNG in one safetensors file, replaced atomically) plus `train.fit.split_train_val` and `write_log`, imported
not copied. The inference model is written with `core.checkpoint.save_model` (run/model.*; --export also
writes an fp16 copy).

Data: every sample gives the crop (`rgb`, encoded by `core.encode.encode`, the function inference calls), the
part image (the rendered ground truth `parts` for "oracle" variants, or `core.parts.parts_from_landmarks`
applied to the detector's mask and landmarks in the sample for "detected" ones: what inference will have),
and the targets `vertices_vox` / `joints_vox` put in the network's unit frame (`core.networks.hmnet.to_unit`).
Augmentation: the colour scaling and integer translation of `train.dataset.augment_sample` (the translation
is applied to the targets too) and a horizontal flip: the image and part labels are mirrored (left and right
parts swap, `core.parts.PART_MIRROR`), and so are the targets through Anny's left/right vertex and joint maps
(`core.template.Template.mirror`).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import save_model
from core.encode import encode
from core.errors import ArgumentError, DataError, Terminated, run_command
from core.networks.hmnet import build_hmnet, config_for, hmnet_loss, to_unit
from core.parts import PART_MIRROR, parts_from_landmarks
from core.template import load_template
from core.validate import Parser, choice
from train.dataset import Augment, augment_sample, read_manifest, training_mask
from train.fit import ignore_sigterm, learning_rate, load_state, resolve_run, save_state, split_train_val, write_log
from train.samples import read_sample


@dataclass
class HMNetTrainConfig:
    data: list[str] = field(default_factory=list)
    out: str = "runs/hmnet"
    variant: str = "hmnet"  # a name from core.networks.hmnet.VARIANTS
    template: str = ""  # full | subsampled; empty = the variant's default
    width: int = 0  # ResNet base width (64 = ResNet-18); 0 = the variant's default
    hidden: int = 0  # width of the FC branches and of each encoder's feature (1000 in the paper); 0 = default
    epochs: int = 30
    batch_size: int = 16  # the paper's for UP-3D
    lr: float = 1e-4  # the paper's
    flip: float = 0.5  # probability of a horizontal flip (image, parts and mirrored targets)
    lr_late: float = 0.0  # learning rate after lr_drop of the epochs (0 = keep lr throughout)
    lr_drop: float = 0.75
    val_samples: int = 64
    eval_every: int = 0  # steps between evaluations; 0 = once per epoch
    workers: int = 2
    threads: int = 0
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0
    resume: bool = False
    export: str = ""
    name: str = ""
    build_template: bool = False  # build models/anny-template.npz from anny + the --data samples, then exit
    template_out: str = ""  # where --build-template writes (default: core.template.TEMPLATE_PATH)
    eval_parts: int = 0  # measure the off-the-shelf part mIoU on this many held-out samples of --data, then exit


def parse_config(argv=None) -> HMNetTrainConfig:
    parser = Parser(prog="python -m train.fit_hmnet", description=__doc__.splitlines()[0])
    for f in dataclasses.fields(HMNetTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        elif f.name == "data":
            parser.add_argument(flag, nargs="+", default=[])
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=f.default)
    return HMNetTrainConfig(**vars(parser.parse_args(argv)))


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------

class MeshDataset(torch.utils.data.Dataset):
    """(rgb input, part input, vertices, joints, px_per_metre) per sample; targets in the unit frame."""

    def __init__(self, data_dirs, split, net_cfg, augment: Augment | None = None, seed: int = 0):
        dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
        self.rows = [r for d in dirs for r in read_manifest(d) if split is None or r.get("split") == split]
        if not self.rows:
            raise DataError(f"No {split or ''} samples in {', '.join(map(str, dirs))}.",
                            "Generate more samples, or check the split names in the dataset card.")
        self.cfg = net_cfg
        self.augment = augment if augment is not None else Augment(colour=0.0, shift=0.0, flip=0.0)
        self.mirror = load_template().mirror() if self.augment.flip else None
        self.seed, self.epoch = seed, 0

    def __len__(self):
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index):
        cfg = self.cfg
        s = read_sample(self.rows[index]["path"], volume=False)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        parts = part_image(s, cfg.parts_source) if cfg.uses_parts else np.zeros(s["mask"].shape, np.uint8)
        d, h, w = (int(v) for v in s["volume_shape"])
        # augment_sample shifts the image, the "mask" (our part labels) and a volume, and reports the shift
        # through the landmarks; a (1, H, W) stand-in volume carries the voxel grid at no cost.
        probe = np.zeros((16, 3), np.float32)
        no_flip = dataclasses.replace(self.augment, flip=0.0)  # the flip is done here: targets need the mirror
        rgb, parts, moved, _ = augment_sample(s["rgb"], parts, probe, np.zeros((1, h, w), bool), no_flip, rng)
        h_in, w_in = rgb.shape[:2]
        shift_vox = np.array([moved[0, 0] * w / w_in, moved[0, 1] * h / h_in, 0.0], np.float32)
        verts, joints = s["vertices_vox"] + shift_vox, s["joints_vox"] + shift_vox
        if self.mirror is not None and rng.random() < self.augment.flip:
            rgb, parts = np.ascontiguousarray(rgb[:, ::-1]), PART_MIRROR[parts[:, ::-1]]
            verts, joints = verts[self.mirror[0]], joints[self.mirror[1]]
            verts[:, 0], joints[:, 0] = w - verts[:, 0], w - joints[:, 0]
        verts, joints = to_unit(verts, (d, h, w)), to_unit(joints, (d, h, w))
        x_rgb = encode(rgb, s["landmarks16"], s["mask"], ("image",))
        return (torch.from_numpy(x_rgb), torch.from_numpy(parts.astype(np.int64)),
                torch.from_numpy(verts.astype(np.float32)), torch.from_numpy(joints.astype(np.float32)),
                torch.tensor(float(s["meta"]["px_per_metre"]) / max(d, h, w)))


def part_image(sample: dict, source: str) -> np.ndarray:
    """The part labels the network sees: the rendered ground truth ("oracle") or the off-the-shelf split of the
    detector's mask by the detected landmarks ("detected"; falls back to the projected landmarks when the
    detector found none)."""
    if source == "oracle":
        return np.asarray(sample["parts"], np.uint8)
    lm = sample["landmarks16_detected"]
    if not np.isfinite(lm).all():
        lm = sample["landmarks16"]
    return parts_from_landmarks(training_mask(sample) > 127, lm)


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------

def net_config(cfg: HMNetTrainConfig, volume_shape, input_size):
    overrides = {"volume_shape": tuple(volume_shape), "input_size": tuple(input_size)}
    for key in ("template", "width", "hidden"):
        if getattr(cfg, key):
            overrides[key] = getattr(cfg, key)
    return config_for(cfg.variant, **overrides)


def evaluate(model, loader, device) -> dict:
    """Mean vertex and joint errors in mm (no alignment) on the validation part; joints from the surface."""
    from train.metrics_mesh import mean_distance

    model.eval()
    sums = {"surface_mm": 0.0, "joint_mm": 0.0}
    count = 0
    with torch.inference_mode():
        for x_rgb, parts, verts, joints, unit_per_m in loader:
            out = model(x_rgb.to(device), parts.to(device))
            mm = 1000.0 / unit_per_m.to(device)  # unit-frame length -> millimetres, per sample
            if "vertices" in out:
                sums["surface_mm"] += float((mean_distance(model.full_vertices(out), verts.to(device)) * mm).sum())
                sums["joint_mm"] += float((mean_distance(out["surface_joints"], joints.to(device)) * mm).sum())
            else:
                sums["joint_mm"] += float((mean_distance(out["joints"], joints.to(device)) * mm).sum())
            count += len(x_rgb)
    model.train()
    return {k: round(v / max(count, 1), 2) for k, v in sums.items()}


def main(argv=None) -> int:
    cfg = parse_config(argv)

    def body() -> int:
        if cfg.build_template:
            build_template_file(cfg.data, cfg.template_out or None)
            return 0
        if cfg.eval_parts:
            print(json.dumps(evaluate_parts(cfg.data, cfg.eval_parts), indent=1))
            return 0
        return fit(cfg, command=" ".join(["python -m train.fit_hmnet", *map(shlex.quote, argv or sys.argv[1:])]))

    return run_command(body)  # one line and the exit code for every expected failure


def fit(cfg: HMNetTrainConfig, command: str = "") -> int:
    cfg = resolve_run(cfg)
    run = Path(cfg.out)
    state_path = run / "state.safetensors"

    choice("--device", cfg.device, ("auto", "cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("--device cuda: no CUDA GPU is available here.", "Use --device cpu or auto.")
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    first = read_sample(read_manifest(cfg.data[0])[0]["path"], volume=False)
    net_cfg = net_config(cfg, [int(v) for v in first["volume_shape"]], first["rgb"].shape[:2])
    train_set = MeshDataset(cfg.data, "train", net_cfg, Augment(flip=cfg.flip), cfg.seed)
    val_set = MeshDataset(cfg.data, "train", net_cfg, None, cfg.seed)
    train_idx, val_idx = split_train_val(train_set, cfg.val_samples, cfg.seed)
    train_part = torch.utils.data.Subset(train_set, train_idx)
    val_part = torch.utils.data.Subset(val_set, val_idx)

    model = build_hmnet(net_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    epoch0, skip, step, history = 0, 0, 0, []
    if cfg.resume:
        meta = load_state(state_path, model, optimizer)
        epoch0, skip, step, history = meta["epoch"], meta["batch"], meta["step"], meta["history"]
    else:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    loader_kw = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", worker_init_fn=ignore_sigterm)
    val_loader = torch.utils.data.DataLoader(val_part, batch_size=cfg.batch_size, **loader_kw)
    per_epoch = len(train_part) // cfg.batch_size
    if per_epoch == 0:
        raise DataError(f"{len(train_part)} training samples give no full batch of {cfg.batch_size}.",
                        "Generate more samples or lower --batch-size.")

    def checkpoint(epoch, batch):
        save_state(state_path, model, optimizer, {"epoch": epoch, "batch": batch, "step": step, "history": history})

    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    epoch, batch = epoch0, skip
    try:
        for epoch in range(epoch0, cfg.epochs):
            train_set.set_epoch(epoch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_part))
            batches = [order[i * cfg.batch_size:(i + 1) * cfg.batch_size].tolist() for i in range(per_epoch)]
            loader = torch.utils.data.DataLoader(train_part, batch_sampler=batches[skip:], **loader_kw)
            t0, batch, sums = time.perf_counter(), skip, {}
            for x_rgb, parts, verts, joints, _ in loader:
                out = model(x_rgb.to(device), parts.to(device))
                loss, terms = hmnet_loss(model, out, verts.to(device), joints.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, batch = step + 1, batch + 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if cfg.eval_every and step % cfg.eval_every == 0:
                    print(f"step {step}: " + " ".join(f"{k} {v / (batch - skip):.4f}" for k, v in sums.items())
                          + f" val {evaluate(model, val_loader, device)}", file=sys.stderr)
                if stop["now"] or (cfg.max_steps and step >= cfg.max_steps):
                    break
            if batch < per_epoch:  # interrupted or max_steps: save where we are
                checkpoint(epoch, batch)
                break
            skip = 0
            history.append({"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                            **{k: round(v / per_epoch, 5) for k, v in sums.items()},
                            **{f"val_{k}": v for k, v in evaluate(model, val_loader, device).items()},
                            "seconds": round(time.perf_counter() - t0, 1)})
            checkpoint(epoch + 1, 0)
            export(cfg, run, model, history, step, len(train_part), command)
            write_log(run / "log.csv", history)
            print(f"epoch {epoch + 1}: {history[-1]}", file=sys.stderr)
    except KeyboardInterrupt:
        checkpoint(epoch, batch)
        print(f"interrupted: state saved in {state_path}; continue with --resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stop["now"]:  # a scheduler must be able to tell a stopped run from a finished one
        raise Terminated(f"Stopped by SIGTERM; the state is saved in {state_path}.", "Continue with --resume.")
    return 0


def export(cfg, run: Path, model, history, step, samples, command) -> None:
    meta = {"name": cfg.name or run.name,
            "training": {"command": command, "data": cfg.data, "epochs": history[-1]["epoch"], "steps": step,
                         "samples": samples, "recipe": dataclasses.asdict(cfg)},
            "metrics": {k: v for k, v in history[-1].items() if k.startswith("val_")} | {"history": history}}
    save_model(run / "model", model, meta, dtype=torch.float32)
    if cfg.export:
        save_model(Path(cfg.export), model, {**meta, "name": Path(cfg.export).name}, dtype=torch.float16)


def evaluate_parts(data_dirs, count: int = 20, split: str = "test") -> dict:
    """Part mIoU (14 body parts, intersections and unions summed over the samples) of the off-the-shelf split
    against the rendered labels, on the first `count` samples of `split` whose render mediapipe detected:

    - "sample_landmarks": `parts_from_landmarks` on the rendered mask and the sample's detected landmarks
      (mediapipe on the full render, mapped into the crop): the partition rule alone;
    - "mediapipe_on_crop": `core.detect.detect_person` run on the 128-px crop itself, its mask and 33
      landmarks through `parts_from_mediapipe33`: what inference does, at the crop's resolution.
    """
    from core.detect import detect_person
    from core.errors import NoPersonError
    from core.parts import PART_NAMES, part_iou, parts_from_mediapipe33

    rows = [r for d in data_dirs for r in read_manifest(d) if r.get("split") == split and r.get("detected")]
    rows = rows[:count]
    acc = {"sample_landmarks": [0, 0], "mediapipe_on_crop": [0, 0]}
    missed = 0
    for r in rows:
        s = read_sample(r["path"], volume=False)
        pred = parts_from_landmarks(s["mask"] > 127, s["landmarks16_detected"])
        i, u = part_iou(pred, s["parts"])
        acc["sample_landmarks"][0] += i
        acc["sample_landmarks"][1] += u
        try:
            det = detect_person(s["rgb"])
            pred = parts_from_mediapipe33(det.mask > 0.5, det.landmarks33)
        except NoPersonError:
            missed += 1
            pred = np.zeros_like(s["parts"])
        i, u = part_iou(pred, s["parts"])
        acc["mediapipe_on_crop"][0] += i
        acc["mediapipe_on_crop"][1] += u
    out = {"samples": len(rows), "split": split, "crop_detection_missed": missed}
    for name, (i, u) in acc.items():
        iou = np.where(u > 0, i / np.maximum(u, 1), np.nan)
        out[name] = {"mIoU": round(float(np.nanmean(iou)), 4),
                     "per_part": {PART_NAMES[k + 1]: round(float(v), 3) for k, v in enumerate(iou)}}
    return out


# ---------------------------------------------------------------------------------------------------------
# The template file (core/template.py documents its contents)
# ---------------------------------------------------------------------------------------------------------

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


def build_template_file(data_dirs, out=None, fit_samples: int = 200, test_samples: int = 50) -> Path:
    """Anny's topology, rig and skin weights + the subsampled template + a joint regressor fitted on the
    samples' (vertices_vox, joints_vox) pairs; writes core.template's file and prints its measured errors."""
    from core.template import TEMPLATE_PATH, fit_regressor, save_template, subsample
    from train import bodies

    if not data_dirs:
        raise DataError("--build-template needs --data (samples to fit the joint regressor on).",
                        "Pass --data DIR (a folder from train.make_dataset).")
    model = bodies.get_model()
    st = bodies._static()
    ph = {k: torch.tensor([0.5], dtype=model.dtype) for k in model.phenotype_labels}
    with torch.no_grad():
        res = model(phenotype_kwargs=ph)
    verts = res["vertices"][0].numpy().astype(np.float64)
    poses = res["bone_poses"][0].numpy().astype(np.float64)
    heads, axes = poses[:, :3, 3].copy(), poses[:, :3, :3].copy()
    labels, parents = list(st["bone_labels"]), list(st["bone_parents"])
    shift = np.array([-heads[labels.index("root"), 0], -heads[labels.index("root"), 1], -verts[:, 2].min()])
    verts, heads = verts + shift, heads + shift
    tails = _bone_tails(heads, axes, parents)
    faces = st["faces"]
    skin_index = model.vertex_bone_indices.numpy().astype(np.int16)
    skin_weight = model.vertex_bone_weights.numpy().astype(np.float32)
    skin_weight /= skin_weight.sum(1, keepdims=True)

    t0 = time.perf_counter()
    count = int(round(len(verts) / 4))
    sub_index, up_index, up_weight, sub_edges = subsample(verts, faces, count)
    t_sub = time.perf_counter() - t0

    rows = [r for d in data_dirs for r in read_manifest(d)]
    train_rows = [r for r in rows if r.get("split") == "train"][:fit_samples]
    test_rows = [r for r in rows if r.get("split") != "train"][:test_samples]

    def load(rs):
        ss = [read_sample(r["path"], volume=False) for r in rs]
        return (np.stack([s["vertices_vox"] for s in ss]), np.stack([s["joints_vox"] for s in ss]),
                np.array([float(s["meta"]["px_per_metre"]) for s in ss]))

    Vtr, Jtr, _ = load(train_rows)
    Vte, Jte, ppm = load(test_rows)
    # Support of joint j: vertices skinned (weight > 0.1 in total) to j, its parent or its children, the 256
    # nearest to the rest head; at least the 32 nearest rest vertices when that is too few.
    dense = np.zeros((len(verts), len(labels)))
    np.add.at(dense, (np.repeat(np.arange(len(verts)), skin_index.shape[1]), skin_index.reshape(-1).astype(int)),
              skin_weight.reshape(-1))
    supports = []
    for j in range(len(labels)):
        group = [j] + ([parents[j]] if parents[j] >= 0 else []) + [c for c in range(len(labels)) if parents[c] == j]
        cand = np.flatnonzero(dense[:, group].sum(1) > 0.1)
        d_all = np.linalg.norm(verts - heads[j], axis=1)
        if len(cand) < 32:
            cand = np.union1d(cand, np.argsort(d_all)[:32])
        cand = cand[np.argsort(d_all[cand], kind="stable")[:256]]
        supports.append(np.sort(cand))
    reg_index, reg_weight = fit_regressor(Vtr, Jtr, supports)

    def regress(V):
        return np.einsum("jk,sjkc->sjc", reg_weight, V[:, reg_index, :])

    mm = 1000.0 / ppm[:, None]
    reg_err = float((np.linalg.norm(regress(Vte) - Jte, axis=2) * mm).mean())
    up = (Vte[:, sub_index][:, up_index] * up_weight[None, :, :, None]).sum(2)
    up_err = float((np.linalg.norm(up - Vte, axis=2) * mm).mean())
    info = {"built_by": "python -m train.fit_hmnet --build-template", "data": [str(d) for d in data_dirs],
            "rest_phenotype": "all 0.5", "subsampled_count": count, "subsample_seconds": round(t_sub, 1),
            "regressor_fit_samples": len(train_rows), "test_samples": len(test_rows),
            "regressor_test_error_mm": round(reg_err, 2), "upsample_test_error_mm": round(up_err, 2)}
    arrays = dict(
        rest_vertices=verts.astype(np.float32), faces=faces.astype(np.int32), parts=st["parts"].astype(np.uint8),
        sub_index=sub_index, up_index=up_index, up_weight=up_weight, sub_edges=sub_edges,
        regressor_index=reg_index, regressor_weight=reg_weight, joint_names=np.array(labels),
        bone_parents=np.array(parents, np.int32), bone_heads=heads.astype(np.float32),
        bone_tails=tails.astype(np.float32), bone_axes=axes.astype(np.float32), skin_index=skin_index,
        skin_weight=skin_weight, info=np.array(json.dumps(info)))
    path = save_template(out or TEMPLATE_PATH, arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {json.dumps(info)}", file=sys.stderr)
    return path


if __name__ == "__main__":
    sys.exit(main())
