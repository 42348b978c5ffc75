"""Train the pose lifter (core/networks/lifter.py): the depth of the body landmarks from their 2D positions.

    python -m train.fit_lifter --make-poses ~/.cache/monohuman/data/lift-poses-s1.npz --count 40000 --seed 1
    python -m train.fit_lifter --data ~/.cache/monohuman/data/lift-poses-s1.npz --out runs/lifter --epochs 40
    python -m train.fit_lifter --out runs/lifter --resume                             # continue exactly

Data: `--make-poses` draws bodies as the renders do (anny's phenotype distribution, `train.bodies`) in poses
from the project's sampler (`train.poses`), poses them with the fit's own body model and keeps the 33
mediapipe points of each (`core.correspondence`), in metres about the root: about 13 ms a body on one core.
Each epoch every body is seen from a new random camera: yaw anywhere around it, elevation as the renders'
(`train.scene`), orthographic as the fit's camera; the 2D points get Gaussian noise of the size mediapipe's
landmarks scatter on the held-out renders (`NOISE_M`, times `noise_scale`), some points are dropped (`drop`)
and some bodies lose their legs (`half_body`), as photos do. Trained with a quarter of that noise (2.5 cm on
every point), the lifter read mediapipe's too-long foreshortened thigh as a thigh swung backwards. Validation bodies are held out whole and seen from fixed cameras.

The task (model, data, L1 depth loss, validation depth error in mm) runs in train/loop.py like the other
networks: resumable state, DDP, log.csv, run/model.* with `metrics.val_depth_mm`; --export writes the fp16
copy that ships as models/pose-lifter.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError, run_command
from core.files import write_atomic
from core.networks.lifter import build_lifter, config_for, lift_features
from train.loop import Setup, Task, parse_flags, split_train_val, train

POSES_FORMAT = "monohuman-lift-poses"
YAW_DEG = (0.0, 360.0)
ELEVATION_DEG = (-10.0, 25.0)  # train.scene's camera elevation range
OUTLIER_SCALE = 3.0  # mediapipe's wrists and ankles scatter 2-3x NOISE_M about their mean on held-out renders
LEGS = 13  # position in LIFT_POINTS from which the legs start (hips onwards)
# Standard deviation per image axis (metres) of mediapipe's landmarks about their Anny points on 76 held-out
# renders (docs/RESULTS.md, "Where the detector itself stands": 3 cm at the face, 4-5 at shoulders, elbows,
# hips and knees, 6-7 at wrists and heels, 8 at the toes, as distances; divided by sqrt 2 per axis).
NOISE_M = {0: 0.021, 2: 0.021, 5: 0.021, 7: 0.021, 8: 0.021, 11: 0.032, 12: 0.032, 13: 0.032, 14: 0.032,
           15: 0.046, 16: 0.046, 23: 0.032, 24: 0.032, 25: 0.032, 26: 0.032, 27: 0.039, 28: 0.039, 29: 0.046,
           30: 0.046, 31: 0.057, 32: 0.057}


@dataclass
class LifterTrainConfig:
    data: list[str] = field(default_factory=list)  # pose files written by --make-poses
    out: str = "runs/lifter"
    variant: str = "lifter"  # a name from core.networks.lifter.VARIANTS
    width: int = 0  # 0 = the variant's
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    lr_late: float = 1e-4
    lr_drop: float = 0.7
    noise_scale: float = 1.0  # times NOISE_M, the 2D noise mediapipe's landmarks have
    outliers: float = 0.0  # probability that a point's 2D noise is OUTLIER_SCALE times larger
    drop: float = 0.05  # probability that one point is missing
    half_body: float = 0.1  # probability that a body's legs are missing
    val_samples: int = 1000
    workers: int = 0
    threads: int = 0
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0
    resume: bool = False
    init: str = ""
    export: str = ""
    name: str = ""
    make_poses: str = ""  # write a pose file of --count bodies here, then exit
    count: int = 40000
    detections: list[str] = field(default_factory=list)  # real detections (train.detections) to learn from too
    real_repeat: int = 10  # times each real detection is seen per epoch (the poses: once)
    score: str = ""  # a detection file: print the depth error of the model at --out (a run or a model name), exit


def parse_config(argv=None) -> LifterTrainConfig:
    return parse_flags(LifterTrainConfig, "python -m train.fit_lifter", __doc__.splitlines()[0], argv)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------

def make_poses(path, count: int, seed: int) -> Path:
    """`count` random bodies in random poses: their 33 mediapipe points (metres, Anny frame, about the root)."""
    from tqdm import tqdm

    from core.body_model import PHENOTYPE_KEYS, load_body_model
    from train import poses
    from train.bodies import sample_phenotype

    rng = np.random.default_rng(seed)
    body = load_body_model()
    index = body.keypoint_vertices()
    matrices = body.keypoint_matrices(index)
    rest = poses.neutral_rest()
    points = np.zeros((count, 33, 3), np.float32)
    with torch.no_grad():
        for i in tqdm(range(count), desc="poses", file=sys.stderr):
            ph = sample_phenotype(rng)["phenotype"]
            rotvecs = poses.fit_rotvecs(poses.sample_pose(rng, rest))
            rv, rh = body.rest(torch.tensor([ph[k] for k in PHENOTYPE_KEYS], dtype=torch.float64), index)
            pts, _ = body.mediapipe_points(body.pose(rv, rh, torch.as_tensor(rotvecs), index), matrices)
            points[i] = (pts - rh[0]).numpy()
    buf = io.BytesIO()
    info = json.dumps({"format": POSES_FORMAT, "count": count, "seed": seed})
    np.savez(buf, points=points, info=np.array(info))
    write_atomic(Path(path), buf.getvalue())
    return Path(path)


def read_poses(paths) -> np.ndarray:
    """(N, 33, 3) points of every pose file, with a message that names a missing or foreign file."""
    out = []
    for path in paths:
        fix = f"Write it with `python -m train.fit_lifter --make-poses {path}`."
        try:
            with np.load(path, allow_pickle=False) as f:
                info, points = json.loads(str(f["info"])), f["points"]
        except FileNotFoundError:
            raise DataError(f"Pose file {path} not found.", fix) from None
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"Pose file {path} is not readable ({e}).", fix) from None
        if info.get("format") != POSES_FORMAT or points.ndim != 3 or points.shape[1:] != (33, 3):
            raise DataError(f"{path} is not a pose file of this project.", fix)
        out.append(points)
    return np.concatenate(out).astype(np.float64)


def view(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each body (N, P, 3, Anny frame) seen by its own random orthographic camera: (N, P, 3) in the volume
    frame's axes (x right, y down, z away from the camera)."""
    from scipy.spatial.transform import Rotation

    from core.frame import VOX_TO_METRIC_AXES

    n = len(points)
    turn = Rotation.from_euler("z", rng.uniform(*YAW_DEG, (n, 1)), degrees=True).as_matrix()  # about the body's up
    tilt = Rotation.from_euler("x", rng.uniform(*ELEVATION_DEG, (n, 1)), degrees=True).as_matrix()  # camera above
    return np.einsum("nij,npj->npi", tilt @ VOX_TO_METRIC_AXES.T[None] @ turn, points)


def depth_targets(xy: np.ndarray, z: np.ndarray, present: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, P) points seen at `xy` with depths `z` -> the lifter's features, each point's depth about the mean
    of the present ones in the features' unit, and that unit (`lift_features`' scale)."""
    feats, _, scale = lift_features(xy, present)
    mean_z = (z * present).sum(1) / np.maximum(present.sum(1), 1)
    depth = (z - mean_z[:, None]) / scale[:, None]
    return torch.from_numpy(feats), torch.from_numpy(depth.astype(np.float32)), torch.from_numpy(scale.astype(np.float32))


class LiftDataset(torch.utils.data.Dataset):
    """(features, depths, scale in metres) per body; the views are drawn for the whole set at `set_epoch`
    (vectorised: 40,000 bodies in about a second), fixed ones when `fixed`."""

    def __init__(self, points: np.ndarray, cfg: LifterTrainConfig, points_index, fixed: bool):
        self.points, self.cfg, self.fixed = points[:, list(points_index)], cfg, fixed
        self.noise = cfg.noise_scale * np.array([NOISE_M[p] for p in points_index])[:, None]
        self.set_epoch(-1)

    def __len__(self):
        return len(self.points)

    def set_epoch(self, epoch: int) -> None:
        if self.fixed and epoch >= 0:
            return
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch + 1])
        cam = view(self.points, rng)
        n, p, _ = cam.shape
        noise = rng.normal(0.0, 1.0, (n, p, 2)) * self.noise
        if cfg.outliers > 0:
            noise *= np.where(rng.random((n, p, 1)) < cfg.outliers, OUTLIER_SCALE, 1.0)
        xy = cam[..., :2] + noise
        present = rng.random((n, p)) >= cfg.drop
        present[rng.random(n) < cfg.half_body, LEGS:] = False
        present[:, 5:7] = True  # the shoulders: a photo the fit accepts shows them
        self.x, self.z, self.scale = depth_targets(xy, cam[..., 2], present)
        self.ones = torch.ones(p)

    def __getitem__(self, i):  # every point's depth is known here: weight 1 (as DetectionDataset's form)
        return self.x[i], self.z[i], self.scale[i], self.ones


class DetectionDataset(torch.utils.data.Dataset):
    """Mediapipe's landmarks on renders against their true depths (`train.detections`), in the same
    (features, depths, scale in metres) form as `LiftDataset`; unless `fixed`, each epoch shows a random half
    of the people mirrored, as `lift` asks about both."""

    def __init__(self, data: dict, points_index, seed: int, fixed: bool):
        from core.bodyfit import VISIBLE
        from core.networks.lifter import mirror_slots

        idx = list(points_index)
        self.xy, self.z = data["points"][:, idx].astype(np.float64), data["truth"][:, idx, 2].astype(np.float64)
        self.present = (data["visibility"][:, idx] >= VISIBLE) & np.isfinite(self.xy).all(-1) & np.isfinite(self.z)
        self.present[self.present.sum(1) < 2] = False
        self.metres = data["mm_per_unit"].astype(np.float64) / 1000.0
        self.mirror, self.seed, self.fixed = mirror_slots(idx), seed, fixed
        self.set_epoch(-1)

    def __len__(self):
        return len(self.xy)

    def set_epoch(self, epoch: int) -> None:
        if self.fixed and epoch >= 0:
            return
        xy, z, present = self.xy.copy(), self.z.copy(), self.present.copy()
        if not self.fixed:
            flip = np.random.default_rng([self.seed, epoch + 1, 7]).random(len(xy)) < 0.5
            m = self.mirror
            xy[flip], z[flip], present[flip] = xy[flip][:, m] * [-1.0, 1.0], z[flip][:, m], present[flip][:, m]
        self.x, self.target, scale = depth_targets(np.nan_to_num(xy), np.nan_to_num(z), present)
        self.weight = torch.from_numpy(present.astype(np.float32))
        self.scale = scale * torch.from_numpy(self.metres.astype(np.float32))

    def __getitem__(self, i):
        return self.x[i], self.target[i], self.scale[i], self.weight[i]


class _Both(torch.utils.data.ConcatDataset):
    """The sampler's poses and the real detections as one training set; `set_epoch` reaches both."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)


def depth_error_mm(lifter, data: dict) -> np.ndarray:
    """Per detection, the mean depth error (mm) of `lift` (as the fit asks it: both the person and the mirror)
    over the landmarks it places, against the truth, each set's mean depth removed."""
    from core.bodyfit import VISIBLE
    from core.networks.lifter import lift

    idx = list(lifter.config.points)
    out = np.full(len(data["points"]), np.nan)
    for i in range(len(out)):
        got = lift(lifter, data["points"][i], data["visibility"][i], VISIBLE)
        if got is None:
            continue
        z, t = got[idx, 2], data["truth"][i, idx, 2]
        ok = np.isfinite(z) & np.isfinite(t) & (data["visibility"][i, idx] >= VISIBLE)
        if ok.sum() >= 2:
            out[i] = np.abs((z[ok] - z[ok].mean()) - (t[ok] - t[ok].mean())).mean() * data["mm_per_unit"][i]
    return out


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------

class LifterTask(Task):
    """Depth regression: L1 in the features' unit; validation: mean depth error in mm over every point."""
    metric_digits = 2

    def setup(self, cfg: LifterTrainConfig, device) -> Setup:
        net_cfg = config_for(cfg.variant, **({"width": cfg.width} if cfg.width else {}))
        points = read_poses(cfg.data)
        train_set = LiftDataset(points, cfg, net_cfg.points, fixed=False)
        val_set = LiftDataset(points, cfg, net_cfg.points, fixed=True)
        train_idx, val_idx = split_train_val(train_set, cfg.val_samples, cfg.seed)
        model = build_lifter(net_cfg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        if not cfg.detections:
            return Setup(model, optimizer, train_set, torch.utils.data.Subset(train_set, train_idx),
                         torch.utils.data.Subset(val_set, val_idx))
        # with real detections, their held-back people are the validation: what the fit will meet
        from train.detections import read_detections

        dets = read_detections(cfg.detections)
        real = DetectionDataset(dets, net_cfg.points, cfg.seed, fixed=False)
        real_train, real_val = split_train_val(real, cfg.val_samples, cfg.seed)
        both = _Both([train_set, real])
        order = train_idx + [len(train_set) + i for i in real_train] * cfg.real_repeat
        return Setup(model, optimizer, both, torch.utils.data.Subset(both, order),
                     torch.utils.data.Subset(DetectionDataset(dets, net_cfg.points, cfg.seed, fixed=True), real_val))

    def loss(self, model, batch, device):
        x, z, _, w = (t.to(device) for t in batch)
        loss = ((model(x) - z).abs() * w).sum() / w.sum().clamp_min(1.0)
        return loss, {"train_loss": float(loss.detach())}

    def evaluate(self, model, loader, device) -> tuple[dict, int]:
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in loader:
                x, z, scale, w = (t.to(device) for t in batch)
                err = ((model(x) - z).abs() * w).sum(1) / w.sum(1).clamp_min(1.0) * scale * 1000.0
                total, count = total + float(err.sum()), count + len(x)
        model.train()
        return {"depth_mm": total}, count

    def timing(self, seconds: float, samples: int) -> dict:
        return {"seconds": round(seconds, 1), "samples_per_s": round(samples / max(seconds, 1e-9))}

    def export_meta(self, cfg: LifterTrainConfig) -> dict:
        real = {"detections": list(cfg.detections), "real_repeat": cfg.real_repeat} if cfg.detections else {}
        return {"views": {"yaw_deg": list(YAW_DEG), "elevation_deg": list(ELEVATION_DEG),
                          "noise_m": {str(k): v * cfg.noise_scale for k, v in NOISE_M.items()},
                          "drop": cfg.drop, "half_body": cfg.half_body}, **real}


def score(model, detections) -> int:
    """Print the depth error of a lifter (a run folder, a model file or a shipped model's name) on real
    detections: mean, median and the share under 50 mm."""
    from core.checkpoint import load_model
    from train.detections import read_detections

    path = Path(model).expanduser()
    lifter = load_model(path / "model.json" if path.is_dir() else model).network
    err = depth_error_mm(lifter, read_detections([detections]))
    ok = err[np.isfinite(err)]
    print(json.dumps({"model": str(model), "detections": len(ok), "depth_mm_mean": round(float(ok.mean()), 2),
                      "depth_mm_median": round(float(np.median(ok)), 2),
                      "under_50mm": round(float((ok < 50).mean()), 3)}))
    return 0


def main(argv=None) -> int:
    cfg = parse_config(argv)

    def body() -> int:
        if cfg.make_poses:
            print(f"wrote {make_poses(cfg.make_poses, cfg.count, cfg.seed)}", file=sys.stderr)
            return 0
        if cfg.score:
            return score(cfg.out, cfg.score)
        return train(LifterTask(), cfg, " ".join(["python -m train.fit_lifter", *map(shlex.quote,
                                                                                     argv or sys.argv[1:])]))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
