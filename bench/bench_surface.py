"""Marching-cubes benchmark and extract_surface stage timings.

    python bench/bench_surface.py [--size 128] [--repeat 3]

On one body-like volume (a union of capsules and ellipsoids, smoothed into probabilities), times the
marching-cubes implementations available here and checks they give the same surface (area and enclosed
volume within 0.5 %), then times each stage of core.surface.extract_surface.  Prints to stdout only.

Implementations: skimage Lewiner and Lorensen; trimesh.voxel.ops.matrix_to_marching_cubes (wraps
skimage); PyMCubes (``mcubes``) when importable (not in requirements.txt; benchmarked by putting an
unpacked wheel on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import scipy.ndimage  # noqa: E402
import skimage  # noqa: E402
import trimesh  # noqa: E402
from skimage import measure  # noqa: E402

from core.surface import extract_surface  # noqa: E402


def _capsule(coords, a, b, r):
    """Signed distance-ish (distance - r) to the segment a-b, coords (..., 3) in (x, y, z)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ab = b - a
    t = np.clip(((coords - a) @ ab) / (ab @ ab), 0, 1)
    p = a + t[..., None] * ab
    return np.linalg.norm(coords - p, axis=-1) - r


def body_volume(shape=(128, 128, 128), smooth=True) -> np.ndarray:
    """A standing person-like occupancy volume (D, H, W) in the volume frame, facing the camera (-z).

    Built in units of the volume height H; a nose bump points to small z (the camera).
    Returns float32 probabilities in [0, 1] (a blurred occupancy) or bool when ``smooth`` is False.
    """
    D, H, W = shape
    u = H * 0.85 / 1.7  # voxels per "metre": the body fills 85 % of the height
    cx, cz = W / 2, D / 2
    top = H * 0.075

    def P(x, y, z=0.0):  # metres -> voxel coords; x right, y down from the head top, z away
        return (cx + x * u, top + y * u, cz + z * u)

    parts = [
        (P(0, 0.12), P(0, 0.14), 0.10),  # head
        (P(0, 0.24), P(0, 0.30), 0.055),  # neck
        (P(-0.10, 0.38), P(0.10, 0.38), 0.10),  # chest
        (P(-0.07, 0.55), P(0.07, 0.55), 0.11),  # belly
        (P(-0.07, 0.72), P(0.07, 0.72), 0.12),  # hips
        (P(-0.19, 0.36), P(-0.30, 0.62), 0.045),  # upper arms
        (P(0.19, 0.36), P(0.30, 0.62), 0.045),
        (P(-0.30, 0.62), P(-0.34, 0.86), 0.037),  # forearms
        (P(0.30, 0.62), P(0.34, 0.86), 0.037),
        (P(-0.09, 0.80), P(-0.11, 1.22), 0.07),  # thighs
        (P(0.09, 0.80), P(0.11, 1.22), 0.07),
        (P(-0.11, 1.22), P(-0.12, 1.60), 0.05),  # shins
        (P(0.11, 1.22), P(0.12, 1.60), 0.05),
        (P(-0.12, 1.63, -0.03), P(-0.12, 1.64, -0.14), 0.04),  # feet, toes to the camera
        (P(0.12, 1.63, -0.03), P(0.12, 1.64, -0.14), 0.04),
        (P(0, 0.13, -0.09), P(0, 0.15, -0.11), 0.02),  # nose
    ]
    occ = np.zeros(shape, bool)
    for a, b, r in parts:
        r = r * u
        lo = np.maximum(np.floor(np.minimum(a, b) - r - 1).astype(int), 0)  # (x, y, z)
        hi = np.minimum(np.ceil(np.maximum(a, b) + r + 1).astype(int), (W, H, D))
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.meshgrid(np.arange(lo[2], hi[2]) + 0.5, np.arange(lo[1], hi[1]) + 0.5,
                                 np.arange(lo[0], hi[0]) + 0.5, indexing="ij", sparse=True)
        coords = np.stack(np.broadcast_arrays(xx, yy, zz), axis=-1)
        occ[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] |= _capsule(coords, a, b, r) <= 0
    if not smooth:
        return occ
    return np.clip(scipy.ndimage.gaussian_filter(occ.astype(np.float32), 0.8), 0, 1)


def _mc_skimage(method):
    def f(vol, level):
        v, fc, _, _ = measure.marching_cubes(vol, level=level, method=method)
        return v, fc
    return f


def _mc_trimesh(vol, level):
    m = trimesh.voxel.ops.matrix_to_marching_cubes(vol >= level)  # binary input only
    return m.vertices, m.faces


def _implementations():
    impls = [
        ("skimage lewiner", _mc_skimage("lewiner")),
        ("skimage lorensen", _mc_skimage("lorensen")),
        ("trimesh (skimage, bool)", _mc_trimesh),
    ]
    try:
        import mcubes  # type: ignore

        def _mc_mcubes(vol, level):
            v, fc = mcubes.marching_cubes(vol, level)
            return v, fc.astype(np.int64)

        impls.append(("PyMCubes", _mc_mcubes))
    except ImportError:
        pass
    return impls


def _measure(v, f):
    m = trimesh.Trimesh(v, f, process=False)
    return m.area, abs(m.volume), m.is_watertight


def machine_info() -> str:
    from bench.machine import describe

    return (f"{describe()}; numpy {np.__version__}; scikit-image {skimage.__version__}; "
            f"trimesh {trimesh.__version__}")


def _time(fn, repeat):
    best = np.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    n = args.size
    print(machine_info())
    if not any(name == "PyMCubes" for name, _ in _implementations()):
        print("PyMCubes (mcubes) not importable: skipped")
    t = time.perf_counter()
    vol = body_volume((n, n, n))
    print(f"volume: {n}^3 body-like probabilities, {(vol >= 0.5).sum()} voxels inside "
          f"(built in {time.perf_counter() - t:.2f} s); best of {args.repeat}")
    inputs = [("probabilities", np.pad(vol, 1)), ("bool", np.pad(vol >= 0.5, 1).astype(np.float32))]

    print()
    print("| input | implementation | time (ms) | vertices | faces | area (vox^2) | volume (vox^3) "
          "| watertight | same surface as lewiner |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for input_name, padded in inputs:
        ref = None
        for name, fn in _implementations():
            if "bool" in name and input_name != "bool":
                continue  # trimesh's wrapper thresholds first: compare it on the bool input only
            secs, (v, f) = _time(lambda: fn(padded, 0.5), args.repeat)
            area, volume, wt = _measure(v, f)
            if ref is None:
                ref = (area, volume)
            tol = 0.005
            same = abs(area - ref[0]) <= tol * ref[0] and abs(volume - ref[1]) <= tol * ref[1]
            print(f"| {input_name} | {name} | {secs * 1e3:.1f} | {len(v)} | {len(f)} | {area:.0f} | "
                  f"{volume:.0f} | {wt} | {'yes' if same else 'NO'} (tol {tol:.1%}) |")

    print()
    print("(whole padded 130^3 array above; extract_surface crops to the inside voxels' bounding box first)")
    print()
    print("extract_surface stages (ms; best total of the repeats; with a face budget 'resample', marching_cubes")
    print("and components include the trilinear resampling and the coarser re-run, decimation the rest):")
    cases = [
        ("defaults (smooth 10)", dict()),
        ("no smoothing", dict(smooth_iterations=0)),
        ("face_budget 5000 (resample)", dict(face_budget=5000)),
    ]
    try:
        import fast_simplification  # noqa: F401
        cases.append(("face_budget 5000 (quadric)", dict(face_budget=5000, decimation="quadric")))
    except ImportError:
        print("fast_simplification not importable: quadric decimation skipped")
    stages = ["crop_pad", "marching_cubes", "components", "decimation", "smoothing", "normals", "total"]
    print("| case | " + " | ".join(stages) + " | faces | watertight |")
    print("| --- | " + " | ".join("---:" for _ in stages) + " | ---: | --- |")
    for label, kw in cases:
        best = None
        for _ in range(args.repeat):
            m = extract_surface(vol, **kw)
            tm = m.metadata["surface_timings"]
            if best is None or tm["total"] < best[0]["total"]:
                best = (tm, m)
        tm, m = best
        print(f"| {label} | " + " | ".join(f"{tm.get(s, 0.0) * 1e3:.1f}" for s in stages)
              + f" | {len(m.faces)} | {m.is_watertight} |")


if __name__ == "__main__":
    main()
