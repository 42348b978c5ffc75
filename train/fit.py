"""Train a VRN variant on datasets made by `train.make_dataset`.

    python -m train.fit --data data/shard0 data/shard1 --out runs/multistack --variant multistack --epochs 30
    torchrun --nproc-per-node 4 -m train.fit --data ... --out ...        # several GPUs / machines (DDP)
    python -m train.fit --out runs/multistack --resume                    # continue exactly where it stopped

The paper's recipe is the default: RMSProp, learning rate 1e-4 dropped to 1e-5 after a third of the epochs,
a loss after every supervised hourglass, on-the-fly augmentation (train/dataset.py). bf16 autocast and
channels-last on CUDA. The run folder holds `state.safetensors` (everything needed to resume: weights,
optimizer, epoch, step, RNG; one file replaced atomically after every epoch and on interrupt), `model.*`
(the inference checkpoint, core's format), and `log.csv`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from core.checkpoint import save_model
from core.encode import INPUT_CHANNELS
from core.errors import ArgumentError, DataError, MonohumanError, Terminated, run_command
from core.files import write_atomic
from core.networks.vrn import VARIANTS, build_vrn, config_for, vrn_loss
from core.validate import Parser, choice, choices_list, number, shape
from train.dataset import DEPTH_ANCHORS, Augment, VolumeDataset
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
    val_samples: int = 64  # training-split bodies held back for the validation IoU
    detected_landmarks: float = 0.5  # fraction of samples fed mediapipe's landmarks instead of projected ones
    workers: int = 2  # data loader processes
    threads: int = 0  # torch CPU threads per process; 0 = torch's default
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit); for tests and smoke runs
    resume: bool = False
    export: str = ""  # also write the final inference model to this stem (e.g. models/vrn-default)
    name: str = ""  # model name recorded in its JSON; default: the run folder's name


CHOICES = {"optimizer": ("rmsprop", "adam"), "device": ("auto", "cpu", "cuda"), "norm": ("", "batch", "group"),
           "depth_anchor": DEPTH_ANCHORS}


def parse_config(argv=None) -> TrainConfig:
    parser = Parser(prog="python -m train.fit", description=__doc__.splitlines()[0])
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        elif f.name == "data":
            parser.add_argument(flag, nargs="+", default=[])
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name))
    return TrainConfig(**vars(parser.parse_args(argv)))


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
    for name in ("lr_drop", "detected_landmarks"):
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


# ---------------------------------------------------------------- distributed and device set-up

def setup_distributed(device: str):
    """Rank, world size and device; under torchrun, one process per GPU (or CPU processes with gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("--device cuda: no CUDA GPU is available here.", "Use --device cpu or auto.")
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def all_reduce_mean(value: float, world: int, device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


# ---------------------------------------------------------------- resumable state, one atomic file

def save_state(path: Path, model, optimizer, meta: dict) -> None:
    """Weights, optimizer tensors and RNG in one safetensors file; scalars as JSON in its metadata."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {**meta, "optim_scalars": scalars, "optim_groups": opt["param_groups"]}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"train_state": json.dumps(meta)})
    os.replace(tmp, path)


def load_state(path: Path, model, optimizer) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["train_state"])
        tensors = load_file(str(path))
    except Exception as err:  # a truncated or foreign file: say which and what to do
        raise MonohumanError(f"Training state {path} is unreadable ({err}).",
                             "Delete it to start over, or restore it from a backup.") from err
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta.pop("optim_scalars").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("optim_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


# ---------------------------------------------------------------- the run

def resolve_run(cfg):
    """--resume reloads the run's own config (only max_steps comes from this call) and continues in the
    folder it is given (--out), wherever the run was first made: a copied or moved run resumes in place. A
    new run never overwrites an existing one. Works for any training config dataclass with
    out/data/resume/max_steps."""
    run = Path(cfg.out)
    state_path = run / "state.safetensors"
    if cfg.resume:
        if not state_path.is_file():
            raise DataError(f"Nothing to resume: {state_path} does not exist.", "Start without --resume.")
        config_path = run / "config.json"
        fix = "Restore config.json from the run's first start (or a backup), or start a new run."
        try:
            saved = json.loads(config_path.read_text())
            return type(cfg)(**{**saved, "out": str(run), "resume": True, "max_steps": cfg.max_steps})
        except FileNotFoundError:
            raise DataError(f"Cannot resume {run}: its config.json is missing.", fix) from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise DataError(f"Cannot resume {run}: its config.json is damaged or edited ({err}).", fix) from None
    if state_path.exists():
        raise DataError(f"{run} already holds a run.", "Add --resume to continue it, or choose another --out.")
    if not cfg.data:
        raise DataError("No training data given.", "Pass --data DIR [DIR ...] (folders from train.make_dataset).")
    return cfg


def data_shapes(cfg: TrainConfig, probe: VolumeDataset) -> tuple[tuple, tuple]:
    volume = shape("--volume", cfg.volume) if cfg.volume else probe.volume_shape
    input_size = shape("--input-size", cfg.input_size, dims=2) if cfg.input_size else probe.input_size
    return volume, input_size


def ignore_sigterm(_worker_id: int) -> None:
    """Data-loader workers leave SIGTERM to the main process: a scheduler (or `kill -- -PGID`) signals the
    whole process group, and a worker that died of it would crash the run before it saved its state."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def learning_rate(cfg, epoch: int) -> float:
    """lr until lr_drop of the epochs, then lr_late; lr_late <= 0 keeps lr throughout."""
    return cfg.lr if cfg.lr_late <= 0 or epoch < math.ceil(cfg.lr_drop * cfg.epochs) else cfg.lr_late


def split_train_val(dataset: VolumeDataset, val_samples: int, seed: int):
    """Hold back whole bodies: each sample is one body, so a subset of indices is a subset of bodies."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_val = min(val_samples, max(1, len(dataset) // 10))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def evaluate_iou(model, loader, device, world) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)[-1]
            total += float(volume_iou(logits.float() > 0, y > 0.5).sum())
            count += len(x)
    model.train()
    return all_reduce_mean(total / max(count, 1), world, device)


def main(argv=None) -> int:
    cfg = parse_config(argv)
    command = " ".join(["python -m train.fit", *map(shlex.quote, argv or sys.argv[1:])])
    return run_command(lambda: fit(cfg, command=command))


def fit(cfg: TrainConfig, command: str = "") -> int:
    cfg = check_config(resolve_run(check_config(cfg)))
    run = Path(cfg.out)
    state_path = run / "state.safetensors"

    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    probe = VolumeDataset(cfg.data, "train", ("mask",))
    volume_shape, input_size = data_shapes(cfg, probe)
    overrides = {"volume_shape": volume_shape, "input_size": input_size}
    if cfg.features:
        overrides["features"] = cfg.features
    if cfg.stacks:
        overrides["stacks"] = cfg.stacks
    if cfg.norm:
        overrides["norm"] = cfg.norm
    if cfg.inputs:
        overrides["inputs"] = tuple(cfg.inputs.split(","))
    if cfg.refine:
        overrides["refine"] = cfg.refine
    try:
        net_cfg = config_for(cfg.variant, **overrides)
    except ValueError as err:  # e.g. a volume the variant's hourglass cannot halve, inputs it cannot take
        raise ArgumentError(f"The network options do not fit together: {err}.", "Change --variant or its options.")
    if net_cfg.norm == "batch" and cfg.batch_size < 2:
        raise ArgumentError("--batch-size 1 with batch norm: batch statistics need at least 2 samples.",
                            "Use --batch-size 2 or more, or --norm group.")

    if cfg.depth_anchor not in DEPTH_ANCHORS:
        raise DataError(f"Unknown --depth-anchor {cfg.depth_anchor!r}.", f"Use one of {list(DEPTH_ANCHORS)}.")
    aug = Augment()
    train_set = VolumeDataset(cfg.data, "train", net_cfg.inputs, volume_shape, aug, cfg.detected_landmarks, cfg.seed,
                              cfg.depth_anchor)
    val_set = VolumeDataset(cfg.data, "train", net_cfg.inputs, volume_shape, seed=cfg.seed,
                            detected_landmarks=1.0, depth_anchor=cfg.depth_anchor)
    train_idx, val_idx = split_train_val(train_set, cfg.val_samples, cfg.seed)
    train_part = torch.utils.data.Subset(train_set, train_idx)
    val_part = torch.utils.data.Subset(val_set, val_idx[rank::world])

    model = build_vrn(net_cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = model.parameters()
    optimizer = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[cfg.optimizer](params, lr=cfg.lr)
    start_epoch, skip_batches, step, history, resumed_loss = 0, 0, 0, [], 0.0
    if cfg.resume:
        meta = load_state(state_path, model, optimizer)
        start_epoch, skip_batches, step, history = meta["epoch"], meta["batch"], meta["step"], meta["history"]
        resumed_loss = meta.get("loss_sum", 0.0)
    elif rank == 0:
        write_atomic(run / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    sampler = torch.utils.data.distributed.DistributedSampler(
        train_part, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader_kw = dict(num_workers=cfg.workers, persistent_workers=False, pin_memory=device.type == "cuda",
                     worker_init_fn=ignore_sigterm)
    val_loader = torch.utils.data.DataLoader(val_part, batch_size=cfg.batch_size, **loader_kw)

    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    per_epoch = len(sampler) // cfg.batch_size
    if per_epoch == 0:
        raise DataError(f"{len(train_part)} training samples give no full batch of {cfg.batch_size} per process.",
                        "Generate more samples or lower --batch-size.")

    def checkpoint(epoch: int, batch: int, loss_sum: float = 0.0) -> None:
        if rank == 0:  # only finished epochs' rows: an interrupt at an epoch's end must not log it twice
            save_state(state_path, model, optimizer, {"epoch": epoch, "batch": batch, "step": step, "loss_sum": loss_sum,
                                                      "history": [h for h in history if h["epoch"] <= epoch]})

    epoch, batch, loss_sum = start_epoch, skip_batches, 0.0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch)
            indices = list(sampler)[skip_batches * cfg.batch_size:]
            batches = torch.utils.data.BatchSampler(indices, cfg.batch_size, drop_last=True)
            loader = torch.utils.data.DataLoader(train_part, batch_sampler=batches, **loader_kw)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
            bar = tqdm(total=per_epoch, initial=skip_batches, disable=True if rank else None, file=sys.stderr,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
            t0, seen, loss_sum, batch = time.perf_counter(), 0, resumed_loss, skip_batches
            resumed_loss = 0.0
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = ddp(x)
                loss = vrn_loss([l.float() for l in logits], y, cfg.iou_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, batch, seen = step + 1, batch + 1, seen + len(x) * world
                loss_sum += float(loss.detach())
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_sum / batch:.4f}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if stop["now"] or (cfg.max_steps and step >= cfg.max_steps):
                    break
            bar.close()
            finished = batch >= per_epoch
            if not finished:  # interrupted or max_steps: save where we are, resume repeats nothing
                checkpoint(epoch, batch, loss_sum)
                break
            val_iou = evaluate_iou(model, val_loader, device, world)
            train_loss = all_reduce_mean(loss_sum / max(batch, 1), world, device)
            history.append({"epoch": epoch + 1, "step": step, "lr": learning_rate(cfg, epoch),
                            "train_loss": round(train_loss, 5), "val_iou": round(val_iou, 4),
                            "samples_per_s": round(seen / (time.perf_counter() - t0), 2)})
            skip_batches = 0
            checkpoint(epoch + 1, 0)
            if rank == 0:
                export(cfg, run, model, history, step, len(train_part), world, device, command)
                write_log(run / "log.csv", history)
                print(f"epoch {epoch + 1}: loss {train_loss:.4f}  val IoU {val_iou:.4f}", file=sys.stderr)
            if stop["now"] or (cfg.max_steps and step >= cfg.max_steps):
                break
    except KeyboardInterrupt:
        checkpoint(epoch, batch, loss_sum)
        print(f"interrupted: state saved in {state_path}; continue with --resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)

    if world > 1:
        dist.destroy_process_group()
    if stop["now"]:  # a scheduler must be able to tell a stopped run from a finished one
        raise Terminated(f"Stopped by SIGTERM; the state is saved in {state_path}.", "Continue with --resume.")
    return 0


def export(cfg: TrainConfig, run: Path, model, history, step, samples, world, device, command) -> None:
    """The inference model of the last finished epoch: run/model (fp32) and, with --export, an fp16 copy."""
    meta = {"name": cfg.name or run.name,
            "training": {"command": command, "data": cfg.data, "epochs": history[-1]["epoch"], "steps": step,
                         "samples": samples, "world_size": world, "device": str(device),
                         "recipe": dataclasses.asdict(cfg)},
            "metrics": {"val_iou": history[-1]["val_iou"], "history": history}}
    save_model(run / "model", model, meta, dtype=torch.float32)
    if cfg.export:
        save_model(Path(cfg.export), model, {**meta, "name": Path(cfg.export).name}, dtype=torch.float16)


def write_log(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
