"""The training loop, once, for every network: a task object says what is trained, this module how.

    torchrun --nproc-per-node 4 -m train.fit ...        # any task: DDP (one process per GPU, or gloo on CPU)

nanoGPT style: `train()` reads top to bottom. A task (train/fit.py: VRN, train/fit_hmnet.py: HumanMeshNet)
builds the model, the optimizer and the datasets from its config dataclass (whose fields are the flags), orders
each epoch's samples, computes the loss of a batch, evaluates, and names the run's timing figure. The loop does
the rest the same way for all of them: resume state (`save_state` / `load_state`: weights, optimizer, RNG in
one safetensors file, replaced atomically after every epoch and on interrupt), `resolve_run`, DDP, bf16
autocast and channels-last on CUDA (inside the task's `loss`), SIGTERM (state saved, exit through
core.errors.Terminated) and Ctrl-C (state saved, 130), an evaluation per epoch (and every `eval_every` steps
when the config has it), the learning-rate schedule (`learning_rate`), tqdm progress, log.csv and the
inference model written with `core.checkpoint.save_model`.

The run folder holds config.json (the config as first started; --resume reads it), state.safetensors,
model.json/.safetensors (the last finished epoch, fp32), log.csv.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save
from tqdm import tqdm

from core.checkpoint import save_model
from core.errors import ArgumentError, DataError, MonohumanError, Terminated
from core.files import write_atomic
from core.validate import Parser


@dataclass
class Setup:
    """What a task builds for a run: the model on its device, its optimizer, the training set (its `set_epoch`
    is called each epoch), the training subset the loop draws batches from and the validation subset."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_set: torch.utils.data.Dataset
    train_part: torch.utils.data.Subset
    val_part: torch.utils.data.Subset


class Task:
    """One network's part of training. `evaluate` returns each validation metric summed over the loader's samples
    (keys without the "val_" prefix) and the sample count; the loop takes the mean over every rank's samples
    and rounds it to `metric_digits`."""
    metric_digits = 4

    def check(self, cfg):
        """Every option in range before anything is read or written (a resumed run's saved config too)."""
        from core.validate import choice

        choice("--device", cfg.device, ("auto", "cpu", "cuda"))
        return cfg

    def setup(self, cfg, device: torch.device) -> Setup:
        raise NotImplementedError

    def order(self, cfg, epoch: int, count: int) -> list[int]:
        """This epoch's permutation of the training subset's `count` positions (before DDP sharding)."""
        return np.random.default_rng([cfg.seed, epoch]).permutation(count).tolist()

    def loss(self, model, batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """(loss to minimise, {logged term: float}) of one batch from the loader."""
        raise NotImplementedError

    def evaluate(self, model, loader, device: torch.device) -> tuple[dict, int]:
        raise NotImplementedError

    def timing(self, seconds: float, samples: int) -> dict:
        return {"seconds": round(seconds, 1)}

    def export_meta(self, cfg) -> dict:
        """More of the model's JSON than every network writes (e.g. the noise a guided model was trained with)."""
        return {}


def parse_flags(config_class, prog: str, description: str, argv=None, choices: dict | None = None):
    """A config dataclass from the command line: every field is a flag (`--batch-size` for batch_size)."""
    parser = Parser(prog=prog, description=description)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        elif str(f.type).startswith("list"):
            parser.add_argument(flag, nargs="+", default=[])
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=f.default, choices=(choices or {}).get(f.name))
    return config_class(**vars(parser.parse_args(argv)))


def command_line(prog: str, cfg) -> str:
    """The command that gives `cfg`: `prog` and a flag for every field that differs from its default (recorded
    in the model's JSON when a tool, not a shell, started the run)."""
    words = []
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), f.default_factory() if callable(f.default_factory) else f.default
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if value is True:
            words.append(flag)
        else:
            words += [flag, *map(str, value if isinstance(value, list) else [value])]
    return " ".join([prog, *map(shlex.quote, words)])


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


def all_reduce_sum(value: float, world: int, device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_mean(value: float, world: int, device) -> float:
    return all_reduce_sum(value, world, device) / world


def distributed(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around `model`. Sparse buffers (HMNet's smoothing matrix) are constants every rank builds alike from
    the template, and DDP cannot broadcast them: they are left out of its synchronisation."""
    sparse = [name for name, b in model.named_buffers() if b.is_sparse]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sparse)
    return torch.nn.parallel.DistributedDataParallel(model)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 on CPU (bit-reproducible there)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and x.dim() == 4 else x


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
    write_atomic(path, save(tensors, metadata={"train_state": json.dumps(meta)}))


def load_state(path: Path, model, optimizer) -> dict:
    """Restores weights, optimizer and the torch RNG saved by `save_state`; returns its scalars (epoch, ...)."""
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


def ignore_sigterm(_worker_id: int) -> None:
    """Data-loader workers leave SIGTERM to the main process: a scheduler (or `kill -- -PGID`) signals the
    whole process group, and a worker that died of it would crash the run before it saved its state. Workers
    are forked with SIGTERM blocked (`workers_starting`), so one that arrives before this runs is dropped."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextlib.contextmanager
def workers_starting():
    """SIGTERM held back while data-loader workers are forked (they inherit the block until `ignore_sigterm`
    has run; without it a signal landing between fork and that call killed a worker, measured under load)
    and then delivered to the main process's handler."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def learning_rate(cfg, epoch: int) -> float:
    """lr until lr_drop of the epochs, then lr_late; lr_late <= 0 keeps lr throughout."""
    return cfg.lr if cfg.lr_late <= 0 or epoch < math.ceil(cfg.lr_drop * cfg.epochs) else cfg.lr_late


def split_train_val(dataset, val_samples: int, seed: int):
    """Hold back whole bodies: each sample is one body, so a subset of indices is a subset of bodies."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_val = min(val_samples, max(1, len(dataset) // 10))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def shard(order: list[int], rank: int, world: int) -> list[int]:
    """This process's share of an epoch's order, as torch's DistributedSampler(drop_last=True) deals it."""
    total = len(order) // world * world
    return order[:total][rank:total:world]


@dataclass
class Run:
    """The loop's state between steps: what a checkpoint saves and an interrupt must not lose."""
    epoch: int = 0
    batch: int = 0  # batches done in `epoch`
    step: int = 0  # optimizer steps in total
    sums: dict = dataclasses.field(default_factory=dict)  # the logged loss terms summed over `epoch`'s batches
    history: list = dataclasses.field(default_factory=list)  # one row per finished epoch


def start_from(model: torch.nn.Module, init: str) -> None:
    """--init: a new run (its own schedule, epoch 1) that starts from a trained model's weights, for
    fine-tuning or for training longer than a finished run's schedule allowed."""
    from core.checkpoint import load_model
    loaded = load_model(init)
    try:
        model.load_state_dict(loaded.network.state_dict(), strict=True)
    except RuntimeError as err:
        raise DataError(f"--init {init} does not fit this run's network ({str(err).splitlines()[0]}).",
                        "Train with the same variant, width, stacks and norm as that model.") from None


def resumed(meta: dict) -> Run:
    """The Run saved in a state file; states written before the shared loop kept VRN's loss sum as `loss_sum`
    and HMNet's not at all."""
    sums = meta.get("loss_sums", {"train_loss": meta["loss_sum"]} if meta.get("loss_sum") else {})
    return Run(meta["epoch"], meta["batch"], meta["step"], sums, meta["history"])


def train(task: Task, cfg, command: str = "") -> int:
    """Train `task` as `cfg` says (a new run, or --resume of the run in cfg.out); 0 when done or at max_steps,
    130 on Ctrl-C, Terminated on SIGTERM. Long (about 110 lines) on purpose: the loop reads top to bottom, as
    nanoGPT's does, with every state it keeps (the Run) in view."""
    cfg = task.check(resolve_run(task.check(cfg)))
    run_dir = Path(cfg.out)
    state_path = run_dir / "state.safetensors"
    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    s = task.setup(cfg, device)
    model, optimizer = s.model, s.optimizer
    per_epoch = len(s.train_part) // world // cfg.batch_size
    if per_epoch == 0:
        raise DataError(f"{len(s.train_part)} training samples give no full batch of {cfg.batch_size} per process.",
                        "Generate more samples or lower --batch-size.")
    run, rng = Run(), None
    if cfg.resume:
        run = resumed(load_state(state_path, model, optimizer))
        rng = torch.get_rng_state()
    else:
        if cfg.init:
            start_from(model, cfg.init)
        if rank == 0:
            write_atomic(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    ddp = distributed(model) if world > 1 else model
    loader_kw = dict(num_workers=cfg.workers, persistent_workers=False, pin_memory=device.type == "cuda",
                     worker_init_fn=ignore_sigterm)
    val_part = torch.utils.data.Subset(s.val_part.dataset, s.val_part.indices[rank::world])
    val_loader = torch.utils.data.DataLoader(val_part, batch_size=cfg.batch_size, **loader_kw)
    eval_every = getattr(cfg, "eval_every", 0)

    def validate() -> dict:
        with workers_starting():  # the whole (short) validation: its loader forks workers as it starts
            sums, count = task.evaluate(model, val_loader, device)
        count = max(all_reduce_sum(count, world, device), 1)
        return {f"val_{k}": round(all_reduce_sum(v, world, device) / count, task.metric_digits)
                for k, v in sums.items()}

    def checkpoint(epoch: int, batch: int, sums: dict) -> None:
        """Saved where `epoch` stands after `batch` batches. An interrupt while an epoch's end is validated or
        exported saves that epoch as not yet ended (its row is left out): --resume ends it again, once."""
        if rank == 0:
            save_state(state_path, model, optimizer, {
                "epoch": epoch, "batch": batch, "step": run.step, "loss_sums": sums,
                "history": [h for h in run.history if h["epoch"] <= epoch]})

    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        for epoch in range(run.epoch, cfg.epochs):
            run.epoch = epoch
            s.train_set.set_epoch(epoch)
            lr = learning_rate(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order = shard(task.order(cfg, epoch, len(s.train_part)), rank, world)
            batches = [order[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(run.batch, per_epoch)]
            with workers_starting():
                loader = iter(torch.utils.data.DataLoader(s.train_part, batch_sampler=batches, **loader_kw))
            if rng is not None and run.batch:  # mid-epoch, the saved RNG is the one after the loader drew its seed
                torch.set_rng_state(rng)
            rng = None
            bar = tqdm(total=per_epoch, initial=run.batch, disable=True if rank else None, file=sys.stderr,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
            t0, seen = time.perf_counter(), 0
            for batch in loader:
                loss, terms = task.loss(ddp, batch, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                run.step, run.batch, seen = run.step + 1, run.batch + 1, seen + len(batch[0]) * world
                for k, v in terms.items():
                    run.sums[k] = run.sums.get(k, 0.0) + v
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if eval_every and run.step % eval_every == 0:  # every rank evaluates its share
                    means = " ".join(f"{k} {v / run.batch:.4f}" for k, v in run.sums.items())
                    figures = validate()
                    if rank == 0:
                        print(f"step {run.step}: {means} val {figures}", file=sys.stderr)
                if stop["now"] or (cfg.max_steps and run.step >= cfg.max_steps):
                    break
            del loader  # its worker processes end now (a live iterator would hold them, and the exit, after a break)
            bar.close()
            if run.batch < per_epoch:  # interrupted or max_steps: save where we are, resume repeats nothing
                checkpoint(epoch, run.batch, run.sums)
                break
            row = {"epoch": epoch + 1, "step": run.step, "lr": lr,
                   **{k: round(all_reduce_mean(v / run.batch, world, device), 5) for k, v in run.sums.items()},
                   **validate(), **task.timing(time.perf_counter() - t0, seen)}
            run.history.append(row)
            checkpoint(epoch + 1, 0, {})
            if rank == 0:
                export(task, cfg, model, run, len(s.train_part), world, device, command)
                write_log(run_dir / "log.csv", run.history)
                print(f"epoch {epoch + 1}: " + "  ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"),
                      file=sys.stderr)
            run.epoch, run.batch, run.sums = epoch + 1, 0, {}
            if stop["now"] or (cfg.max_steps and run.step >= cfg.max_steps):
                break
    except KeyboardInterrupt:
        checkpoint(run.epoch, run.batch, run.sums)
        print(f"interrupted: state saved in {state_path}; continue with --resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if world > 1:
        dist.destroy_process_group()
    if stop["now"]:  # a scheduler must be able to tell a stopped run from a finished one
        raise Terminated(f"Stopped by SIGTERM; the state is saved in {state_path}.", "Continue with --resume.")
    return 0


def export(task: Task, cfg, model, run: Run, samples: int, world: int, device, command: str) -> None:
    """The inference model of the last finished epoch: run/model (fp32) and, with --export, an fp16 copy. Its
    metrics: every `val_*` figure of that epoch, and the per-epoch history."""
    last = run.history[-1]
    meta = {"name": cfg.name or Path(cfg.out).name,
            "training": {"command": command, "data": cfg.data, "epochs": last["epoch"], "steps": run.step,
                         "samples": samples, "world_size": world, "device": str(device),
                         "recipe": dataclasses.asdict(cfg)},
            "metrics": {**{k: v for k, v in last.items() if k.startswith("val_")}, "history": run.history},
            **task.export_meta(cfg)}
    save_model(Path(cfg.out) / "model", model, meta, dtype=torch.float32)
    if cfg.export:
        save_model(Path(cfg.export), model, {**meta, "name": Path(cfg.export).name}, dtype=torch.float16)


def write_log(path: Path, history: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_atomic(path, text.getvalue())
