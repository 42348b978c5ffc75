"""Held-out evaluation of the fitted body (`--method fit`), beside HumanMeshNet in `train.evaluate_mesh`:

    python -m train.evaluate_mesh --data DIR --model fit hmnet-default fit-no-silhouette ... --json out.json

Per sample, what inference has: the render (the sample's crop, upscaled 4x as a photo would be) goes through
mediapipe (33 landmarks, world landmarks, mask); HumanMeshNet's prediction on the crop initialises the fit;
the fit runs in the sample's own volume frame. Figures: the HumanMeshNet paper's vertex and joint errors
(with and without Procrustes alignment, `train.metrics_mesh`), and `iou`: the fitted body voxelised in the
sample's volume frame against the true body's volume, both aligned by their centroid and pooled to
`IOU_SHAPE` with `train.dataset.target_volume` (the same rule as `train.evaluate`).

Ablations (model names): `fit` (everything), `fit-no-silhouette`, `fit-no-directions` (no bone directions at
all), `fit-no-lifter` (mediapipe's world landmarks' directions only, no pose lifter), `fit-no-world` (the
lifter's only), `fit-no-pose-prior` (no mixture prior and joint limits), `fit-no-elevation` (no prior on the
camera's elevation), `fit-no-shape` (phenotype kept at the mean), `fit-rest-init` (start from Anny's rest pose
instead of HumanMeshNet). `fit-truth-start` is an analysis, not a result: it starts from the sample's true pose
and orientation (`train.fit_noise.truth_params`), so it says where the evidence's own minimum lies, apart from the
search that has to find it. `fit-refit-5` and `fit-refit-10` measure the add-on's "Refit to Photo": the true pose
with every bone turned by a random 5 or 10 degrees (per axis, seeded by the sample) and the orientation by 3 stands
in for a pose an animator corrected by hand, and the fit starts there with the pull `core.bodyfit.KEEP_POSE`;
`fit-refit-5-as-is` / `fit-refit-10-as-is` measure that start unfitted (the animator's pose without the refit).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from core.bodyfit import (KEEP_POSE, PRIOR_WEIGHTS, STAGES, evidence_from_detection, fit_body, initial_params,
                          pose_from_body)
from core.errors import NoPersonError
from train.dataset import read_manifest
from train.detections import detect_render
from train.samples import read_sample

IOU_SHAPE = (64, 64, 64)
ABLATIONS = ("fit", "fit-no-silhouette", "fit-no-directions", "fit-no-lifter", "fit-no-world", "fit-no-pose-prior",
             "fit-no-elevation", "fit-no-shape", "fit-rest-init", "fit-truth-start",
             "fit-refit-5", "fit-refit-10", "fit-refit-5-as-is", "fit-refit-10-as-is")
STARTS = {"fit-rest-init": "rest", "fit-truth-start": "truth",  # the others start from HumanMeshNet ("network")
          **{name: "animator" for name in ABLATIONS if name.startswith("fit-refit-")}}
GLOBAL_TURN_DEG = 3.0  # an animator's start: the orientation's error (the bones' is in the model name)


def is_fit_model(name) -> bool:
    return str(name) in ABLATIONS


class Variant(NamedTuple):
    stages: tuple
    priors: dict
    start: str  # where the pose starts: "network" (HumanMeshNet's body), "rest" (Anny's), "truth" (analysis) or
    #             "animator" (the truth turned by `turn_deg` a bone: a refit from a pose corrected by hand)
    lifter: bool  # the pose lifter's directions
    world: bool  # mediapipe's world landmarks' directions
    turn_deg: float = 0.0  # "animator": the bones' random turn away from the truth
    refine: bool = True  # False: the start as it is, unfitted


def variant(name: str) -> Variant:
    """What an ablation changes in the fit."""
    stages, priors = list(STAGES), dict(PRIOR_WEIGHTS)

    def without(term):
        return [dataclasses.replace(s, weights={**s.weights, term: 0.0}) for s in stages]

    if name == "fit-no-silhouette":
        stages = without("silhouette")
    elif name == "fit-no-directions":
        stages = without("directions")
    elif name == "fit-no-pose-prior":
        priors.update(pose_prior=0.0, limits=0.0)
    elif name == "fit-no-elevation":
        priors.update(elevation=0.0)
    elif name == "fit-no-shape":
        stages = [s for s in stages if "shape" not in s.free]
    elif name.startswith("fit-refit-"):
        priors.update(init=KEEP_POSE)
    turn = float(name.removeprefix("fit-refit-").removesuffix("-as-is")) if name.startswith("fit-refit-") else 0.0
    return Variant(tuple(stages), priors, STARTS.get(name, "network"), name != "fit-no-lifter", name != "fit-no-world",
                   turn, not name.endswith("-as-is"))


def animator_pose(truth, turn_deg: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The true pose and orientation, each bone turned by a random rotation (per axis N(0, turn_deg)) and the
    orientation by GLOBAL_TURN_DEG: a pose an animator set by eye, near the truth but not on it."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    turn = lambda rotvecs, deg: (Rotation.from_rotvec(rng.normal(0.0, np.radians(deg), np.shape(rotvecs)))  # noqa: E731
                                 * Rotation.from_rotvec(rotvecs)).as_rotvec()
    return turn(truth.pose, turn_deg), turn(truth.global_rotation, GLOBAL_TURN_DEG)


def fit_sample(sample: dict, name: str, initialiser, device) -> dict:
    """The fitted body of one sample in its volume frame, or a reason it could not be fitted."""
    import cv2

    from core.reconstruct import predict_body

    shape = tuple(int(v) for v in sample["volume_shape"])
    det, box = detect_render(sample)
    h_in, w_in = sample["rgb"].shape[:2]
    how = variant(name)
    ev = evidence_from_detection(det, box, shape, lifted=how.lifter)
    if not how.world:
        ev.world = None
    start = None
    if how.start in ("truth", "animator"):
        import zlib

        from train.fit_noise import truth_params

        truth = truth_params(sample)
        pose, rotation = truth.pose, truth.global_rotation
        if how.start == "animator":
            pose, rotation = animator_pose(truth, how.turn_deg, zlib.crc32(np.ascontiguousarray(sample["joints_vox"])))
        start = initial_params(ev, pose=pose, global_rotation=rotation)
    elif how.start == "network":
        h_net, w_net = (int(x) for x in initialiser.config.input_size)  # the render at the network's size
        crop = sample["rgb"] if (h_in, w_in) == (h_net, w_net) else cv2.resize(
            sample["rgb"], (w_net, h_net), interpolation=cv2.INTER_CUBIC)
        mask = cv2.resize(det.mask, (w_net, h_net), interpolation=cv2.INTER_AREA)
        lm16 = box.to_crop(det.landmarks16, (h_net, w_net))
        lm16 = np.concatenate([lm16, det.landmarks16[:, 2:]], 1) if lm16.shape[1] == 2 else lm16
        verts, _ = predict_body(initialiser, crop, mask, lm16, device)
        pose, rotation = pose_from_body(verts)
        start = initial_params(ev, pose=pose, global_rotation=rotation)
    t = time.perf_counter()
    fitted = fit_body(ev, init=start, stages=how.stages, priors=how.priors, refine=how.refine)
    return {"fitted": fitted, "seconds": time.perf_counter() - t}


def volume_agreement(sample: dict, vertices: np.ndarray) -> float:
    """IoU of an Anny-topology body (volume frame) voxelised against the sample's volume, both aligned by
    their centroid and pooled to IOU_SHAPE (`train.dataset.target_volume`)."""
    from core.template import load_template
    from train.dataset import target_volume
    from train.metrics import volume_iou
    from train.voxelise import voxelise

    shape = tuple(int(x) for x in sample["volume_shape"])
    pred = voxelise(vertices, load_template().faces, shape)
    return float(volume_iou(target_volume(pred, IOU_SHAPE, "centroid"),
                            target_volume(sample["volume"], IOU_SHAPE, "centroid")))


def sample_errors(sample: dict, vertices: np.ndarray) -> dict:
    """Vertex/joint errors (mm, with and without Procrustes) and the centroid-aligned volume IoU."""
    from core.template import load_template
    from train.metrics_mesh import mesh_errors

    template = load_template()
    reg = template.regressor("full").double()
    v = torch.as_tensor(vertices, dtype=torch.float64)
    gt = torch.as_tensor(sample["vertices_vox"], dtype=torch.float64)
    mm = 1000.0 / float(sample["meta"]["px_per_metre"])
    out = mesh_errors(v, gt, reg @ v, torch.as_tensor(sample["joints_vox"], dtype=torch.float64), mm)
    out["iou"] = volume_agreement(sample, vertices)
    out["pa_part_mm"] = part_errors(vertices, sample["vertices_vox"], mm)
    return out


def part_errors(vertices: np.ndarray, truth: np.ndarray, mm: float) -> dict:
    """PA surface error (mm) per body part: head, hands and feet are 74 % of Anny's vertices, so the mean
    over vertices is mostly theirs; this says which part the error is in."""
    from core.parts import PART_NAMES
    from train.bodies import topology
    from train.metrics_mesh import procrustes_align

    truth = np.asarray(truth, np.float64)
    err = np.linalg.norm(procrustes_align(np.asarray(vertices, np.float64), truth) - truth, axis=1) * mm
    parts = topology().parts
    return {PART_NAMES[p]: float(err[parts == p].mean()) for p in np.unique(parts)}


def evaluate_fit(name: str, data_dirs, split: str = "test", limit: int = 0, device: str = "auto",
                 initialiser: str = "hmnet-default") -> dict:
    from core.checkpoint import load_model
    from core.reconstruct import pick_device

    torch_device = pick_device(device)
    loaded = load_model(initialiser, device=str(torch_device))
    dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
    rows_in = [r for d in dirs for r in read_manifest(d) if split is None or r.get("split") == split]
    rows_in = rows_in[: limit or None]
    rows, failed = [], []
    for row in tqdm(rows_in, desc=f"evaluate {name}", file=sys.stderr):
        sample = read_sample(row["path"])
        try:
            got = fit_sample(sample, name, loaded, torch_device)
        except NoPersonError:
            failed.append(row["file"])
            continue
        rows.append({"file": row["file"], "seconds": got["seconds"], **sample_errors(sample, got["fitted"].vertices)})
    from train.evaluate_mesh import KEYS

    start = variant(name).start
    out = {"model": name, "variant": f"fit from {initialiser if start == 'network' else start}"
                                     + (f" (keep pose {KEEP_POSE})" if start == "animator" else "")
                                     + ("" if variant(name).refine else ", unfitted"),
           "samples": len(rows), "split": split, "no_person": failed}
    for k in (*KEYS, "iou", "seconds"):
        vals = [r[k] for r in rows]
        out[f"{k}_mean"] = float(np.mean(vals)) if vals else float("nan")
        out[f"{k}_median"] = float(np.median(vals)) if vals else float("nan")
    out["pa_part_mm_mean"] = {k: float(np.mean([r["pa_part_mm"][k] for r in rows])) for k in
                              (rows[0]["pa_part_mm"] if rows else {})}
    out["per_sample"] = rows
    return out


def evaluate_fit_photos(count: int = 8, seed: int = 1000, size: int = 384, device: str = "auto",
                        initialiser: str = "hmnet-default") -> dict:
    """The fit on photo-like renders (full frame, room background, train.render_photo's scene): how far its 16
    joints land from the true ones in the photo (pixels, and in % of the person's height), and its front
    silhouette against the true and the detected person mask (both cut to the fit's crop frame)."""
    import tempfile
    from pathlib import Path

    from core.checkpoint import load_model
    from core.crop import crop_image
    from core.detect import detect_person
    from core.landmarks import mpii16_from_coco17
    from core.reconstruct import fit_person, pick_device
    from core.template import load_template
    from train.metrics import silhouette_iou
    from train.render import render_person_photo
    from train.voxelise import voxelise

    torch_device = pick_device(device)
    loaded = load_model(initialiser, device=str(torch_device))
    from core.body_model import load_body_model

    body = load_body_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in tqdm(range(count), desc="photos", file=sys.stderr):
            truth = render_person_photo(Path(tmp) / f"photo{i}.png", size=size, seed=seed + i, samples=16)
            det = detect_person(truth["rgb"])
            fitted, box, shape = fit_person(truth["rgb"], det, loaded, torch_device)
            _, h, w = shape
            coco = (body.coco_weight.numpy()[:, :, None] * fitted.vertices[body.coco_index.numpy()]).sum(1)
            joints = box.to_source(mpii16_from_coco17(coco[:, :2])[:, :2], (h, w))
            ys = np.nonzero(truth["mask"].any(1))[0]
            err = np.linalg.norm(joints - truth["landmarks16"][:, :2], axis=1)
            front = voxelise(fitted.vertices, load_template().faces, shape).any(axis=0)
            true_mask = crop_image(truth["mask"].astype(np.float32), box, (h, w)) > 0.5
            detected = crop_image(det.mask, box, (h, w)) > 0.5
            rows.append({"seed": seed + i, "joint_px": float(err.mean()),
                         "joint_pct_height": float(100 * err.mean() / max(np.ptp(ys), 1)),
                         "vs_true_mask": silhouette_iou(front[None], true_mask),
                         "vs_detected_mask": silhouette_iou(front[None], detected)})
    out = {"model": "fit", "photos": count, "size": size, "first_seed": seed, "per_photo": rows}
    for k in ("joint_px", "joint_pct_height", "vs_true_mask", "vs_detected_mask"):
        out[f"{k}_mean"] = float(np.mean([r[k] for r in rows]))
    return out
