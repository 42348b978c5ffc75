"""The fitted body: Anny's pose, phenotype and a camera optimised until the body agrees with what the
detector saw in the photo (SMPLify / SPIN's idea, for Anny, with priors built by this project).

Evidence (`Evidence`, all in the volume frame of the crop, see docs/ARCHITECTURE.md): mediapipe's 33 pose
landmarks (x, y, visibility), its metric world landmarks and the pose lifter's 3D landmarks
(`core.networks.lifter`; bone directions only from both, so scale and placement do not matter), and the
person mask. The camera is orthographic (the volume frame's own projection):
``vox = scale * A (R_global (v - root)) + (tx, ty, D/2)`` with A the Anny -> volume axis change.

Energy (`loss_terms`), each term normalised so weights are comparable:

* ``keypoints``: Geman-McClure robust 2D distance (in crop heights) of the corresponding Anny points
  (`core.correspondence`), weighted by visibility and the correspondence's weight;
* ``directions``: 1 - cosine between the body's bone directions and those of the world landmarks and of the
  lifted ones, weighted `DIRECTION_SOURCES`;
* ``silhouette``: both ways with a distance transform: body points outside the mask (their distance to it)
  and mask pixels far from every body point;
* priors: the pose mixture (-log density, best component), joint limits, anny's phenotype distribution
  (whose mean is also where the phenotype starts), the camera's elevation (photos look slightly down at
  people) and a weak pull towards the initialiser.

Schedule (`STAGES`): camera and global orientation, then body pose, then shape with everything, then the
phenotype alone against a heavier silhouette; Adam, each stage stopping early when the energy stops falling.
Front/back: when the shoulders are close in 2D both orientations are fitted through the pose stage and the
lower energy wins.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from core.body_model import FIT_BONES, PHENOTYPE_KEYS, BodyModel, load_body_model, rotvec_to_matrix
from core.correspondence import DIRECTION_PAIRS, REGION_BONES, REGIONS, TORSO
from core.errors import InputError, MonohumanError
from core.frame import VOX_TO_METRIC_AXES

ANNY_TO_VOX = torch.as_tensor(VOX_TO_METRIC_AXES.T.copy())
SILHOUETTE_POINTS = 600  # body vertices projected for the silhouette terms
MASK_POINTS = 400        # mask pixels that must be near the body
# Geman-McClure scale of the keypoint residuals, in crop heights (a crop is about 2 m of the scene). At 0.03,
# the first choice, a landmark 6 cm away pulled a quarter as hard as a quadratic would (12 cm: 1/25). 0.06, on
# all 200 held-out renders: PA surface 74.3 -> 71.4 mm at 128 px, 69.7 -> 66.3 at 512 px (0.015, 0.10 and 0.20
# were worse on the first 48; docs/RESULTS.md).
GM_SIGMA = 0.06
VISIBLE = 0.5            # landmarks below this visibility count as guessed
PARAMS_FORMAT = "monohuman-fit-params"
# Where cameras stand: a photo of a standing person is taken from about eye height, so it looks slightly down
# at the body's centre (the project's renders: elevation uniform in -10..25 degrees, train.scene). An
# orthographic camera barely sees its own elevation, and without this prior the fits came out 5 degrees too level.
CAMERA_ELEVATION_DEG = (7.5, 10.0)  # mean, standard deviation
# How much each source of bone directions counts. On the first 24 held-out renders, PA surface error with the
# lifter's weight 1 and mediapipe's 0 / 0.25 / 0.5 / 1: 64.2 / 64.5 / 65.9 / 66.2 mm (mediapipe's alone: 75.2).
# Those renders' poses come from the sampler the lifter learned from, so mediapipe's own directions keep a
# small weight as a second opinion for poses a real photo shows and the sampler never draws.
DIRECTION_SOURCES = {"world": 0.25, "lifted": 1.0}
HALF_BODY_ELEVATION = 0.1  # the elevation prior's weight when neither hip shows (`half_body_priors`)
LIFTER_MODEL = "pose-lifter"


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    lr: float
    free: tuple  # which parameter groups move
    weights: dict


# Weights chosen on the first 16 held-out renders (train.evaluate_fit; docs/RESULTS.md): the world-landmark
# directions matter most (PA surface 102 -> 87 mm going from 0.3 to 1.0), the silhouette term costs pose
# accuracy on 128 px renders, so it only weighs in once the shape moves. The last stage steps gently (0.02:
# at 0.05 it undid the pose stage's work, 0.15 cost 15 mm; first 24 renders) and the camera's elevation
# prior weighs 0.01 (0.03 was worse); both measured on the first 24 held-out renders. With the pose lifter's
# directions the directions weigh twice what they did (PA surface 64.5 -> 63.3 mm on those 24; four times: 63.8).
# The fitted bodies came out thin and small (front silhouette 0.85 of the true one's area, first 24 renders), and a
# heavier silhouette in the shape stage bent the pose to fill the mask (weight 3: IoU 0.464 -> 0.476, PA 62.4 ->
# 65.8 mm). The last stage ("girth") lets only the phenotype follow the silhouette: IoU 0.481, PA 62.2 (20 steps
# at 0.06 as good as 60 at 0.02, for 0.3 s instead of 1 s).
STAGES = (
    Stage("camera", 60, 0.05, ("camera", "global"),
          dict(keypoints=1.0, torso_only=1.0, directions=1.0, silhouette=0.0)),
    Stage("pose", 120, 0.03, ("camera", "global", "pose"),
          dict(keypoints=1.0, directions=2.0, silhouette=0.0)),
    Stage("shape", 80, 0.02, ("camera", "global", "pose", "shape"),
          dict(keypoints=1.0, directions=2.0, silhouette=0.3, shape=1.0)),
    Stage("girth", 20, 0.06, ("shape",),
          dict(keypoints=1.0, directions=2.0, silhouette=2.0, shape=1.0)),
)
PRIOR_WEIGHTS = dict(pose_prior=2e-3, limits=1.0, shape_prior=2e-3, init=2e-4, held=1.0, elevation=0.01)
# The "init" weight of a refit from a pose an animator corrected by hand: the photo settles what it shows, the pose
# what it cannot (depth). Chosen on held-out renders whose true pose, turned 5 or 10 degrees a bone, stood in for the
# animator's: within 2.2 mm of the best weight at either (docs/RESULTS.md, "Refit from an animator's pose").
KEEP_POSE = 0.5


@dataclass
class Evidence:
    """What the photo says, in the volume frame of the crop (x right, y down, pixels of the H x W volume)."""

    points: np.ndarray        # (33, 2) mediapipe landmarks
    visibility: np.ndarray    # (33,)
    world: np.ndarray | None  # (33, 3) mediapipe world landmarks (metres, x right, y down, z away) or None
    mask: np.ndarray          # (H, W) person probability
    volume_shape: tuple       # (D, H, W)
    in_photo: np.ndarray | None = None  # (H, W) 1 where the crop shows the photo, 0 beyond its borders
    lifted: np.ndarray | None = None    # (33, 3) the lifter's landmarks (x, y as `points`, z away; NaN: none)

    def guessed(self) -> list[str]:
        """Body regions the photo does not show (every landmark of the region below VISIBLE)."""
        vis = np.nan_to_num(self.visibility)
        return [name for name, idx in REGIONS.items() if (vis[list(idx)] < VISIBLE).all()]


@dataclass
class FitParams:
    """Everything that defines a fitted body (written as JSON beside the mesh, read back by --init)."""

    phenotype: np.ndarray                  # (6,) PHENOTYPE_KEYS, in [0, 1]
    pose: np.ndarray                       # (len(FIT_BONES), 3) local-ref axis-angles, radians
    global_rotation: np.ndarray            # (3,) axis-angle, Anny frame -> camera-facing volume axes
    scale: float                           # volume pixels per Anny metre
    translation: np.ndarray                # (2,) tx, ty in volume pixels

    def to_json(self) -> dict:
        return {"format": PARAMS_FORMAT, "format_version": 1,
                "phenotype": {k: float(v) for k, v in zip(PHENOTYPE_KEYS, self.phenotype)},
                "pose": {b: [float(x) for x in r] for b, r in zip(FIT_BONES, self.pose)},
                "camera": {"global_rotation": [float(x) for x in self.global_rotation], "scale": float(self.scale),
                           "translation": [float(x) for x in self.translation]}}

    @classmethod
    def from_json(cls, doc: dict) -> "FitParams":
        try:
            if doc.get("format") != PARAMS_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {PARAMS_FORMAT!r}")
            ph = np.array([float(doc["phenotype"].get(k, 0.5)) for k in PHENOTYPE_KEYS])
            pose = np.array([[float(x) for x in doc["pose"].get(b, (0, 0, 0))] for b in FIT_BONES])
            cam = doc["camera"]
            out = cls(ph, pose, np.array(cam["global_rotation"], float), float(cam["scale"]),
                      np.array(cam["translation"], float))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"The fit parameters are not readable ({e}).",
                                 "Give a file written by `--method fit` (NAME.fit.json), or fix the field named.")
        if out.pose.shape != (len(FIT_BONES), 3) or out.global_rotation.shape != (3,) or out.translation.shape != (2,):
            raise InputError("The fit parameters have the wrong sizes.", "Give a file written by `--method fit`.")
        if not (np.all(np.isfinite(out.pose)) and np.isfinite(out.scale) and out.scale > 0):
            raise InputError("The fit parameters hold non-finite numbers or a scale <= 0.",
                                 "Give a file written by `--method fit`.")
        return out


def read_params(path) -> FitParams:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"Fit parameters {path} not found.", "Check the path given to --init.") from None
    except (OSError, ValueError) as e:
        raise InputError(f"Fit parameters {path} cannot be read ({e}).", "Give a JSON file written by "
                             "`--method fit`.") from None
    return FitParams.from_json(doc)


def params_from_armature_pose(params: FitParams, names, parents, pose) -> FitParams:
    """`params` with the bone rotations and the global orientation an armature shows: `pose` (J, 4, 4) moves each
    bone from rest to posed in the armature's frame (`Rig.pose`, what the add-on reads back from a rig an animator
    has re-posed). Each fitted bone's local-ref rotation is its turn relative to its nearest fitted ancestor (or
    the root, which carries the camera's global rotation: the metric frame's axes are the fit's camera-facing
    ones). Scale and placement in the matrices do not matter; bones the fit does not move (fingers) are ignored."""
    from scipy.spatial.transform import Rotation

    try:
        names = [str(n) for n in names]
        parents = np.asarray(parents, np.int64).reshape(-1)
        pose = np.asarray(pose, np.float64)
    except (TypeError, ValueError):
        pose = None
    if pose is None or pose.shape != (len(names), 4, 4) or len(parents) != len(names) or not np.isfinite(pose).all():
        raise InputError("The armature's pose does not match its bones.",
                         "Re-import the fitted body and pose it again.")
    roots = np.flatnonzero(parents < 0)
    missing = [b for b in FIT_BONES if b not in names]
    if len(roots) != 1 or missing:
        why = f"bones missing: {', '.join(missing)}" if missing else "not one root"
        raise InputError(f"The armature is not a fitted Anny rig ({why}).",
                         "Refit from an armature made by the fitted body method.")
    u, _, vt = np.linalg.svd(pose[:, :3, :3])  # each bone's rotation, without the rig's scale
    u[:, :, 2] *= np.sign(np.linalg.det(u @ vt))[:, None]
    rotations = u @ vt

    fitted = set(FIT_BONES)
    out = np.zeros((len(FIT_BONES), 3))
    for i, bone in enumerate(FIT_BONES):
        j = names.index(bone)
        a = parents[j]
        while a >= 0 and names[a] not in fitted and parents[a] >= 0:
            a = parents[a]
        out[i] = Rotation.from_matrix(rotations[a].T @ rotations[j]).as_rotvec()
    glob = Rotation.from_matrix(rotations[roots[0]]).as_rotvec()
    return FitParams(params.phenotype.copy(), out, glob, params.scale, params.translation.copy())


@dataclass
class FitResult:
    params: FitParams
    vertices: np.ndarray      # (13718, 3) volume frame
    heads: np.ndarray         # (104, 3) posed bone heads, volume frame
    tails: np.ndarray         # (104, 3)
    rest_vertices: np.ndarray  # (13718, 3) Anny frame, metres (the rest pose of this phenotype)
    rest_heads: np.ndarray    # (104, 3)
    transforms: np.ndarray    # (104, 4, 4) Anny frame: rest -> posed, before the camera
    energy: float
    history: list = field(default_factory=list)   # (stage, step, energy)
    timings: dict = field(default_factory=dict)
    guessed: list = field(default_factory=list)   # body regions the photo did not show
    volume_shape: tuple = ()  # (D, H, W) of the volume frame the vertices are in (the root sits at depth D/2)
    camera: np.ndarray | None = None  # 4x4 Anny frame -> volume frame (`camera_matrix`)


# ------------------------------------------------------------------------------------------ the energy

class _Problem:
    """Fixed data of one fit: evidence as tensors, the vertex subset, the mask samples, the distance map."""

    def __init__(self, body: BodyModel, ev: Evidence, init: FitParams):
        import cv2

        self.body, self.ev = body, ev
        d, h, w = ev.volume_shape
        self.h = float(h)
        sil = _silhouette_vertices(body)
        self.index = np.unique(np.concatenate([body.keypoint_vertices(), sil]))
        self.sil_rows = torch.as_tensor(np.searchsorted(self.index, sil))
        self.keypoints = body.keypoint_matrices(self.index)
        self.pair_a = torch.tensor([a for a, _ in DIRECTION_PAIRS])
        self.pair_b = torch.tensor([b for _, b in DIRECTION_PAIRS])
        self.target = torch.as_tensor(ev.points, dtype=torch.float64)
        vis = np.clip(np.nan_to_num(ev.visibility), 0, 1)
        self.vis = torch.as_tensor(np.where(vis >= 0.3, vis, 0.0))
        # (target points, visibility where the source has the point, weight) per source of bone directions
        self.sources = [(torch.as_tensor(np.nan_to_num(pts), dtype=torch.float64),
                         self.vis * torch.as_tensor(np.isfinite(pts).all(1), dtype=torch.float64),
                         DIRECTION_SOURCES[name])
                        for name, pts in (("world", ev.world), ("lifted", ev.lifted)) if pts is not None]
        inside = (ev.mask > 0.5).astype(np.uint8)
        self.has_mask = bool(inside.any())
        outside_dist = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3) if self.has_mask else np.zeros_like(ev.mask)
        if ev.in_photo is not None:  # beyond the photo's borders nothing says where the body is not
            outside_dist = outside_dist * (ev.in_photo > 0.5)
        self.dist = torch.as_tensor(outside_dist, dtype=torch.float64)[None, None]
        # bones of regions the photo does not show stay in the neutral standing pose (rest = 0)
        held = [FIT_BONES.index(b) for region in ev.guessed() for b in REGION_BONES[region]]
        self.held = torch.zeros(len(FIT_BONES), dtype=torch.float64)
        self.held[held] = 1.0
        ys, xs = np.nonzero(inside)
        pick = np.random.default_rng(0).choice(len(xs), min(MASK_POINTS, len(xs)), replace=False) if len(xs) else []
        self.mask_pts = torch.as_tensor(np.stack([xs[pick] + 0.5, ys[pick] + 0.5], 1) if len(xs) else
                                        np.zeros((0, 2)), dtype=torch.float64)
        self._rest_key, self._rest = None, None
        self.init_pose = torch.as_tensor(init.pose)

    def project(self, pts: torch.Tensor, rot: torch.Tensor, log_scale, trans, root) -> torch.Tensor:
        """Anny-frame points -> volume frame (x, y, z)."""
        d = self.ev.volume_shape[0]
        cam = (ANNY_TO_VOX @ rotvec_to_matrix(rot) @ (pts - root).T).T * torch.exp(log_scale)
        return cam + torch.cat([trans, torch.tensor([d / 2.0], dtype=trans.dtype)])

    def terms(self, v: dict, weights: dict) -> dict:
        body = self.body
        phen = torch.sigmoid(v["phenotype_logit"])
        if weights.get("shape"):
            rv, rh = body.rest(phen, self.index)
        else:  # the phenotype is fixed in this stage: the rest body once
            key = v["phenotype_logit"].detach().numpy().tobytes()
            if self._rest_key != key:
                with torch.no_grad():
                    self._rest = body.rest(phen, self.index)
                self._rest_key = key
            rv, rh = self._rest
        posed = body.pose(rv, rh, v["pose"], self.index)
        root = rh[0]
        pts3, pw = body.mediapipe_points(posed, self.keypoints)
        proj = self.project(pts3, v["global"], v["log_scale"], v["trans"], root)
        w = pw * self.vis
        if weights.get("torso_only"):
            keep = torch.zeros(33, dtype=w.dtype)
            keep[[11, 12, 23, 24]] = 1.0
            w = w * keep
        out = {}
        r2 = ((proj[:, :2] - self.target) ** 2).sum(1) / self.h ** 2
        gm = GM_SIGMA ** 2 * r2 / (GM_SIGMA ** 2 + r2) / GM_SIGMA ** 2
        out["keypoints"] = (w * gm).sum() / w.sum().clamp_min(1e-6)
        out["directions"] = self._directions(proj) if self.sources else proj.new_zeros(())
        if weights.get("silhouette", 0) > 0 and self.has_mask:
            verts = self.project(posed.vertices[self.sil_rows], v["global"], v["log_scale"], v["trans"], root)
            out["silhouette"] = self._silhouette(verts[:, :2])
        else:
            out["silhouette"] = proj.new_zeros(())
        out["pose_prior"] = body.pose_prior(v["pose"])
        out["limits"] = body.limit_penalty(v["pose"])
        out["shape_prior"] = body.shape_prior(phen)
        out["init"] = ((v["pose"] - self.init_pose) ** 2).sum()
        out["held"] = (self.held[:, None] * v["pose"] ** 2).sum()
        out["elevation"] = camera_elevation_prior(v["global"])
        return out

    def _directions(self, proj: torch.Tensor) -> torch.Tensor:
        """The sources' direction losses, averaged with their `DIRECTION_SOURCES` weights."""
        total = sum(w * self._direction_loss(proj, pts, vis) for pts, vis, w in self.sources)
        return total / sum(w for _, _, w in self.sources)

    def _direction_loss(self, proj: torch.Tensor, target: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        a, b = self.pair_a, self.pair_b
        conf = torch.minimum(vis[a], vis[b])

        def cos(x, y):
            return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-9)

        c = cos(proj[b] - proj[a], target[b] - target[a])
        (h1, h2), (s1, s2) = TORSO
        torso_m = (proj[s1] + proj[s2] - proj[h1] - proj[h2]) / 2
        torso_w = (target[s1] + target[s2] - target[h1] - target[h2]) / 2
        tc = torch.minimum(torch.minimum(vis[h1], vis[h2]), torch.minimum(vis[s1], vis[s2]))
        num = (conf * (1 - c)).sum() + tc * (1 - cos(torso_m, torso_w))
        return num / (conf.sum() + tc).clamp_min(1e-6)

    def _silhouette(self, xy: torch.Tensor) -> torch.Tensor:
        d, h, w = self.ev.volume_shape
        grid = torch.stack([xy[:, 0] / w * 2 - 1, xy[:, 1] / h * 2 - 1], -1)[None, None]
        outside = torch.nn.functional.grid_sample(self.dist, grid, align_corners=False, padding_mode="border")
        a = outside.mean() / self.h
        if len(self.mask_pts):
            near = torch.cdist(self.mask_pts, xy).min(1).values
            b = torch.clamp(near / self.h, max=0.1).mean()
        else:
            b = xy.new_zeros(())
        return (a + b) * 10.0


@lru_cache(maxsize=2)
def _silhouette_vertices(body: BodyModel) -> np.ndarray:
    """The SILHOUETTE_POINTS vertices the silhouette terms project: spread over the rest body by farthest-point
    sampling, once per body model (0.2 s a fit before)."""
    from core.template import farthest_point_sample

    return farthest_point_sample(np.asarray(body.template.rest_vertices, np.float64), SILHOUETTE_POINTS)


def camera_elevation_prior(global_rotation: torch.Tensor) -> torch.Tensor:
    """Squared standard deviations of the camera's elevation from CAMERA_ELEVATION_DEG: a camera above the
    person tilts the body's up axis towards it (volume z grows away from the camera)."""
    up = ANNY_TO_VOX @ rotvec_to_matrix(global_rotation)[:, 2]
    elevation = -torch.asin(up[2].clamp(-1 + 1e-9, 1 - 1e-9))  # finite gradient everywhere
    mean, std = (np.radians(x) for x in CAMERA_ELEVATION_DEG)
    return ((elevation - mean) / std) ** 2


def _energy(terms: dict, weights: dict, priors: dict | None = None) -> torch.Tensor:
    e = sum(weights.get(k, 0.0) * terms[k] for k in ("keypoints", "directions", "silhouette"))
    priors = PRIOR_WEIGHTS if priors is None else priors
    return e + sum(priors[k] * terms[k] for k in priors)


# ---------------------------------------------------------------------------------------- the fit

def _variables(p: FitParams) -> dict:
    phen = np.clip(p.phenotype, 1e-3, 1 - 1e-3)
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    return {"phenotype_logit": t(np.log(phen / (1 - phen))), "pose": t(p.pose), "global": t(p.global_rotation),
            "log_scale": t(np.log(p.scale)), "trans": t(p.translation)}


def _params(v: dict) -> FitParams:
    g = lambda k: v[k].detach().numpy().copy()  # noqa: E731
    return FitParams(1 / (1 + np.exp(-g("phenotype_logit"))), g("pose"), g("global"), float(np.exp(g("log_scale"))),
                     g("trans"))


GROUPS = {"camera": ("log_scale", "trans"), "global": ("global",), "pose": ("pose",), "shape": ("phenotype_logit",)}


def _run_stage(problem: _Problem, v: dict, stage: Stage, history: list, patience: int = 12,
               tol: float = 1e-4, cancel=None, priors: dict | None = None) -> float:
    names = [k for g in stage.free for k in GROUPS[g]]
    free = [v[k] for k in names]
    opt = torch.optim.Adam(free, lr=stage.lr)
    best, since = float("inf"), 0
    for step in range(stage.steps):
        if cancel is not None and cancel.is_set():
            from core.errors import Cancelled

            raise Cancelled("Reconstruction cancelled.", "")
        opt.zero_grad()
        e = _energy(problem.terms(v, stage.weights), stage.weights, priors)
        e.backward()
        for k in v:
            if k not in names:
                v[k].grad = None
        opt.step()
        value = float(e.detach())
        history.append((stage.name, step, value))
        if value < best * (1 - tol):
            best, since = value, 0
        else:
            since += 1
            if since >= patience:
                break
    with torch.no_grad():
        return float(_energy(problem.terms(v, stage.weights), stage.weights, priors))


def initial_params(ev: Evidence, body: BodyModel | None = None, pose: np.ndarray | None = None,
                   global_rotation: np.ndarray | None = None, phenotype: np.ndarray | None = None) -> FitParams:
    """A starting point: the given (or rest) pose and orientation, the given phenotype or anny's mean one (the
    fit barely moves it: starting from 0.5 made every fit 0.2 too young and tall), the camera that best puts
    the body's visible keypoints onto the detected ones (least squares on scale and translation)."""
    body = body or load_body_model()
    ph = body.phenotype_mean.numpy().copy() if phenotype is None else np.asarray(phenotype, float)
    pose = np.zeros((len(FIT_BONES), 3)) if pose is None else np.asarray(pose, float)
    rot = np.zeros(3) if global_rotation is None else np.asarray(global_rotation, float)
    index = body.keypoint_vertices()
    with torch.no_grad():
        rv, rh = body.rest(torch.as_tensor(ph), index)
        posed = body.pose(rv, rh, torch.as_tensor(pose), index)
        pts, w = body.mediapipe_points(posed, body.keypoint_matrices(index))
        cam = (ANNY_TO_VOX @ rotvec_to_matrix(torch.as_tensor(rot)) @ (pts - rh[0]).T).T.numpy()
    wt = w.numpy() * (np.nan_to_num(ev.visibility) >= VISIBLE)
    if wt.sum() < 2 or np.ptp(ev.points[wt > 0, 1]) < 1e-3:
        raise MonohumanError("Too few body landmarks are visible to fit a body.",
                             "Use a photo where at least the head and shoulders are clearly visible.")
    src, dst = cam[wt > 0, :2], ev.points[wt > 0]
    ws = wt[wt > 0][:, None]
    ms, md = (ws * src).sum(0) / ws.sum(), (ws * dst).sum(0) / ws.sum()
    scale = float((ws * (src - ms) * (dst - md)).sum() / max((ws * (src - ms) ** 2).sum(), 1e-9))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(ev.volume_shape[1] * 0.85 / 1.7)
    return FitParams(ph, pose, rot, scale, md - scale * ms)


def half_body_priors(ev: Evidence, priors: dict) -> dict:
    """With neither hip visible nothing in the photo says how far the body leans towards the camera but the arms'
    3D directions, and the fit leaned a portrait (skimage's astronaut) 19 degrees forward: there the camera's
    elevation prior weighs HALF_BODY_ELEVATION (the lean became 13 degrees, 7 of them the prior's own mean)."""
    hips = np.nan_to_num(ev.visibility[[23, 24]])
    if (hips < VISIBLE).all() and priors.get("elevation", 0) > 0:
        return {**priors, "elevation": max(priors["elevation"], HALF_BODY_ELEVATION)}
    return priors


def facing_away(ev: Evidence) -> tuple[bool, bool]:
    """(is the person's left shoulder on the image's left, i.e. seen from behind; is that unclear)."""
    ls, rs, lh, rh = ev.points[11], ev.points[12], ev.points[23], ev.points[24]
    dx = (ls[0] - rs[0]) + 0.5 * (lh[0] - rh[0])
    torso = np.linalg.norm((ls + rs) / 2 - (lh + rh) / 2)
    return bool(dx < 0), bool(abs(dx) < 0.35 * max(torso, 1e-6))


def fit_body(ev: Evidence, init: FitParams | None = None, body: BodyModel | None = None,
             stages=STAGES, cancel=None, refine: bool = True, priors: dict | None = None) -> FitResult:
    """Fit Anny to the evidence. `init` (e.g. a HumanMeshNet body's pose, or a previous fit) is the start; with
    refine=False the init is taken as it is (what `--init` without fitting gives). `stages` and `priors`
    (default STAGES, PRIOR_WEIGHTS) are what the ablations of train.evaluate_fit change."""
    body = body or load_body_model()
    priors = half_body_priors(ev, PRIOR_WEIGHTS if priors is None else priors)
    t0 = time.perf_counter()
    timings, history = {}, []
    if init is None:
        away, unclear = facing_away(ev)
        flips = [away, not away] if unclear else [away]
        starts = [initial_params(ev, body, global_rotation=np.array([0, 0, np.pi]) if f else None) for f in flips]
    else:
        starts = [init]
    if not refine:
        params, energy = starts[0], float("nan")
    else:
        if len(starts) == 1:
            problem, v = _Problem(body, ev, starts[0]), _variables(starts[0])
        else:  # both orientations through the pose stage; the lower energy goes on
            trials = []
            for start in starts:
                trial, tv, hist = _Problem(body, ev, start), _variables(start), []
                for stage in stages[:2]:
                    _run_stage(trial, tv, stage, hist, cancel=cancel, priors=priors)
                value = float(_energy(trial.terms(tv, stages[1].weights), stages[1].weights, priors).detach())
                trials.append((value, trial, tv, hist))
            _, problem, v, history = min(trials, key=lambda t: t[0])
        done = {h[0] for h in history}
        for stage in stages:
            if stage.name not in done:
                t = time.perf_counter()
                _run_stage(problem, v, stage, history, cancel=cancel, priors=priors)
                timings[f"fit_{stage.name}"] = time.perf_counter() - t
        params = _params(v)
        energy = float(_energy(problem.terms(v, stages[-1].weights), stages[-1].weights, priors).detach())
    timings["fit_total"] = time.perf_counter() - t0
    out = pose_body(params, ev.volume_shape, body)
    out.energy, out.history, out.timings = energy, history, timings
    out.guessed = ev.guessed()
    return out


def camera_matrix(params: FitParams, rest_root: np.ndarray, volume_shape) -> np.ndarray:
    """4x4 Anny frame -> volume frame of a parameter set: vox = scale A R (v - root) + (tx, ty, D/2), the
    projection `_Problem.project` differentiates."""
    R = params.scale * ANNY_TO_VOX.numpy() @ rotvec_to_matrix(torch.as_tensor(params.global_rotation)).numpy()
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = np.array([*params.translation, volume_shape[0] / 2.0]) - R @ np.asarray(rest_root, np.float64)
    return M


def pose_body(params: FitParams, volume_shape, body: BodyModel | None = None) -> FitResult:
    """The full mesh of a parameter set, in the volume frame (and its rest body in the Anny frame)."""
    from core.frame import apply_transform

    body = body or load_body_model()
    with torch.no_grad():
        rv, rh = body.rest(torch.as_tensor(params.phenotype, dtype=torch.float64))
        posed = body.pose(rv, rh, torch.as_tensor(params.pose, dtype=torch.float64))
    rv, rh = rv.numpy(), rh.numpy()
    camera = camera_matrix(params, rh[0], volume_shape)
    cam = lambda p: apply_transform(p.numpy(), camera)  # noqa: E731
    return FitResult(params, cam(posed.vertices), cam(posed.heads), cam(posed.tails), rv, rh,
                     posed.transforms.numpy(), float("nan"), volume_shape=tuple(volume_shape), camera=camera)


def evidence_from_detection(det, box, volume_shape, lifted: bool = True) -> Evidence:
    """A detection in source pixels -> the evidence in the volume frame of `box`, with the shipped pose
    lifter's 3D landmarks unless `lifted` is False (the `fit-no-lifter` ablation)."""
    from core.crop import crop_image
    from core.networks.lifter import lift

    d, h, w = volume_shape
    pts = box.to_crop(det.landmarks33[:, :2], (h, w)).astype(np.float64)
    vis = det.landmarks33[:, 3].astype(np.float64)
    mask = crop_image(det.mask, box, (h, w))
    in_photo = crop_image(np.ones(det.mask.shape, np.float32), box, (h, w))
    world = getattr(det, "world33", None)
    return Evidence(pts, vis, None if world is None else np.asarray(world, np.float64), mask.astype(np.float32),
                    tuple(volume_shape), in_photo.astype(np.float32),
                    lifted=lift(default_lifter(), pts, vis, VISIBLE) if lifted else None)


@lru_cache(maxsize=1)
def default_lifter():
    """The shipped pose lifter (`LIFTER_MODEL`), loaded once per process."""
    from core.checkpoint import load_model

    return load_model(LIFTER_MODEL).network


def pose_from_body(vertices_vox: np.ndarray, body: BodyModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pose (len(FIT_BONES), 3), global rotation (3,)) that best explain a body in Anny topology (e.g. a
    HumanMeshNet prediction) in the volume frame: each bone's rotation is the Kabsch rotation of the vertices it
    mostly drives, rest -> given; local-ref deltas are each bone's rotation relative to its nearest fitted
    ancestor."""
    from scipy.spatial.transform import Rotation

    from core.rig import kabsch

    body = body or load_body_model()
    rest = np.asarray(body.template.rest_vertices, np.float64)
    v = np.asarray(vertices_vox, np.float64) @ VOX_TO_METRIC_AXES.T  # volume axes -> Anny axes (y flipped in)
    dom = np.asarray(body.template.skin_index)[np.arange(len(rest)), np.asarray(body.template.skin_weight).argmax(1)]
    names = body.names

    def world(bone_names):
        sel = np.flatnonzero(np.isin(dom, [names.index(b) for b in bone_names]))
        return kabsch(rest[sel], v[sel]) if len(sel) >= 3 else np.eye(3)

    torso = world(["root", "pelvis.L", "pelvis.R", "spine05", "spine04"])
    rot: dict = {}
    pose = np.zeros((len(FIT_BONES), 3))
    for i, bone in enumerate(FIT_BONES):
        rot[bone] = world([bone])
        a = body.parents[names.index(bone)]
        while a >= 0 and names[a] not in rot:
            a = body.parents[a]
        parent = rot[names[a]] if a >= 0 else torso
        pose[i] = Rotation.from_matrix(parent.T @ rot[bone]).as_rotvec()
    pose = np.clip(pose, np.asarray(body.limits_lo), np.asarray(body.limits_hi))
    return pose, Rotation.from_matrix(torso).as_rotvec()
