"""What a given IoU means: the IoU that ground-truth volumes keep under small, known depth errors.

    python -m train.iou_bounds --data DIR [DIR ...] [--volume 64x64x64] [--split test] [--limit 200]

A body fills about 1 % of its volume and is only a few voxels thick, so IoU punishes depth errors of a
single voxel hard. These figures put a model's IoU (and the issue's 0.70 bar) in context; each perturbs the
true volume and scores it against itself with the paper's IoU:

- slab fill: every pixel filled from the first to the last occupied voxel (what a front/back-depth
  representation could reach; the loss is self-occlusion, e.g. an arm in front of the chest);
- shifted one voxel: the whole body one voxel deeper (a global depth error of one voxel);
- one voxel thicker: each pixel's slab grown by a voxel at the front and at the back.

It also gives where the occupied voxels' mean depth falls relative to D/2 in the stored frame (mean and
standard deviation over bodies): the spread a network must guess with `--depth-anchor vertex-mean`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from train.dataset import depth_centroid_offset, pool_volume, pooling_factor, read_manifest, shift_depth
from train.metrics import volume_iou
from train.samples import read_sample


def depth_bounds(volume: np.ndarray) -> dict[str, float]:
    """The three perturbed IoUs of one (D, H, W) occupancy volume, with its occupancy and mean thickness."""
    v = np.asarray(volume, bool)
    depth = v.shape[0]
    seen = v.any(axis=0)
    d = np.arange(depth)[:, None, None]
    first = np.where(seen, v.argmax(axis=0), 0)
    last = np.where(seen, depth - 1 - v[::-1].argmax(axis=0), -1)
    return {"slab_fill": float(volume_iou((d >= first) & (d <= last), v)),
            "shifted_one_voxel": float(volume_iou(shift_depth(v, 1), v)),
            "one_voxel_thicker": float(volume_iou((d >= first - 1) & (d <= last + 1) & seen, v)),
            "centroid_offset": depth_centroid_offset(v),
            "occupancy": float(v.mean()),
            "thickness_voxels": float((last - first + 1)[seen].mean()) if seen.any() else 0.0}


def main(argv=None) -> int:
    """The command: one line and its exit code for every expected failure (core.errors.run_command)."""
    from core.errors import run_command

    return run_command(lambda: _main(argv))


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.iou_bounds", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--volume", default="", help="DxHxW to pool the data to (default: the data's own)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args(argv)
    rows = [r for d in args.data for r in read_manifest(d) if r.get("split") == args.split][: args.limit or None]
    figures = []
    for row in rows:
        volume = read_sample(row["path"])["volume"]
        if args.volume:
            volume = pool_volume(volume, pooling_factor(volume.shape, [int(v) for v in args.volume.split("x")]))
        figures.append(depth_bounds(volume))
    if not figures:
        print(f"error: no {args.split!r} samples in {args.data}", file=sys.stderr)
        return 1
    summary = {"samples": len(figures), "volume": list(volume.shape),
               **{k: round(float(np.mean([f[k] for f in figures])), 4) for k in figures[0]},
               "centroid_offset_std": round(float(np.std([f["centroid_offset"] for f in figures])), 4)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
