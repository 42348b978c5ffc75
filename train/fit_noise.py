"""How wrong the fitted body is, as a noise model: what a body-guided network must learn to correct.

    python -m train.fit_noise --data DIR --limit 60 --out ~/.cache/monohuman/fit-noise.json

Per held-out sample the fit runs exactly as inference runs it (`train.evaluate_fit.fit_sample`: mediapipe on
the render, HumanMeshNet's initialiser, the staged fit); the truth is written in the same parameters
(`truth_params`: optimised against the true vertices in 3D; 8 mm PA surface error, IoU 0.86, the ceiling a
perfect fit would reach). The model (`NoiseModel`) is the median and a robust spread, over samples,
of:

* each fitted bone's rotation error (axis-angle of R_true^T R_fit, in the bone's own frame),
* the global rotation error (axis-angle of R_fit R_true^T about the camera-facing Anny axes: x right,
  y depth, z up: the yaw),
* the phenotype error, the body's size in the image (log of scale x rest height: a photo pins down that
  product, not height and scale apart) and the translation error (in metres of the body).

With `--swaps` it also says where the error is: the fit scored again with each group of its parameters (global
rotation, pose, phenotype, size in the image) replaced by the truth's (`with_truth`).

`perturb(params, noise, rng)` draws a body as wrong as the fit typically is; the check that the model is
right is that perturbed truths land as far from the truth (PA surface error) as the real fits do.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from core.body_model import FIT_BONES, PHENOTYPE_KEYS, load_body_model
from core.bodyfit import FitParams, pose_body, pose_from_body
from core.errors import DataError, NoPersonError, run_command
from core.files import write_atomic
from core.validate import Parser, number

NOISE_FORMAT = "monohuman-fit-noise"


@dataclass
class NoiseModel:
    """Per quantity, the typical error (median) and its spread (1.4826 x median absolute deviation: a few
    failed fits must not set the spread of all) of fit - truth over held-out samples; front/back flips
    (global error over 90 degrees) are counted apart, as a rate."""

    pose_mean: np.ndarray        # (len(FIT_BONES), 3) radians
    pose_std: np.ndarray
    global_mean: np.ndarray      # (3,) radians, camera-facing Anny axes
    global_std: np.ndarray
    phenotype_mean: np.ndarray   # (6,)
    phenotype_std: np.ndarray
    log_size_mean: float         # log of the body's size in the image (scale x rest height), fit / truth
    log_size_std: float
    translation_std_m: np.ndarray  # (2,) metres of the body, image x and y
    flip_rate: float = 0.0       # share of fits facing the wrong way
    samples: int = 0

    SCALARS = ("log_size_mean", "log_size_std", "flip_rate", "samples")

    def to_json(self) -> dict:
        doc = {"format": NOISE_FORMAT, "format_version": 1, "bones": list(FIT_BONES),
               "phenotype_keys": list(PHENOTYPE_KEYS)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            doc[f.name] = np.asarray(value).round(5).tolist() if np.ndim(value) else round(float(value), 5)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "NoiseModel":
        if doc.get("format") != NOISE_FORMAT or doc.get("bones") != list(FIT_BONES):
            raise DataError("Not a fit noise model for this body model.", "Measure it with `python -m train.fit_noise`.")
        values = {f.name: float(doc[f.name]) if f.name in cls.SCALARS else np.asarray(doc[f.name], float)
                  for f in dataclasses.fields(cls)}
        return cls(**{**values, "samples": int(values["samples"])})


@lru_cache(maxsize=2)
def _spread_vertices(body, count: int = 1500) -> np.ndarray:
    """`count` vertices spread over the rest body (farthest-point sampling: 2 s, so once per body model)."""
    from core.template import farthest_point_sample

    return np.sort(farthest_point_sample(np.asarray(body.template.rest_vertices, float), count))


def truth_params(sample: dict, body=None, steps: int = 150) -> FitParams:
    """The sample's true body in the fit's parameters: the best those parameters can do. Start: the pose and
    orientation of `pose_from_body`, the card's phenotype, the least-squares camera; then Adam on everything
    against the true vertices in 3D (a farthest-point subset), the depth offset free (the fit's camera puts the
    root at depth D/2; every figure here is depth-aligned)."""
    from core.bodyfit import ANNY_TO_VOX
    from core.body_model import rotvec_to_matrix

    body = body or load_body_model()
    phen = sample["meta"]["body"]["phenotype"]
    phenotype = np.clip(np.array([phen[k] for k in PHENOTYPE_KEYS], float), 1e-3, 1 - 1e-3)
    pose, rotation = pose_from_body(sample["vertices_vox"], body)
    target = np.asarray(sample["vertices_vox"], float)
    index = _spread_vertices(body)
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    v = {"logit": t(np.log(phenotype / (1 - phenotype))), "pose": t(pose), "global": t(rotation),
         "log_scale": t(0.0), "shift": t(np.zeros(3))}
    goal = torch.as_tensor(target[index])

    def placed():
        rv, rh = body.rest(torch.sigmoid(v["logit"]), index)
        posed = body.pose(rv, rh, v["pose"], index)
        cam = (ANNY_TO_VOX @ rotvec_to_matrix(v["global"]) @ (posed.vertices - rh[0]).T).T
        return cam, rh[0]

    with torch.no_grad():  # the least-squares camera of the starting body
        cam, _ = placed()
        c, g = cam - cam.mean(0), goal - goal.mean(0)
        v["log_scale"].fill_(float(torch.log((c * g).sum() / (c ** 2).sum())))
        v["shift"].copy_(goal.mean(0) - torch.exp(v["log_scale"]) * cam.mean(0))
    opt = torch.optim.Adam(list(v.values()), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        cam, _ = placed()
        loss = ((torch.exp(v["log_scale"]) * cam + v["shift"] - goal) ** 2).sum(1).mean() / float(goal.var(0).sum())
        loss.backward()
        opt.step()
    scale = float(torch.exp(v["log_scale"].detach()))
    return FitParams(1 / (1 + np.exp(-v["logit"].detach().numpy())), v["pose"].detach().numpy().copy(),
                     v["global"].detach().numpy().copy(), scale, v["shift"].detach().numpy()[:2].copy())


def rest_height(phenotype: np.ndarray, body=None) -> float:
    body = body or load_body_model()
    with torch.no_grad():
        rest, _ = body.rest(torch.as_tensor(np.asarray(phenotype, np.float64)))
    return float(np.ptp(rest[:, 2].numpy()))


def parameter_errors(fit: FitParams, truth: FitParams, body=None) -> dict:
    """fit - truth, per quantity (rotations as axis-angles of the relative rotation). Size, not scale: a
    photo cannot tell a tall person far away from a short one near by, so the fit trades phenotype height
    against scale; what the image pins down is their product."""
    bones = Rotation.from_rotvec(truth.pose).inv() * Rotation.from_rotvec(fit.pose)
    glob = Rotation.from_rotvec(fit.global_rotation) * Rotation.from_rotvec(truth.global_rotation).inv()
    size = fit.scale * rest_height(fit.phenotype, body) / (truth.scale * rest_height(truth.phenotype, body))
    return {"pose": bones.as_rotvec(), "global": glob.as_rotvec(), "phenotype": fit.phenotype - truth.phenotype,
            "log_size": float(np.log(size)), "translation_m": (fit.translation - truth.translation) / truth.scale,
            "flipped": float(glob.magnitude() > np.pi / 2)}


def noise_model(errors: list[dict]) -> NoiseModel:
    if not errors:
        raise DataError("No sample could be fitted, so there is no noise to measure.",
                        "Check that the data's renders show people (train.make_dataset's preview.png).")
    stack = {k: np.stack([np.asarray(e[k], float) for e in errors]) for k in errors[0]}
    upright = stack["flipped"] < 0.5
    stack["global"] = stack["global"][upright] if upright.any() else stack["global"]

    def centre(k):
        return np.median(stack[k], 0)

    def spread(k):
        return 1.4826 * np.median(np.abs(stack[k] - centre(k)), 0)

    return NoiseModel(centre("pose"), spread("pose"), centre("global"), spread("global"), centre("phenotype"),
                      spread("phenotype"), float(centre("log_size")), float(spread("log_size")),
                      spread("translation_m"), flip_rate=float(1 - upright.mean()), samples=len(errors))


def perturb(params: FitParams, noise: NoiseModel, rng: np.random.Generator, body=None, amount: float = 1.0) -> FitParams:
    """A parameter set as wrong as the fit typically is: Gaussian draws with the measured centre and spread,
    turned to face the other way at the measured flip rate, its size in the image kept within the measured
    error whatever the drawn phenotype's height. `amount` scales all of it (0: the truth itself)."""
    draw = lambda mean, std: amount * (mean + std * rng.standard_normal(np.shape(std)))  # noqa: E731
    pose = (Rotation.from_rotvec(params.pose) * Rotation.from_rotvec(draw(noise.pose_mean, noise.pose_std))).as_rotvec()
    glob = Rotation.from_rotvec(draw(noise.global_mean, noise.global_std)) * Rotation.from_rotvec(params.global_rotation)
    if rng.random() < noise.flip_rate * amount:
        glob = Rotation.from_euler("z", np.pi) * glob
    phenotype = np.clip(params.phenotype + draw(noise.phenotype_mean, noise.phenotype_std), 0.0, 1.0)
    size = float(np.exp(draw(noise.log_size_mean, noise.log_size_std)))
    scale = params.scale * size * rest_height(params.phenotype, body) / rest_height(phenotype, body)
    translation = params.translation + params.scale * draw(np.zeros(2), noise.translation_std_m)
    return FitParams(phenotype, pose, glob.as_rotvec(), scale, translation)


# Where the fit's error is (`--swaps`): the fit with one group of its parameters replaced by the truth's. A true
# phenotype comes with the scale that keeps the fit's size in the image (what the photo pins down); "size" is the
# true size with the fit's phenotype.
SWAPS = ("global", "pose", "phenotype", "size", "phenotype+size", "pose+global", "arms", "wrists", "legs", "trunk")
# Parts of the pose (FIT_BONES by name prefix) a swap can take alone: which limbs the pose error is in.
POSE_PARTS = {"arms": ("upperarm", "lowerarm", "wrist"), "wrists": ("wrist",), "legs": ("upperleg", "lowerleg", "foot"),
              "trunk": ("spine", "neck", "head")}


def with_truth(fit: FitParams, truth: FitParams, what: str, body=None) -> FitParams:
    """`fit` with the groups named in `what` (joined by "+", from SWAPS) taken from `truth`."""
    out, groups = fit, set(what.split("+"))
    if "global" in groups:
        out = dataclasses.replace(out, global_rotation=truth.global_rotation)
    if "pose" in groups:
        out = dataclasses.replace(out, pose=truth.pose)
    for part in groups & set(POSE_PARTS):
        take = np.array([b.startswith(POSE_PARTS[part]) for b in FIT_BONES])
        out = dataclasses.replace(out, pose=np.where(take[:, None], truth.pose, out.pose))
    if groups & {"phenotype", "size"}:
        size = (truth.scale * rest_height(truth.phenotype, body) if "size" in groups
                else fit.scale * rest_height(fit.phenotype, body))
        phenotype = truth.phenotype if "phenotype" in groups else fit.phenotype
        out = dataclasses.replace(out, phenotype=phenotype, scale=size / rest_height(phenotype, body))
    return out


def centred_errors(vertices: np.ndarray, sample: dict) -> dict:
    """Mean vertex error (mm) with both bodies centred but not rotated or scaled, split into the image plane
    and depth: how much of the error the photo could have shown."""
    mm = 1000.0 / float(sample["meta"]["px_per_metre"])
    v, t = np.asarray(vertices, float), np.asarray(sample["vertices_vox"], float)
    d = (v - v.mean(0)) - (t - t.mean(0))
    return {"image": float(np.linalg.norm(d[:, :2], axis=1).mean() * mm), "depth": float(np.abs(d[:, 2]).mean() * mm)}


def measure(data_dirs, limit: int = 60, split: str = "test", seed: int = 0, swaps: bool = False) -> dict:
    """Fit `limit` held-out samples; the noise model, where the fits' errors are (per part, image plane against
    depth), and the PA surface error (mm) of the real fits beside
    that of perturbed truths drawn from the model (the model's check), and the ceiling: the errors of the truth
    itself written in the fit's parameters (what a perfect fit would score)."""
    from core.checkpoint import load_model
    from train.dataset import read_manifest
    from train.evaluate_fit import fit_sample, sample_errors
    from train.samples import read_sample
    from tqdm import tqdm

    body = load_body_model()
    initialiser = load_model("hmnet-default", device="cpu")
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    rows = [r for d in dirs for r in read_manifest(d) if r.get("split") == split][:limit]
    errors, truths, fit_mm, ceiling, parts, centred = [], [], [], [], [], []
    swapped = {w: [] for w in ("none", *SWAPS)} if swaps else {}
    for row in tqdm(rows, desc="fit noise", file=sys.stderr):
        sample = read_sample(row["path"])
        try:
            fitted = fit_sample(sample, "fit", initialiser, torch.device("cpu"))["fitted"]
        except NoPersonError:
            continue
        truth = truth_params(sample, body)
        errors.append(parameter_errors(fitted.params, truth, body))
        truths.append((sample, truth))
        got = sample_errors(sample, fitted.vertices)
        fit_mm.append(got["pa_surface_mm"])
        parts.append(got["pa_part_mm"])
        centred.append(centred_errors(fitted.vertices, sample))
        ceiling.append(sample_errors(sample, pose_body(truth, fitted.volume_shape, body).vertices))
        for what in swapped:
            scored = got if what == "none" else sample_errors(
                sample, pose_body(with_truth(fitted.params, truth, what, body), fitted.volume_shape, body).vertices)
            swapped[what].append((scored["pa_surface_mm"], scored["iou"]))
    model = noise_model(errors)
    rng = np.random.default_rng(seed)
    drawn_mm = [sample_errors(s, pose_body(perturb(t, model, rng, body), tuple(int(x) for x in s["volume_shape"]),
                                           body).vertices)["pa_surface_mm"] for s, t in truths]
    return {"noise": model.to_json(), "errors": [{k: np.asarray(x).round(5).tolist() for k, x in e.items()}
                                                 for e in errors], "fit_pa_surface_mm": float(np.mean(fit_mm)),
            "perturbed_truth_pa_surface_mm": float(np.mean(drawn_mm)), "samples": len(errors),
            "ceiling": {k: float(np.mean([c[k] for c in ceiling])) for k in ("pa_surface_mm", "pa_joint_mm", "iou")},
            "fit_pa_part_mm": {k: float(np.mean([p[k] for p in parts])) for k in parts[0]},
            "fit_centred_mm": {k: float(np.mean([c[k] for c in centred])) for k in centred[0]},
            **({"swaps": {w: dict(zip(("pa_surface_mm", "iou"), np.mean(v, 0).round(4).tolist()))
                          for w, v in swapped.items()}} if swaps else {})}


def main(argv=None) -> int:
    parser = Parser(prog="python -m train.fit_noise", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders with a held-out split")
    parser.add_argument("--limit", type=int, default=60, help="held-out samples to fit (default 60)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="where the noise model JSON goes")
    parser.add_argument("--swaps", action="store_true",
                        help="also score the fit with each group of its parameters replaced by the truth's")
    args = parser.parse_args(argv)

    def run() -> int:
        number("--limit", args.limit, integer=True, lo=1)
        out = measure(args.data, args.limit, args.split, swaps=args.swaps)
        write_atomic(Path(args.out), json.dumps(out, indent=1))
        g = np.degrees(out["noise"]["global_std"])
        print(f"{out['samples']} fits: global rotation error std {g.round(1).tolist()} deg (about the camera-facing x right, y depth, z up); "
              f"PA surface {out['fit_pa_surface_mm']:.1f} mm for the fits, "
              f"{out['perturbed_truth_pa_surface_mm']:.1f} mm for truths perturbed by the model; ceiling (the truth in "
              f"the fit's parameters) PA {out['ceiling']['pa_surface_mm']:.1f} mm, IoU {out['ceiling']['iou']:.3f}")
        for what, got in out.get("swaps", {}).items():
            label = "the fit as it is" if what == "none" else f"the fit with the true {what}"
            print(f"  {label:38s} PA surface {got['pa_surface_mm']:6.1f} mm  IoU {got['iou']:.3f}")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
