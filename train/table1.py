"""The paper's Table 1 at a scale of your choosing: every VRN variant trained on the same data for the same
epochs, IoU after half of the epochs and at the end.

    python -m train.table1 --data DIR [DIR ...] --out runs/table1 --epochs 4 --features 16 --write docs/RESULTS.md

Each variant keeps its own architecture (stacks, block, inputs, supervision: `core.networks.vrn.VARIANTS`);
the knobs a budget forces (width, volume, epochs, optimiser) are shared, so the rows differ only where the
paper's rows differ. Every run is `train.fit.fit` in `OUT/VARIANT`: a stopped table resumes each run where it
stopped, a finished run is kept. Reported per variant: validation IoU (training-split bodies held back by
`train.fit`) after epoch ceil(E/2) and E, as the paper reports IoU by epoch, and the held-out test IoU of the
final model (`train.evaluate`, level 0.5, inputs built as at inference), beside the paper's figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from core.errors import MonohumanError
from core.networks.vrn import VARIANT_NAMES
from train.evaluate import evaluate_model, replace_section
from train.fit import TrainConfig, fit
from train.loop import command_line

BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"
PAPER = {  # Table 1 of the paper: IoU (%) at epoch 30 and 60, SMPLify data, 128^3
    "vrn-guided": (61.6, 63.9), "multistack": (61.1, 68.3), "old-residual": (60.5, 66.1),
    "landmarks-only": (58.6, 61.0), "image-only": (46.8, 48.3), "mask-only": (52.8, 53.0), "conv3d": (57.3, 61.6)}


def train_variant(args, name: str) -> Path:
    run = Path(args.out) / name
    if (run / "state.safetensors").exists():
        cfg = TrainConfig(out=str(run), resume=True)
    else:
        cfg = TrainConfig(data=list(args.data), out=str(run), variant=name, features=args.features, norm=args.norm,
                          volume=args.volume, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                          lr=args.lr, lr_late=args.lr_late, lr_drop=args.lr_drop, workers=args.workers,
                          threads=args.threads, seed=args.seed, name=name)
    print(f"table1: {name}", file=sys.stderr)
    rc = fit(cfg, command=command_line("python -m train.fit", cfg))
    if rc:
        raise MonohumanError(f"Training {name} stopped (exit {rc}).", f"Run the same command again to resume {run}.")
    return run / "model"


def table_rows(args, names) -> list[dict]:
    rows = []
    for name in names:
        model = train_variant(args, name)
        history = json.loads(model.with_suffix(".json").read_text())["metrics"]["history"]
        by_epoch = {h["epoch"]: h["val_iou"] for h in history}
        half = math.ceil(args.epochs / 2)
        test = evaluate_model(model, args.data, "test", surface=False, device=args.device, match_mask=False)
        rows.append({"variant": name, "val_half": by_epoch.get(half), "val_final": by_epoch.get(args.epochs),
                     "test_iou": test["iou_mean"], "test_samples": test["samples"], "paper": PAPER.get(name)})
    return rows


def markdown(args, rows, command: str) -> list[str]:
    half = math.ceil(args.epochs / 2)
    lines = [f"Every variant: width {args.features}, {args.volume} volume, {args.epochs} epochs, {args.optimizer} "
             f"lr {args.lr:g} -> {args.lr_late:g} after {args.lr_drop:.0%} of the epochs, batch {args.batch_size}, "
             f"{args.norm} norm; data: {', '.join(args.data)}.", f"Reproduce: `{command}`", "",
             f"| variant | val IoU @ epoch {half} | val IoU @ epoch {args.epochs} | held-out IoU | "
             "paper @ 30 | paper @ 60 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        paper = r["paper"] or (None, None)  # ours (body-guided, body-residual): not in the paper
        paper = [" - " if v is None else f"{v / 100:.3f}" for v in paper]
        lines.append(f"| {r['variant']} | {fmt(r['val_half'])} | {fmt(r['val_final'])} | {r['test_iou']:.3f} "
                     f"({r['test_samples']}) | {paper[0]} | {paper[1]} |")
    return lines


def main(argv=None) -> int:
    """The command: one line and its exit code for every expected failure (core.errors.run_command)."""
    from core.errors import run_command

    return run_command(lambda: _main(argv))


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.table1", description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--out", required=True, help="folder of the runs, one per variant")
    p.add_argument("--variants", default=",".join(VARIANT_NAMES))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--volume", default="128x128x128")
    p.add_argument("--norm", default="batch")
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--optimizer", default="rmsprop")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-late", type=float, default=1e-5)
    p.add_argument("--lr-drop", type=float, default=1 / 3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--write", help="update the Table 1 section of this markdown file (e.g. docs/RESULTS.md)")
    args = p.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANT_NAMES))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANT_NAMES)}")
    try:
        rows = table_rows(args, names)
    except MonohumanError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    command = "python -m train.table1 " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = markdown(args, rows, command)
    print("\n".join(lines))
    if args.write:
        replace_section(Path(args.write), BEGIN, END, lines, title="# Results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
