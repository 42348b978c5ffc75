"""Make a synthetic training set: posed, dressed Anny bodies (or a folder of scans) rendered in Blender and
voxelised in the image-aligned frame (docs/ARCHITECTURE.md, "A training sample on disk").

    python -m train.make_dataset --out DIR --count N [--source anny | --scans DIR] [--seed S]
        [--shard I/N] [--workers W] [--size 128|256] [--volume DxHxW] [--engine cycles|workbench]
        [--samples SPP] [--denoise] [--preview] [--split-every K] [--backgrounds DIR]
        [--clothing SHARE] [--clothing-kinds skirt,dress,coat,trousers,hood,hair,shoes,boots|all|none]
    python -m train.make_dataset merge OUT DIR1 DIR2 ...

    blender -b -P train/make_dataset.py -- ARGS       (a Blender install instead of the bpy module;
        core's and anny's dependencies - numpy<2, torch, anny, opencv, mediapipe, scikit-image, trimesh,
        tqdm - must be importable by Blender's Python, e.g. PYTHONPATH=/path/to/venv/site-packages)

Per sample i (everything from rng = np.random.default_rng([seed, i]), so a sample depends only on
(seed, i), never on the shard or worker that makes it):
body (train.bodies / a scan) -> scene (train.scene) -> garments and hair (train.garments, from their own
stream [seed, i, 1]; a share --clothing of the Anny samples) -> render the "photo" (train.render) -> crop box from
the rasterised mask (core.crop.crop_box_from_mask with scale jitter U(0.9, 1.1) and shift jitter
U(-0.04, 0.04): the paper's scale augmentation, free at generation time) -> crop rgb (core.crop.crop_image,
linear), rasterise mask and parts directly in the crop (exact) -> landmarks16 (anny's COCO keypoints
projected, core.landmarks.mpii16_from_coco17) and landmarks16_detected (core.detect on the crop; NaN when
nobody is found) -> train.voxelise.project_to_volume + voxelise (+ one surface voxel in the few columns
whose silhouette chord is thinner than a voxel, so the front view is the rendered silhouette; counted in
meta "silhouette_voxels_added"); with garments, the body and each garment are voxelised apart and OR-ed, and
the body's own volume is kept too -> samples/NNNNNNN.npz (atomic).

Shards: --shard I/N makes the indices i < count with i % N == I.  --workers W splits that into W
sub-shards (i % (N*W) == I + k*N) run as W separate processes of this same command.  Existing samples are
skipped, so a killed run resumes where it stopped.  At the end (of the whole run, not of each worker):
manifest.jsonl (sorted, rebuilt from the sample files), card.json, timings.json and, with --preview,
preview.png.  Splits: a body is "test" when body_id % K == K - 1 (K = --split-every, default 10); Anny
bodies are one per sample (body_id = index), a scan's body_id is its position in the sorted scan list, so
no body is in two splits.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script, e.g. by `blender -b -P`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from core.files import write_atomic  # noqa: E402

FORMAT = "monohuman-dataset"
FORMAT_VERSION = 1
# What a sample depends on: a folder is made with one set of these (settings.json); a rerun must match.
SETTINGS = ("seed", "size", "volume", "engine", "samples", "denoise", "split_every", "source", "scans",
            "backgrounds", "no_detect", "clothing", "clothing_kinds")
UNCLOTHED = {"clothing": 0.0, "clothing_kinds": []}  # the settings of a folder made before --clothing existed
STAGES = ("body", "scene", "garments", "render", "crop", "detect", "voxelise", "write")


# ------------------------------------------------------------------------------------------- args

def _volume(text: str):
    from core.errors import ArgumentError
    from core.validate import shape

    try:
        return shape("--volume", text)
    except ArgumentError as err:
        raise argparse.ArgumentTypeError(err.problem) from None


def _shard(text: str):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N, e.g. 0/4; got {text!r}")
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N; got {text!r}")
    return i, n


def _kinds(text: str):
    from train.garments import KINDS

    if text.strip() in ("all", ""):
        return list(KINDS)
    if text.strip() == "none":
        return []
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown garment kind(s) {', '.join(bad)}; choose among "
                                         f"{', '.join(KINDS)} (or 'all', 'none')")
    return kinds


def build_parser():
    from core.validate import Parser

    p = Parser(prog="python -m train.make_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, required=True, help="number of samples in the whole dataset")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", choices=["anny"], default="anny")
    src.add_argument("--scans", default=None, help="folder of OBJ/PLY/GLB/FBX scans instead of Anny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: make indices i with i %% N == I")
    p.add_argument("--workers", type=int, default=1, help="Blender processes on this machine")
    p.add_argument("--size", type=int, default=128, help="input height in pixels (width from the volume)")
    p.add_argument("--volume", type=_volume, default=(128, 128, 128), help="DxHxW, e.g. 128x128x128")
    p.add_argument("--engine", choices=["cycles", "workbench"], default="cycles")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    p.add_argument("--denoise", action="store_true", help="Cycles OpenImageDenoise")
    p.add_argument("--threads", type=int, default=0, help="render threads per process (0 = all)")
    p.add_argument("--preview", action="store_true", help="write preview.png (contact sheet)")
    p.add_argument("--split-every", type=int, default=10, help="K: body_id %% K == K-1 is 'test'")
    p.add_argument("--backgrounds", default=None, help="folder of background images")
    p.add_argument("--no-detect", action="store_true", help="skip mediapipe (landmarks16_detected = NaN)")
    p.add_argument("--clothing", type=float, default=0.8,
                   help="share of Anny samples that wear garments and hair (0 = none, the rest are tight)")
    p.add_argument("--clothing-kinds", type=_kinds, default=_kinds("all"),
                   help="garment kinds to draw from, comma-separated, 'all' or 'none' (train.garments.KINDS)")
    p.add_argument("--progress", choices=["auto", "none"], default="auto")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: no finalise
    return p


def check_args(args):
    """Ranges and folders, before anything is made."""
    from core.validate import existing_folder, number

    number("--count", args.count, integer=True, lo=1)
    number("--size", args.size, integer=True, lo=16)
    number("--workers", args.workers, integer=True, lo=1)
    number("--samples", args.samples, integer=True, lo=1)
    number("--threads", args.threads, integer=True, lo=0)
    number("--split-every", args.split_every, integer=True, lo=0)
    number("--clothing", args.clothing, lo=0, hi=1)
    for name in ("backgrounds", "scans"):
        if getattr(args, name):
            existing_folder(f"--{name}", getattr(args, name))
    return args


def settings_of(args) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in SETTINGS}


def remember_settings(out: Path, args) -> None:
    """The folder's settings.json is written by its first run; a rerun with other settings is refused with
    the difference named, so a dataset never mixes samples made two ways. A folder from before this file
    existed is checked against its card's parameters."""
    from core.errors import DataError

    path = out / "settings.json"
    mine = settings_of(args)
    if path.exists():
        saved, source = json.loads(path.read_text()), "settings.json"
    else:
        card = out / "card.json"
        saved = json.loads(card.read_text()).get("parameters", {}) if card.exists() else {}
        saved, source = {k: v for k, v in saved.items() if k in SETTINGS}, "card.json"
    if saved:  # a folder made before clothing existed holds tight bodies only
        saved = {**UNCLOTHED, **saved}
    diff = [f"--{k.replace('_', '-')} {_shown(mine.get(k))} (made with {_shown(saved[k])})"
            for k in SETTINGS if k in saved and saved[k] != mine.get(k)]
    if diff:
        raise DataError(f"{out} was made with other settings ({source}): {'; '.join(diff)}.",
                        "Rerun with the folder's settings, or choose another --out.")
    if not path.exists():
        write_atomic(path, json.dumps(mine, indent=1, sort_keys=True) + "\n")


def _shown(value) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value) or "none"  # garment kinds
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def remove_broken(out: Path, indices) -> int:
    """Delete the broken sample files among `indices` (a crash, a full disk), so this run makes them again."""
    from train.samples import sample_path, sample_problem

    removed = 0
    for i in indices:
        p = sample_path(out, i)
        problem = sample_problem(p) if p.exists() else None
        if problem:
            print(f"remaking broken sample {p.name}: {problem}", file=sys.stderr)
            p.unlink()
            removed += 1
    return removed


def _argv():
    if "--" in sys.argv:  # blender -b -P script -- ARGS
        return sys.argv[sys.argv.index("--") + 1:]
    return sys.argv[1:]


# ------------------------------------------------------------------------------------------- context

class Context:
    def __init__(self, args):
        from train.scene import SceneConfig

        self.args = args
        self.shape = tuple(args.volume)
        D, H, W = self.shape
        self.in_hw = (int(args.size), int(round(args.size * W / H)))
        self.cfg = SceneConfig(engine=args.engine, samples=args.samples, denoise=args.denoise,
                               threads=args.threads, background_dir=args.backgrounds)
        self.scans = None
        self.scan_problems = []
        if args.scans:
            self.scans, self.scan_problems = load_scans(args.scans)
            if not self.scans:
                from core.errors import DataError
                raise DataError(f"No usable scan in {args.scans}.",
                                "Put OBJ/PLY/GLB/FBX files of whole people there.")


def load_scans(folder):
    """[(name, vertices, faces)] of the usable scans (sorted by name) and [(name, reason)] of the broken."""
    from train.scans import iter_scans

    skipped: list = []  # iter_scans says why each broken scan was skipped
    good = sorted([(Path(path).name, np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64))
                   for path, mesh in iter_scans(folder, skipped=skipped)], key=lambda t: t[0])
    problems = [(Path(path).name, why) for path, why in skipped]
    for name, why in problems:
        print(f"skipping broken scan {name}: {why}", file=sys.stderr)
    return good, problems


# ------------------------------------------------------------------------------------------- one sample

def body_id_of(index: int, ctx: Context) -> int:
    return index % len(ctx.scans) if ctx.scans else index


def split_of(body_id: int, k: int) -> str:
    return "test" if k > 0 and body_id % k == k - 1 else "train"


def make_sample(index: int, ctx: Context) -> dict:
    """Make sample `index` and write it. Returns the per-stage timings (seconds)."""
    from train.render import render_photo
    from train.scene import clothing_regions, dress, sample_scene

    tm = {}
    t = time.perf_counter()
    rng = np.random.default_rng([int(ctx.args.seed), int(index)])
    body_id = body_id_of(index, ctx)
    body = _make_body(rng, body_id, ctx)
    tm["body"] = time.perf_counter() - t

    t = time.perf_counter()
    params = sample_scene(rng, body, ctx.cfg, ctx.in_hw)
    regions = clothing_regions(body, params["appearance"])
    dressed = dress(body, regions, params["appearance"]["thickness"])
    tm["scene"] = time.perf_counter() - t
    t = time.perf_counter()
    worn = _garments(index, body, ctx)
    tm["garments"] = time.perf_counter() - t
    photo = render_photo(body, params, dressed, regions, ctx.cfg, timings=tm, garments=worn or ())

    t = time.perf_counter()
    crop = _crop(rng, photo, body, params["camera"], ctx, worn or ())
    tm["crop"] = time.perf_counter() - t
    t = time.perf_counter()
    detection = _detect(crop["rgb"], index, ctx.args)
    tm["detect"] = time.perf_counter() - t
    t = time.perf_counter()
    vox = _voxelise(photo, crop["box"], body, params["camera"], ctx, worn or ())
    tm["voxelise"] = time.perf_counter() - t
    t = time.perf_counter()
    _write(index, ctx, body, body_id, params, dict(crop, **detection, **vox), worn)
    tm["write"] = time.perf_counter() - t
    return tm


def _make_body(rng, body_id: int, ctx: Context):
    from train import bodies

    if ctx.scans:
        name, v, f = ctx.scans[body_id]
        return bodies.body_from_mesh(v, f, name=name)  # an upright rotation of the scan is the camera's yaw
    return bodies.make_anny_body(rng)


def _garments(index: int, body, ctx: Context):
    """None when the dataset has no clothing (or the body is a scan); else this sample's garments (an
    empty list for a tight sample). Drawn from their own stream [seed, index, 1], so clothing changes
    nothing else in the sample (body, scene, crop) and a dataset without clothing stays as it was."""
    from train.garments import make_garments, sample_garments

    share, kinds = ctx.args.clothing, ctx.args.clothing_kinds
    if share <= 0 or not kinds or body.source != "anny":
        return None
    rng = np.random.default_rng([int(ctx.args.seed), int(index), 1])
    specs = sample_garments(rng, kinds) if rng.random() < share else []
    return make_garments(body, specs)


def _crop(rng, photo, body, cam, ctx: Context, worn) -> dict:
    """Crop box (with jitter), the crop's rgb, mask, parts and projected landmarks."""
    from core.crop import crop_box_from_mask, crop_image
    from core.landmarks import mpii16_from_coco17
    from train.render import person_mesh, rasterise
    from train.scene import project

    D, H, W = ctx.shape
    in_hw = ctx.in_hw
    scale_jitter = float(rng.uniform(0.9, 1.1))
    shift_jitter = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)))
    box = crop_box_from_mask(photo["mask"], aspect_wh=W / H, fill=0.85, scale_jitter=scale_jitter,
                             shift_jitter=shift_jitter)
    rgb = crop_image(photo["rgb"], box, in_hw, interpolation="linear")
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    worn_uv = [(box.to_crop(guv, in_hw), gpc) for guv, gpc in photo["garments"]]
    uv, depth, faces, labels = person_mesh(box.to_crop(photo["uv"], in_hw), photo["points_cam"], body, worn,
                                           worn_uv)
    mask, parts, _ = rasterise(uv, depth, faces, in_hw, labels)
    alpha = crop_image(photo["alpha"].astype(np.float32), box, in_hw, interpolation="linear") > 0.5
    if body.source == "anny":
        uvc, _ = project(body.coco17, cam)
        uvc = box.to_crop(uvc, in_hw)
        vis = ((uvc[:, 0] >= 0) & (uvc[:, 0] <= in_hw[1]) & (uvc[:, 1] >= 0) & (uvc[:, 1] <= in_hw[0]))
        lm16 = mpii16_from_coco17(np.concatenate([uvc, vis[:, None].astype(np.float64)], axis=1))
    else:
        lm16 = np.full((16, 3), np.nan, np.float32)
    return dict(box=box, rgb=rgb, mask=mask, parts=parts, lm16=lm16, alpha_iou=_iou(alpha, mask),
                jitter=dict(scale=scale_jitter, shift=list(shift_jitter)))


def _detect(rgb, index: int, args) -> dict:
    """mediapipe on the crop: its 16 landmarks and soft mask (what inference gives the network)."""
    found = dict(lm_det=np.full((16, 3), np.nan, np.float32), mask_det=None, detected=False)
    if args.no_detect:
        return found
    from core.detect import detect_person
    from core.errors import NoPersonError
    try:
        det = detect_person(rgb, name=f"sample {index}")
    except NoPersonError:
        return found
    return dict(lm_det=det.landmarks16, mask_det=det.mask, detected=True)


def _voxelise(photo, box, body, cam, ctx: Context, worn) -> dict:
    """The target: the body's volume OR each garment's (voxelised apart: ray parity needs one closed
    surface at a time), the silhouette's thin columns filled; and the body's own volume when dressed."""
    from train.voxelise import project_to_volume, voxelise

    D, H, W = ctx.shape
    pc = photo["points_cam"]
    mean_depth = float(pc[:, 2].mean())

    def to_vox(points):
        return project_to_volume(points, cam["focal_px"], cam["principal_xy"], lambda p: box.to_crop(p, (H, W)),
                                 ctx.shape, mean_depth=mean_depth)

    verts_vox, ppm = to_vox(pc)
    volume = voxelise(verts_vox, body.faces, ctx.shape)
    body_volume = None
    if worn:  # the body's own thin columns first, so the target holds every voxel of the body's volume
        _fill_silhouette(volume, box, photo, body, (), mean_depth, ppm)
        body_volume = volume.copy()
        for g, (_, gpc) in zip(worn, photo["garments"]):
            volume |= voxelise(to_vox(gpc)[0], g.faces, ctx.shape)
    R, pos = np.asarray(cam["R_world_to_cam"]), np.asarray(cam["cam_pos"])
    joints_cam = (body.joints - pos) @ R.T if len(body.joints) else np.zeros((0, 3))
    joints_vox = to_vox(joints_cam)[0] if len(joints_cam) else np.zeros((0, 3))
    front_iou_raw, gap = _fill_silhouette(volume, box, photo, body, worn, mean_depth, ppm)
    return dict(volume=volume, body_volume=body_volume, verts_vox=verts_vox, joints_vox=joints_vox,
                joints_cam=joints_cam, vertices_cam=pc, ppm=ppm, mean_depth=mean_depth,
                front_iou_raw=front_iou_raw, gap=gap)


def _fill_silhouette(volume, box, photo, body, worn, mean_depth: float, ppm: float):
    """The voxeliser samples voxel centres along each ray; where the silhouette's chord is thinner than a
    voxel (grazing edges of limbs) no centre falls inside and the column stays empty although the pixel
    centre is on the person. Put one voxel at the surface depth there (in place), so the front projection
    is the rendered silhouette (rasterised at the volume's H x W with the same pixel-centre rule).
    Returns (front IoU before the fill, the filled columns)."""
    from train.render import person_mesh, rasterise

    D, H, W = volume.shape
    worn_uv = [(box.to_crop(guv, (H, W)), gpc) for guv, gpc in photo["garments"][:len(worn)]]
    uv, depth, faces, _ = person_mesh(box.to_crop(photo["uv"], (H, W)), photo["points_cam"], body, worn,
                                      worn_uv)
    mask_v, _, zb = rasterise(uv, depth, faces, (H, W))
    front_raw = volume.any(axis=0)
    gap = mask_v & ~front_raw
    if gap.any():
        hh, ww = np.nonzero(gap)
        dd = np.clip(np.floor((zb[hh, ww] - mean_depth) * ppm + D / 2.0), 0, D - 1).astype(np.int64)
        volume[dd, hh, ww] = True
    return _iou(front_raw, mask_v), gap


def _write(index: int, ctx: Context, body, body_id: int, params: dict, s: dict, worn) -> None:
    """The sample file (atomic); `s` holds what the crop, detect and voxelise stages made."""
    from core.crop import crop_image
    from train.samples import sample_path, write_sample

    args, cam = ctx.args, params["camera"]
    D, H, W = ctx.shape
    in_hw = ctx.in_hw
    mask, volume, verts_vox = s["mask"], s["volume"], s["verts_vox"]
    mask_at_vol = mask if (H, W) == tuple(in_hw) else crop_image(mask, box_unit(in_hw), (H, W), "nearest")
    meta = dict(
        format=FORMAT, format_version=FORMAT_VERSION, index=int(index), seed=int(args.seed),
        source=body.source, body_id=int(body_id), split=split_of(body_id, args.split_every),
        body=body.params, scene=params, crop_box=s["box"].as_dict(), crop_jitter=s["jitter"],
        input_hw=list(in_hw), volume_shape=[D, H, W], px_per_metre=s["ppm"], mean_depth_m=s["mean_depth"],
        intrinsics=dict(focal_px=cam["focal_px"], principal_xy=list(cam["principal_xy"]),
                        canvas_hw=cam["canvas_hw"]),
        alpha_iou=s["alpha_iou"], front_iou=_iou(volume.any(axis=0), mask_at_vol),
        front_iou_voxeliser=s["front_iou_raw"], silhouette_voxels_added=int(s["gap"].sum()),
        detected=s["detected"],
        vertices_outside_volume=int(np.sum(np.any((verts_vox < 0) | (verts_vox > [W, H, D]), axis=1))),
        joints="anny bone heads, card.json joint_names" if len(s["joints_cam"]) else "none (scan)",
    )
    if worn is not None:  # a dataset with clothing: what this sample wears (an empty list: tight)
        meta["clothing"] = [g.spec for g in worn]
    write_sample(sample_path(args.out, index), rgb=s["rgb"], mask=mask, parts=s["parts"], landmarks16=s["lm16"],
                 landmarks16_detected=s["lm_det"], volume=volume, vertices_vox=verts_vox,
                 joints_vox=s["joints_vox"], vertices_cam=s["vertices_cam"], joints_cam=s["joints_cam"], meta=meta,
                 mask_detected=s["mask_det"], volume_body=s["body_volume"])


def box_unit(hw):
    from core.crop import CropBox
    return CropBox(0.0, 0.0, float(hw[1]), float(hw[0]))


def _iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


# ------------------------------------------------------------------------------------------- running

def _indices(args):
    i, n = args.shard
    return [k for k in range(int(args.count)) if k % n == i]


def _clean_tmp(out):
    for p in glob.glob(str(Path(out) / "samples" / ".*.tmp")):
        try:
            os.unlink(p)
        except OSError:
            pass


def _done(out, indices):
    from train.samples import sample_path
    return [i for i in indices if sample_path(out, i).exists()]


def _bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="sample", dynamic_ncols=True, smoothing=0.1)


def run_here(args, indices, progress=True):
    """Make the missing samples among `indices` in this process."""
    from train.samples import sample_path

    todo = [i for i in indices if not sample_path(args.out, i).exists()]
    bar = _bar(len(indices), len(indices) - len(todo), progress)
    if not todo:
        if bar:
            bar.close()
        return
    ctx = Context(args)
    timing_log = Path(args.out) / "timings.jsonl"
    for i in todo:
        tm = make_sample(i, ctx)
        with open(timing_log, "a") as f:
            f.write(json.dumps({"index": i, "pid": os.getpid(), **{k: round(v, 4) for k, v in tm.items()}})
                    + "\n")
        if bar:
            bar.update(1)
    if bar:
        bar.close()


def _worker_command(argv, shard):
    rest = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--shard", "--workers"):
            skip = True
            continue
        if a.startswith(("--shard=", "--workers=")) or a in ("--preview",):
            continue
        rest.append(a)
    rest += ["--shard", f"{shard[0]}/{shard[1]}", "--workers", "1", "--worker", "--progress", "none"]
    if Path(sys.argv[0]).name.lower().startswith("blender"):
        import bpy
        return [bpy.app.binary_path, "-b", "-P", str(Path(__file__).resolve()), "--"] + rest
    return [sys.executable, "-m", "train.make_dataset"] + rest


PARENT_PID_ENV = "MONOHUMAN_DATASET_PARENT"


def _die_with_parent():
    """A worker stops when the command that started it is gone (killed), instead of rendering on alone;
    what it was writing is a temporary file the next run removes."""
    import threading

    # The parent's pid comes from the parent itself: a worker whose parent died while it was still importing
    # bpy and anny would otherwise take the reaper for its parent and render on alone (found by a test).
    parent = int(os.environ.get(PARENT_PID_ENV) or os.getppid())

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def run_workers(args, argv, indices):
    i, n = args.shard
    w = int(args.workers)
    procs = []
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[PARENT_PID_ENV] = str(os.getpid())
    for k in range(w):
        cmd = _worker_command(argv, (i + k * n, n * w))
        procs.append(subprocess.Popen(cmd, env=env, cwd=repo))
    bar = _bar(len(indices), len(_done(args.out, indices)), args.progress != "none")
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            if bar:
                bar.n = len(_done(args.out, indices))
                bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        if bar:
            bar.n = len(_done(args.out, indices))
            bar.close()
    bad = [p.returncode for p in procs if p.returncode]
    if bad:
        from core.errors import DataError
        raise DataError(f"{len(bad)} worker(s) failed (exit codes {bad}).", "Run the same command again to resume.")


# ------------------------------------------------------------------------------------------- finish

def finalise(out, args=None, scan_problems=None):
    """manifest.jsonl (rebuilt from the sample files, sorted), card.json, timings.json, preview."""
    from train.samples import read_meta

    out = Path(out)
    files = sorted((out / "samples").glob("*.npz"))
    lines, counts, params = [], {"train": 0, "test": 0}, None
    sources, worn, clothed = {}, {}, 0
    for p in files:
        m = read_meta(p)
        for g in m.get("clothing", []):
            worn[g["kind"]] = worn.get(g["kind"], 0) + 1
        counts[m["split"]] = counts.get(m["split"], 0) + 1
        sources[m["source"]] = sources.get(m["source"], 0) + 1
        lines.append(json.dumps({
            "index": m["index"], "file": f"samples/{p.name}", "split": m["split"], "body_id": m["body_id"],
            "source": m["source"], "pose": m["body"].get("pose", {}).get("kind"),
            "front_iou": round(m["front_iou"], 5), "detected": m["detected"],
            **({"clothed": bool(m["clothing"])} if "clothing" in m else {})}, sort_keys=True))
        clothed += bool(m.get("clothing"))
        params = params or m
    write_atomic(out / "manifest.jsonl", "".join(ln + "\n" for ln in lines))
    from train.bodies import PART_NAMES, PART_UNKNOWN
    card = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "count": len(files), "counts_by_split": counts, "counts_by_source": sources,
        "clothing_kinds": dict(sorted(worn.items())),
        "clothed": clothed,
        "seed": params["seed"] if params else None,
        "input_hw": params["input_hw"] if params else None,
        "volume_shape": params["volume_shape"] if params else None,
        "split": {"rule": "test when body_id % K == K - 1", "K": getattr(args, "split_every", None)},
        "parts": {"names": list(PART_NAMES), "unknown": PART_UNKNOWN},
        "landmarks16": "MPII order (core.landmarks.MPII16_NAMES), crop input pixels",
        "joint_names": _joint_names(),
    }
    if args is not None:
        from train.scene import SceneConfig
        card["parameters"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                              if k not in ("worker", "progress")}
        card["scene_config"] = SceneConfig(engine=args.engine, samples=args.samples, denoise=args.denoise,
                                           background_dir=args.backgrounds).to_dict()
        card["command"] = "python -m train.make_dataset " + " ".join(_argv())
    if scan_problems:
        card["skipped_scans"] = [{"file": n, "reason": r} for n, r in scan_problems]
    write_atomic(out / "card.json", json.dumps(card, indent=1, sort_keys=True) + "\n")
    _timing_summary(out)
    if args is not None and args.preview:
        write_preview(out, out / "preview.png")
    return card


def _joint_names():
    try:
        from train.bodies import topology
        return list(topology().bone_labels)
    except Exception:
        return None


def _timing_summary(out):
    log = Path(out) / "timings.jsonl"
    if not log.exists():
        return
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    summ = {s: round(float(np.mean([r.get(s, 0.0) for r in rows])), 4) for s in STAGES}
    summ["total"] = round(sum(summ.values()), 4)
    summ["samples_logged"] = len(rows)
    write_atomic(Path(out) / "timings.json", json.dumps(summ, indent=1) + "\n")


def write_preview(out, png_path, max_rows: int = 48):
    """Contact sheet: per sample the crop, the mask, the volume from the front and from the side."""
    import cv2
    from core.image_io import save_png
    from train.samples import read_sample

    files = sorted((Path(out) / "samples").glob("*.npz"))[:max_rows]
    rows = []
    for p in files:
        s = read_sample(p)
        h, w = s["rgb"].shape[:2]
        vol = s["volume"]
        front = vol.any(axis=0)
        depth = np.argmax(vol, axis=0).astype(np.float32)
        shade = np.where(front, 255 - 180 * depth / max(vol.shape[0], 1), 0)
        side = vol.any(axis=2).T  # (H, D), camera on the left
        sdepth = np.argmax(vol, axis=2).T.astype(np.float32)
        sshade = np.where(side, 255 - 180 * sdepth / max(vol.shape[2], 1), 0)

        def tile(img):
            img = np.asarray(img, np.float32)
            sc = h / img.shape[0]
            img = cv2.resize(img, (max(1, int(round(img.shape[1] * sc))), h), interpolation=cv2.INTER_NEAREST)
            img = np.clip(img, 0, 255).astype(np.uint8)
            return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img

        row = [tile(s["rgb"]), tile(s["mask"]), tile(shade), tile(sshade)]
        rows.append(np.concatenate([np.concatenate([r, np.full((h, 2, 3), 80, np.uint8)], 1) for r in row], 1))
    if not rows:
        return
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=80) for r in rows]
    save_png(png_path, np.concatenate(rows, 0))


# ------------------------------------------------------------------------------------------- merge

def merge(out, dirs):
    """Merge shard folders into OUT (hard links when possible); the same index twice must be the same file."""
    import filecmp
    import shutil

    from core.errors import DataError
    from core.validate import existing_folder

    out = Path(out)
    dirs = [existing_folder("merge folder", d, "Give shard folders made by make_dataset.") for d in dirs]
    card_params, chosen = None, {}
    for d in dirs:  # every check first: a refused merge links nothing
        card = json.loads((d / "card.json").read_text()) if (d / "card.json").exists() else {}
        key = (card.get("seed"), json.dumps(card.get("input_hw")), json.dumps(card.get("volume_shape")))
        if card_params is None:
            card_params = (key, card)
        elif key != card_params[0]:
            raise DataError(f"{d} was made with different settings (seed, size or volume) than {dirs[0]}.",
                            "Merge only shards of the same make_dataset command.")
        for p in sorted((d / "samples").glob("*.npz")):
            other = chosen.get(p.name, out / "samples" / p.name)
            if other.exists() and not filecmp.cmp(p, other, shallow=False):
                raise DataError(f"Sample {p.name} differs between {other.parent.parent} and {d}.",
                                "Merge shards of one run only.")
            chosen.setdefault(p.name, p)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for name, p in chosen.items():
        dst = out / "samples" / name
        if dst.exists():
            continue
        try:
            os.link(p, dst)
        except OSError:
            shutil.copy2(p, dst)
    for d in dirs:
        if (d / "timings.jsonl").exists():
            with open(out / "timings.jsonl", "a") as f:
                f.write((d / "timings.jsonl").read_text())
    card = finalise(out)
    if card_params:
        merged = json.loads((out / "card.json").read_text())
        for k in ("parameters", "scene_config", "split", "command"):
            if k in card_params[1]:
                merged[k] = card_params[1][k]
        merged["merged_from"] = [str(d) for d in dirs]
        write_atomic(out / "card.json", json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return card


# ------------------------------------------------------------------------------------------- main

def main(argv=None):
    """The command; every expected failure is one line on stderr and its exit code (core.errors)."""
    from core.errors import run_command

    argv = list(_argv() if argv is None else argv)
    return run_command(lambda: _main(argv))


def _main(argv):
    from core.errors import ArgumentError

    os.environ.setdefault("ANNY_CACHE_DIR", os.path.expanduser("~/.cache/monohuman/anny"))
    if argv and argv[0] == "merge":
        if len(argv) < 3:
            raise ArgumentError("merge needs an output folder and at least one shard folder.",
                                "Usage: python -m train.make_dataset merge OUT DIR1 [DIR2 ...]")
        card = merge(argv[1], argv[2:])
        print(f"merged {card['count']} samples into {argv[1]}")
        return 0
    args = check_args(build_parser().parse_args(argv))
    if args.worker:
        _die_with_parent()
    out = Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    _clean_tmp(out)
    remember_settings(out, args)
    indices = _indices(args)
    if not args.worker:
        remove_broken(out, indices)
    progress = args.progress != "none"
    scan_problems = None
    if args.scans:  # report broken scans once, up front (workers skip them too)
        _, scan_problems = load_scans(args.scans) if args.workers > 1 else (None, None)
    if args.workers > 1:
        run_workers(args, argv, indices)
    else:
        run_here(args, indices, progress=progress)
    if not args.worker:
        if args.scans and scan_problems is None:
            _, scan_problems = load_scans(args.scans)
        card = finalise(out, args, scan_problems)
        print(f"{card['count']} samples in {out} ({card['counts_by_split']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
