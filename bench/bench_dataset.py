"""Dataset generation rate (samples per second) with and without garments and hair.

    python bench/bench_dataset.py [--count 24] [--workers 2] [--size 128] [--samples 8]

Runs `train.make_dataset` three times on the same seed, `--clothing 0` (tight Anny bodies, as before
issue 12), `0.8` (the default) and `1` (every sample dressed: the worst case), into temporary folders.
samples/s counts the samples written after the first one of each worker (so the start-up of Blender, Anny and
mediapipe is left out) over the time they took; wall s includes the start-up. The per-stage seconds are
means over the samples of each worker but its first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402

STAGES = ("body", "scene", "garments", "render", "detect", "voxelise")


def run(out: Path, clothing: float, args) -> dict:
    cmd = [sys.executable, "-m", "train.make_dataset", "--out", str(out), "--count", str(args.count),
           "--size", str(args.size), "--volume", f"{args.size}x{args.size}x{args.size}", "--seed", "3",
           "--workers", str(args.workers), "--threads", "1", "--samples", str(args.samples),
           "--clothing", str(clothing), "--progress", "none"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    landed = sorted(p.stat().st_mtime for p in (out / "samples").glob("*.npz"))
    steady = landed[args.workers - 1:]
    rate = (len(steady) - 1) / max(steady[-1] - steady[0], 1e-9)
    card = json.loads((out / "card.json").read_text())
    rows = [json.loads(ln) for ln in (out / "timings.jsonl").read_text().splitlines() if ln.strip()]
    seen, warm = set(), []
    for r in rows:  # each worker's first sample also loads Anny, Blender and mediapipe
        if r["pid"] in seen:
            warm.append(r)
        seen.add(r["pid"])
    timing = {s: statistics.mean(r.get(s, 0.0) for r in warm) for s in STAGES + ("crop", "write")}
    return dict(rate=rate, wall=wall, timing=timing, total=sum(timing.values()), clothed=card.get("clothed", 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_dataset.py")
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clothing in (0.0, 0.8, 1.0):
            r = run(Path(tmp) / f"c{clothing}", clothing, args)
            t = r["timing"]
            rows.append(f"| {clothing:g} | {r['clothed']}/{args.count} | {r['rate']:.2f} | {r['wall']:.0f} | "
                        + " | ".join(f"{t[s]:.2f}" for s in STAGES) + f" | {r['total']:.2f} |")
    print(f"`train.make_dataset` at {args.size} px, {args.size}^3 volume, {args.samples} Cycles samples, "
          f"{args.workers} workers x 1 thread, {args.count} samples per run; {describe()}:\n")
    print("| --clothing | dressed | samples/s | wall s | " + " | ".join(f"{s} s" for s in STAGES)
          + " | total s a sample |")
    print("| ---: | ---: | ---: | ---: |" + " ---: |" * (len(STAGES) + 1))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
