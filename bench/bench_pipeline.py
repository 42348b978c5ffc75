"""Per-stage timings of the reconstruction pipeline, and the forward pass of every VRN variant side by side.

    python bench/bench_pipeline.py [--photo examples/person.png] [--features 64] [--volume 128x128x128]

Stages (detect, crop, encode, network, fit, surface, frame, rig) come from `core.reconstruct` with the shipped
models: the fitted body (with its camera / pose / shape split), VRN, VRN rigged from the fitted body, and
HumanMeshNet, measured side by side.
The variant table times only the forward pass at one width and volume for every variant (weights are
random: this measures cost, not quality). Runs on the CPU, and on CUDA (bf16) too when there is a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from core.networks.vrn import VARIANTS, build_vrn, config_for  # noqa: E402
from core.bodyfit import STAGES as FIT_STAGES  # noqa: E402
from core.reconstruct import STAGES, reconstruct  # noqa: E402


def median_time(fn, repeat: int, sync=lambda: None) -> float:
    fn()  # warm-up: thread pools, cuDNN/oneDNN plans
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


PIPELINES = (("Fitted body", dict(method="fit")), ("VRN", dict(method="vrn")),
             ("VRN + rig", dict(method="vrn", rig=True)), ("HumanMeshNet", dict(method="hmnet")))
FIT_SPLIT = tuple(f"fit_{s.name}" for s in FIT_STAGES)  # the fit's own stages


def pipeline_table(photo: Path, repeat: int) -> list[str]:
    """Per-stage medians of the shipped models, the three ways the product runs them, side by side."""
    runs = {}
    for label, kw in PIPELINES:  # interleaved, so machine load drifts alike for all three
        for _ in range(repeat + 1):
            runs.setdefault(label, []).append(reconstruct(photo, **kw))
    runs = {k: v[1:] for k, v in runs.items()}  # drop the warm-up
    stages = [s for s, _ in STAGES if any(s in r.timings for v in runs.values() for r in v)]
    stages = stages[:stages.index("fit") + 1] + list(FIT_SPLIT) + stages[stages.index("fit") + 1:] + ["total"]
    first = runs["VRN + rig"][0]
    lines = [f"Shipped models `{first.model_name}` and `{runs['HumanMeshNet'][0].model_name}` on `{photo.name}` "
             f"({first.image.shape[1]}x{first.image.shape[0]}), median of {repeat} runs after one warm-up, CPU:",
             "", "| stage | " + " | ".join(f"{k} ms" for k in runs) + " |", "| --- |" + " ---: |" * len(runs)]
    for s in stages:
        cells = [f"{1000 * statistics.median(r.timings.get(s, 0.0) for r in v):.1f}" if s in v[0].timings else "-"
                 for v in runs.values()]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    surface = runs["VRN"][0].mesh.metadata.get("surface_timings") or {}
    if surface:
        lines += ["", "Surface stage split (VRN): " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in surface.items())]
    return lines


def variants_table(features: int, volume: tuple, repeat: int) -> list[str]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    head = "| variant | params (M) | " + " | ".join(f"forward ms ({d.type})" for d in devices) + " |"
    lines = [f"Forward pass, batch 1, features {features}, volume {'x'.join(map(str, volume))}:", "", head,
             "| --- | ---: |" + " ---: |" * len(devices)]
    for name in VARIANTS:
        cfg = config_for(name, features=features, volume_shape=volume)
        net = build_vrn(cfg).eval()
        params = sum(p.numel() for p in net.parameters()) / 1e6
        cells = []
        for device in devices:
            net = net.to(device)
            x = torch.randn(1, cfg.in_channels, *cfg.input_size, device=device)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

            def forward():
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                            enabled=device.type == "cuda"):
                    net(x, final_only=True)

            cells.append(f"{1000 * median_time(forward, repeat, sync):.0f}")
        lines.append(f"| {name} | {params:.2f} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "person.png")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--volume", default="128x128x128")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    volume = tuple(int(v) for v in args.volume.split("x"))
    print(f"Machine: {describe()}\n")
    print("\n".join(pipeline_table(args.photo, args.repeat)) + "\n")
    print("\n".join(variants_table(args.features, volume, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
