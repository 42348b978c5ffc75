"""Train a VRN variant on datasets made by `train.make_dataset`.

    python -m train.fit --data data/shard0 data/shard1 --out runs/multistack --variant multistack --epochs 30
    torchrun --nproc-per-node 4 -m train.fit --data ... --out ...        # several GPUs / machines (DDP)
    python -m train.fit --out runs/multistack --resume                    # continue exactly where it stopped
    python -m train.fit --data ... --out runs/longer --init runs/multistack/model.json   # a new run from its weights

The paper's recipe is the default: RMSProp, learning rate 1e-4 dropped to 1e-5 after a third of the epochs,
a loss after every supervised hourglass, on-the-fly augmentation (train/dataset.py). This module is the VRN
task (model, data, loss, validation IoU); train/loop.py runs it (resume, DDP, bf16 autocast and channels-last
on CUDA, SIGTERM, log.csv, the exported model). The run folder holds `state.safetensors` (everything needed
to resume: weights, optimizer, epoch, step, RNG; one file replaced atomically after every epoch and on
interrupt), `model.*` (the inference checkpoint, core's format, with `metrics.val_iou`), and `log.csv`.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

import torch

from core.encode import INPUT_CHANNELS
from core.errors import ArgumentError, run_command
from core.networks.vrn import VARIANTS, build_vrn, config_for, vrn_loss
from core.validate import choice, choices_list, number, shape
from train.dataset import DEPTH_ANCHORS, Augment, VolumeDataset
from train.loop import Setup, Task, autocast, channels_last, parse_flags, split_train_val, train
from train.metrics import volume_iou


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # dataset folders (shards) written by make_dataset
    out: str = "runs/vrn"  # run folder: state, logs, model
    variant: str = "multistack"  # a name from core.networks.vrn.VARIANTS
    features: int = 0  # network width; 0 = the variant's default
    stacks: int = 0  # hourglasses in the stack; 0 = the variant's default
    norm: str = ""  # batch | group; empty = the variant's default (group suits small CPU batches)
    inputs: str = ""  # comma list overriding the variant's inputs, e.g. image,landmarks,mask
    volume: str = ""  # DxHxW; empty = read it from the data
    input_size: str = ""  # HxW of the network input; empty = read it from the data
    epochs: int = 30
    batch_size: int = 6  # the paper's
    lr: float = 1e-4
    lr_late: float = 1e-5
    lr_drop: float = 1 / 3  # fraction of the epochs after which lr becomes lr_late
    optimizer: str = "rmsprop"  # rmsprop (paper) | adam
    refine: int = 0  # width of the full-resolution refinement stage (core/networks/vrn.py); 0 = none (paper)
    iou_weight: float = 0.0  # weight of the soft-IoU term added to the paper's BCE; 0 = BCE only (paper)
    depth_anchor: str = "vertex-mean"  # how targets are aligned in depth: vertex-mean (paper) | centroid
    fit_noise: str = ""  # body-guided variants: the fit's noise model (train.fit_noise); empty = models/fit-noise.json
    least_noise: float = 1.0  # body-guided: each training guide's noise is the model's times U(least_noise, 1)
    val_samples: int = 64  # training-split bodies held back for the validation IoU
    detected_landmarks: float = 0.5  # fraction of samples fed mediapipe's landmarks instead of projected ones
    workers: int = 2  # data loader processes
    threads: int = 0  # torch CPU threads per process; 0 = torch's default
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit); for tests and smoke runs
    resume: bool = False
    init: str = ""  # start a new run from this model's weights (a model name, .json or run/model)
    export: str = ""  # also write the final inference model to this stem (e.g. models/vrn-default)
    name: str = ""  # model name recorded in its JSON; default: the run folder's name


CHOICES = {"optimizer": ("rmsprop", "adam"), "device": ("auto", "cpu", "cuda"), "norm": ("", "batch", "group"),
           "depth_anchor": DEPTH_ANCHORS}


def parse_config(argv=None) -> TrainConfig:
    return parse_flags(TrainConfig, "python -m train.fit", __doc__.splitlines()[0], argv, CHOICES)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Every option in range before anything is read or written (a resumed run's saved config too)."""
    for name, value in vars(cfg).items():
        if name in CHOICES:
            choice(f"--{name.replace('_', '-')}", value, CHOICES[name])
    positive = ("epochs", "batch_size", "val_samples")
    for name in ("features", "stacks", "refine", "workers", "threads", "max_steps", *positive):
        number(f"--{name.replace('_', '-')}", getattr(cfg, name), integer=True, lo=1 if name in positive else 0)
    number("--lr", cfg.lr, lo=0, lo_open=True)
    number("--lr-late", cfg.lr_late)
    for name in ("lr_drop", "detected_landmarks", "least_noise"):
        number(f"--{name.replace('_', '-')}", getattr(cfg, name), lo=0, hi=1)
    number("--iou-weight", cfg.iou_weight, lo=0)
    choice("--variant", cfg.variant, tuple(VARIANTS))
    if cfg.inputs:
        choices_list("--inputs", cfg.inputs, tuple(INPUT_CHANNELS))
    if cfg.volume:
        shape("--volume", cfg.volume)
    if cfg.input_size:
        shape("--input-size", cfg.input_size, dims=2, example="128x128")
    return cfg


def data_shapes(cfg: TrainConfig, probe: VolumeDataset) -> tuple[tuple, tuple]:
    volume = shape("--volume", cfg.volume) if cfg.volume else probe.volume_shape
    input_size = shape("--input-size", cfg.input_size, dims=2) if cfg.input_size else probe.input_size
    return volume, input_size


def net_config(cfg: TrainConfig, probe: VolumeDataset):
    """The VRN config the options and the data ask for; options that do not fit together say so."""
    volume_shape, input_size = data_shapes(cfg, probe)
    overrides = {"volume_shape": volume_shape, "input_size": input_size}
    for key in ("features", "stacks", "norm", "refine"):
        if getattr(cfg, key):
            overrides[key] = getattr(cfg, key)
    if cfg.inputs:
        overrides["inputs"] = tuple(cfg.inputs.split(","))
    try:
        net_cfg = config_for(cfg.variant, **overrides)
    except ValueError as err:  # e.g. a volume the variant's hourglass cannot halve, inputs it cannot take
        raise ArgumentError(f"The network options do not fit together: {err}.", "Change --variant or its options.")
    if net_cfg.norm == "batch" and cfg.batch_size < 2:
        raise ArgumentError("--batch-size 1 with batch norm: batch statistics need at least 2 samples.",
                            "Use --batch-size 2 or more, or --norm group.")
    return net_cfg


class VRNTask(Task):
    """Occupancy volumes: the paper's loss after every hourglass, the mean IoU of the last one for validation."""
    prog = "python -m train.fit"
    metric_digits = 4

    def check(self, cfg: TrainConfig) -> TrainConfig:
        return check_config(cfg)

    def setup(self, cfg: TrainConfig, device) -> Setup:
        self.iou_weight = cfg.iou_weight
        probe = VolumeDataset(cfg.data, "train", ("mask",))
        net_cfg = net_config(cfg, probe)
        volume_shape = net_cfg.volume_shape
        train_set = VolumeDataset(cfg.data, "train", net_cfg.inputs, volume_shape, Augment(), cfg.detected_landmarks,
                                  cfg.seed, cfg.depth_anchor, cfg.fit_noise, cfg.least_noise)
        val_set = VolumeDataset(cfg.data, "train", net_cfg.inputs, volume_shape, seed=cfg.seed,
                                detected_landmarks=1.0, depth_anchor=cfg.depth_anchor, fit_noise=cfg.fit_noise)
        self.guided = "body" in net_cfg.inputs
        train_idx, val_idx = split_train_val(train_set, cfg.val_samples, cfg.seed)
        model = build_vrn(net_cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[cfg.optimizer](model.parameters(),
                                                                                             lr=cfg.lr)
        return Setup(model, optimizer, train_set, torch.utils.data.Subset(train_set, train_idx),
                     torch.utils.data.Subset(val_set, val_idx))

    def order(self, cfg: TrainConfig, epoch: int, count: int) -> list[int]:
        """torch's DistributedSampler shuffle: randperm seeded with seed + epoch."""
        return torch.randperm(count, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()

    def loss(self, model, batch, device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device):
            logits = model(channels_last(x, device))
        loss = vrn_loss([l.float() for l in logits], y, self.iou_weight)
        return loss, {"train_loss": float(loss.detach())}

    def evaluate(self, model, loader, device) -> dict:
        """The IoU of the last hourglass's volume (logit > 0) against the target, summed; the sample count."""
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                with autocast(device):
                    logits = model(x)[-1]
                total += float(volume_iou(logits.float() > 0, y > 0.5).sum())
                count += len(x)
        model.train()
        return {"iou": total}, count

    def export_meta(self, cfg: TrainConfig) -> dict:
        """A body-guided model records the fit noise its training bodies were given (train.body_guides)."""
        if not getattr(self, "guided", False):
            return {}
        from train.body_guides import read_noise

        return {"guide": {"noise": read_noise(cfg.fit_noise or None).to_json(), "least_noise": cfg.least_noise,
                          "truth": "train.fit_noise.truth_params (80 steps), perturbed per draw"}}

    def timing(self, seconds: float, samples: int) -> dict:
        return {"samples_per_s": round(samples / seconds, 2)}


def main(argv=None) -> int:
    cfg = parse_config(argv)
    command = " ".join(["python -m train.fit", *map(shlex.quote, argv or sys.argv[1:])])
    return run_command(lambda: fit(cfg, command=command))


def fit(cfg: TrainConfig, command: str = "") -> int:
    """Train a VRN variant as `cfg` says (train.loop.train); 0 when done, 130 on Ctrl-C."""
    return train(VRNTask(), cfg, command)


if __name__ == "__main__":
    sys.exit(main())
