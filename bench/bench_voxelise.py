"""Benchmark train.voxelise on an Anny body in image-aligned coordinates against trimesh's inside test.

    ANNY_CACHE_DIR=/root/.cache/monohuman/anny .venv/bin/python bench/bench_voxelise.py [--extra-path DIR]

Prints machine info and a table: per method the best-of-N wall time for a 128^3 volume (and the tall
96x256x128 one), the IoU against trimesh.Trimesh.contains at the voxel centres, and the speed-up.
trimesh.contains needs rtree (or embreex); when neither imports, `--extra-path` may point at a folder
holding one (e.g. `pip install --target /tmp/bench_deps rtree`); without any, the baseline falls back to
the exact generalised winding number (train.voxelise.winding_numbers) on a sample of the in-bounds voxel
centres, extrapolated, and the table says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.voxelise import mesh_is_closed, project_to_volume, voxelise, winding_numbers  # noqa: E402


def machine_info() -> str:
    import trimesh

    from bench.machine import describe

    return f"machine: {describe()}; numpy {np.__version__}, trimesh {trimesh.__version__}"


def anny_body():
    os.environ.setdefault("ANNY_CACHE_DIR", "/root/.cache/monohuman/anny")
    import anny
    import torch

    t = time.perf_counter()
    model = anny.Anny().to(dtype=torch.float32)
    with torch.no_grad():
        out = model()
    v = out["vertices"].squeeze(0).double().numpy()
    f = np.asarray(model.faces, dtype=np.int64)
    return v, f, time.perf_counter() - t


def image_aligned(v_world, shape_dhw, focal=1000.0, image=1024, distance=3.5):
    """Anny (metres, Z up, facing -Y) seen by an OpenCV camera in front of it -> volume frame."""
    D, H, W = shape_dhw
    centre = 0.5 * (v_world.min(0) + v_world.max(0))
    p = v_world - centre
    cam = np.stack([p[:, 0], -p[:, 2], p[:, 1] + distance], axis=1)  # x right, y down, z forward
    cx = cy = image / 2.0
    uv = np.stack([focal * cam[:, 0] / cam[:, 2] + cx, focal * cam[:, 1] / cam[:, 2] + cy], 1)
    lo, hi = uv.min(0), uv.max(0)
    crop_h = (hi[1] - lo[1]) / 0.85  # body fills 85 % of the crop height
    crop_w = crop_h * W / H
    x0 = 0.5 * (lo[0] + hi[0]) - crop_w / 2
    y0 = 0.5 * (lo[1] + hi[1]) - crop_h / 2
    s = H / crop_h

    def crop_to_volume(q):
        return (np.asarray(q, dtype=np.float64) - [x0, y0]) * s

    return project_to_volume(cam, focal, (cx, cy), crop_to_volume, shape_dhw)


def best_time(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def iou(a, b):
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def baseline_contains(v, f, shape, sample=None, chunk=2000, seed=0):
    """(seconds for the full grid, occupancy, sampled flat indices or None, label).

    trimesh.contains is fed the voxel centres inside the mesh's bounds (it culls the others itself) in
    chunks of `chunk` points: with the rtree ray fallback one call on all of them needs > 20 GB. With
    `sample`, only that many random in-bounds centres are tested and the time is extrapolated.
    """
    import trimesh

    D, H, W = shape
    mesh = trimesh.Trimesh(v, f, process=False)
    d, h, w = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    centres = np.stack([w.ravel() + 0.5, h.ravel() + 0.5, d.ravel() + 0.5], 1)
    lo, hi = v.min(0), v.max(0)
    t0 = time.perf_counter()
    idx = np.nonzero(np.all((centres >= lo) & (centres <= hi), axis=1))[0]
    t_cull = time.perf_counter() - t0
    pick = idx
    if sample and sample < len(idx):
        pick = np.sort(np.random.default_rng(seed).choice(idx, size=sample, replace=False))
    occ = np.zeros(D * H * W, dtype=bool)
    try:
        mesh.contains(centres[:1])
        engine = "trimesh.contains (" + type(mesh.ray).__module__.split(".")[-1] + ")"
        fn = mesh.contains
    except Exception as exc:  # rtree / embree missing
        engine = (f"exact winding number (train.voxelise.winding_numbers) because trimesh.contains "
                  f"is unavailable: {type(exc).__name__}: {exc}")

        def fn(p):
            return np.abs(winding_numbers(p, v, f)) >= 0.5
    t = time.perf_counter()
    for i in range(0, len(pick), chunk):
        occ[pick[i:i + chunk]] = fn(centres[pick[i:i + chunk]])
    dt = (time.perf_counter() - t) * len(idx) / max(1, len(pick)) + t_cull
    label = engine + (f", {len(pick)} of {len(idx)} in-bounds centres, time extrapolated"
                      if len(pick) < len(idx) else f", all {len(idx)} in-bounds centres")
    return dt, occ.reshape(D, H, W), (pick if len(pick) < len(idx) else None), label


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--extra-path", action="append", default=[],
                    help="folder added to sys.path (e.g. one holding rtree for trimesh.contains)")
    ap.add_argument("--sample", type=int, default=0,
                    help="test only this many random in-bounds voxel centres with the baseline and "
                         "extrapolate its time (0 = all of them; that takes minutes)")
    args = ap.parse_args(argv)
    for p in args.extra_path:
        sys.path.append(p)

    print(machine_info())
    v_world, faces, t_load = anny_body()
    print(f"anny body: {len(v_world)} vertices, {len(faces)} faces, loaded in {t_load:.1f} s; "
          f"closed/oriented: {mesh_is_closed(v_world, faces)}")

    rows = []
    shape = (128, 128, 128)
    v, ppm = image_aligned(v_world, shape)
    print(f"volume {shape} (D, H, W): {ppm:.1f} px per metre")
    t_base, occ_base, picked, label = baseline_contains(v, faces, shape, args.sample)

    def agree(occ):
        if picked is None:
            return iou(occ, occ_base)
        return float(np.mean(occ.reshape(-1)[picked] == occ_base.reshape(-1)[picked]))

    results = {}
    for method in ("parity", "winding", "auto"):
        dt, occ = best_time(lambda: voxelise(v, faces, shape, method), args.repeat)
        results[method] = occ
        rows.append((f"{method} 128^3", dt, occ.sum(),
                     agree(occ), t_base / dt))

    # an open body: the top of the head cut off (about 1 % of the faces), forcing exact winding numbers
    top = v[:, 1].min()
    cut = v[faces].mean(1)[:, 1] < top + 2.0
    open_faces = faces[~cut]
    dt, occ_open = best_time(lambda: voxelise(v, open_faces, shape, "auto"), max(1, args.repeat // 2))
    ref = results["parity"]
    rows.append((f"auto 128^3, open ({cut.sum()} faces cut)", dt, occ_open.sum(),
                 iou(occ_open, ref), t_base / dt))

    tall = (96, 256, 128)
    vt, _ = image_aligned(v_world, tall)
    dt, occ_t = best_time(lambda: voxelise(vt, faces, tall, "auto"), args.repeat)
    rows.append(("auto 96x256x128", dt, occ_t.sum(), float("nan"), float("nan")))

    print(f"baseline: {label}: {t_base:.2f} s for the full 128^3 grid")
    print(f"parity vs winding on the closed body: {int((results['parity'] ^ results['winding']).sum())} "
          f"voxels differ")
    print()
    print(f"| {'method':<34} | {'time (ms)':>9} | {'voxels':>8} | {'IoU vs baseline':>15} | {'speed-up':>9} |")
    print(f"|{'-' * 36}|{'-' * 10}:|{'-' * 9}:|{'-' * 16}:|{'-' * 10}:|")
    for name, dt, n, q, r in rows:
        qs = "-" if np.isnan(q) else f"{q:.5f}"
        rs = "-" if np.isnan(r) else f"{r:,.0f}x"
        print(f"| {name:<34} | {dt * 1e3:>9.1f} | {int(n):>8} | {qs:>15} | {rs:>9} |")
    print("(IoU vs baseline: over the full grid; with --sample, the fraction of sampled centres that agree."
          " Open row: IoU against parity on the closed body)")


if __name__ == "__main__":
    main()
