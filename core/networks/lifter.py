"""The pose lifter: how deep each body landmark lies, from where the landmarks are in the image.

The body fit's weakest evidence is limb depth: mediapipe's metric world landmarks are compressed in depth
(a bone's depth component 0.35 against 0.42 in the truth, correlation 0.70; docs/RESULTS.md). With the true
bone directions instead, the fit's PA surface error on the first 24 held-out renders falls from 75 to 58 mm.
This is Martinez et al. (2017)'s "simple baseline" for this project: a residual MLP from the 2D landmarks to
their depths, trained on the project's own pose sampler and Anny bodies seen from random views
(`train.fit_lifter`), so it knows which 3D poses people take.

Input (`lift_features`): the `LIFT_POINTS` landmarks (x, y) centred on the mean of those present and divided
by their RMS spread, absent ones zero, plus a present flag each. Output: each point's depth relative to the
mean depth of the present points, in the same unit. `lift` turns it back into a 3D point set in the frame of
the given 2D points (orthographic: x, y as given, z away from the camera), which the fit reads like
mediapipe's world landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.landmarks import FLIP_33
from core.networks.config_json import config_to_dict, pos_int, variant_defaults

# Nose, inner eyes, ears, shoulders, elbows, wrists, hips, knees, ankles, heels, toes (mediapipe indices):
# every landmark the fit's bone directions use, and the face points that say which way the person faces.
LIFT_POINTS = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32)
# `lift` also asks about the mirrored person (core.landmarks.FLIP_33) and averages the two answers (validation
# depth error 54.2 -> 53.4 mm with the first shipped lifter).


@dataclass(frozen=True)
class LifterConfig:
    """Everything that defines a lifter. JSON round trip: `to_dict()` / `LifterConfig.from_dict(d)`."""

    variant: str
    points: tuple = LIFT_POINTS
    width: int = 512
    blocks: int = 2  # residual blocks of two linear layers each
    dropout: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "points", tuple(int(p) for p in self.points))
        if self.variant not in VARIANT_NAMES:
            raise ValueError(f"unknown lifter variant {self.variant!r}; known: {list(VARIANT_NAMES)}")
        if not self.points or not all(0 <= p < 33 for p in self.points) or len(set(self.points)) != len(self.points):
            raise ValueError(f"lifter points must be distinct mediapipe indices 0-32; got {list(self.points)}")
        if not (pos_int(self.width) and pos_int(self.blocks)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lifter width and blocks must be positive ints and dropout in [0, 1); got "
                             f"{self.width}, {self.blocks}, {self.dropout}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LifterConfig":
        return cls(**{**variant_defaults(cls, data, "lifter", VARIANTS), **data})


VARIANT_NAMES = ("lifter", "lifter-small")
VARIANTS: dict[str, LifterConfig] = {"lifter": LifterConfig("lifter"),
                                     "lifter-small": LifterConfig("lifter-small", width=256)}


def config_for(variant: str, **overrides) -> LifterConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown lifter variant {variant!r}; known: {list(VARIANTS)}")
    return LifterConfig(**{**VARIANTS[variant].to_dict(), **overrides})


class _Residual(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        layer = lambda: [nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), nn.Dropout(dropout)]  # noqa: E731
        self.body = nn.Sequential(*layer(), *layer())

    def forward(self, x):
        return x + self.body(x)


class Lifter(nn.Module):
    """(B, 3 P) features -> (B, P) depths, in the features' unit."""

    method = "lifter"

    def __init__(self, config: LifterConfig):
        super().__init__()
        self.config = config
        p, w = len(config.points), config.width
        self.net = nn.Sequential(nn.Linear(3 * p, w), nn.ReLU(),
                                 *[_Residual(w, config.dropout) for _ in range(config.blocks)], nn.Linear(w, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_lifter(config: LifterConfig) -> Lifter:
    return Lifter(config)


def lift_features(xy: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., P, 2) points and (..., P) flags -> ((..., 3 P) features, (..., 2) centre, (...,) scale). At least
    two points must be present and apart (the fit checks that before it asks)."""
    w = present[..., None].astype(np.float64)
    n = np.maximum(w.sum(-2), 1.0)
    centre = (xy * w).sum(-2) / n
    scale = np.sqrt((((xy - centre[..., None, :]) ** 2).sum(-1) * w[..., 0]).sum(-1) / n[..., 0])
    scale = np.maximum(scale, 1e-6)
    f = np.where(w > 0, (xy - centre[..., None, :]) / scale[..., None, None], 0.0)
    feats = np.concatenate([f.reshape(*f.shape[:-2], -1), w[..., 0]], -1)
    return feats.astype(np.float32), centre, scale


def mirror_slots(points) -> list[int]:
    """For each of `points` (mediapipe indices), the position in `points` of its mirror image (itself where the
    mirror is not among them)."""
    points = list(points)
    return [points.index(FLIP_33[p]) if FLIP_33[p] in points else i for i, p in enumerate(points)]


def lift(lifter: Lifter, points33: np.ndarray, visibility: np.ndarray, visible: float = 0.5) -> np.ndarray | None:
    """(33, 3) the landmarks with a depth, in the unit and frame of `points33` (NaN rows for landmarks the
    lifter does not place), or None when fewer than two of its points are visible."""
    idx = list(lifter.config.points)
    xy = np.asarray(points33, np.float64)[idx, :2]
    present = (np.nan_to_num(np.asarray(visibility, np.float64)[idx]) >= visible) & np.isfinite(xy).all(1)
    if present.sum() < 2:
        return None
    # the mirrored person: x negated, each point in its mirror's slot (orthographic: depths stay as they are)
    mirror = mirror_slots(idx)
    xy0 = np.nan_to_num(xy)
    feats, _, scale = lift_features(np.stack([xy0, xy0[mirror] * [-1.0, 1.0]]), np.stack([present, present[mirror]]))
    with torch.no_grad():
        param = next(lifter.parameters())
        z = lifter(torch.as_tensor(feats, dtype=param.dtype, device=param.device)).cpu().numpy()
    z = (z[0] + z[1][mirror]) / 2
    scale = scale[0]
    out = np.full((33, 3), np.nan)
    out[idx, :2] = xy
    out[idx, 2] = z * scale
    return out
