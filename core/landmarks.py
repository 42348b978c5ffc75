"""The 16 MPII-order joints the VRN input uses: derived from mediapipe's 33, flipped, drawn as heatmaps.

Landmarks are (16, 3) float arrays (x, y, visibility) in the pixels of the image they belong to,
pixel centres at i + 0.5. "Right" is the person's right.

Derived joints (one rule, used for detections and for training bodies alike, so both agree):
- pelvis = mid-hips, thorax = mid-shoulders;
- head centre = mid-ears (ears sit at about the vertical middle of the head and stay put when the
  face turns; mediapipe estimates both even when one is hidden);
- upper neck = thorax + UPPER_NECK_FRACTION * (head centre - thorax): about chin level, where MPII
  annotates it (shoulder joint to ear level is about 21 cm on an adult, shoulders to chin about 11 cm);
- head top = head centre + HEAD_TOP_FRACTION * (head centre - thorax): the crown is about 13 cm above
  the ears, i.e. the neck-plus-half-head length thorax -> head centre sets the head size;
- visibility of a derived joint = the minimum over the points it is made from.
"""

from __future__ import annotations

import numpy as np

from core.correspondence import COCO17_TO_MEDIAPIPE

MPII16_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)

# Index i of the flipped set takes joint FLIP_16[i] of the original (left <-> right, centre line stays).
FLIP_16 = np.array([5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10])

UPPER_NECK_FRACTION = 0.5
HEAD_TOP_FRACTION = 0.6

# mediapipe pose indices (the person's left/right).
_MP = dict(nose=0, l_ear=7, r_ear=8, l_shoulder=11, r_shoulder=12, l_elbow=13, r_elbow=14,
           l_wrist=15, r_wrist=16, l_hip=23, r_hip=24, l_knee=25, r_knee=26, l_ankle=27, r_ankle=28)
_DIRECT = {name: _MP[name] for name in MPII16_NAMES if name in _MP}
# Each mediapipe landmark's mirror image (left <-> right): the nose, eyes, ears and mouth, then the pairs 11-32.
FLIP_33 = (0, 4, 5, 6, 1, 2, 3, 8, 7, 10, 9, *[i + (1 if i % 2 else -1) for i in range(11, 33)])



def mpii16_from_mediapipe(lm33: np.ndarray) -> np.ndarray:
    """(33, 4) mediapipe landmarks (x_px, y_px, z, visibility) -> (16, 3) MPII joints (x, y, visibility).

    Uses only points that COCO-17 also has, so `mpii16_from_coco17` gives the same joints for a body model.
    """
    lm33 = np.asarray(lm33, dtype=np.float64)
    if lm33.shape != (33, 4):
        raise ValueError(f"mediapipe landmarks must be (33, 4); got {lm33.shape}")
    xy, vis = lm33[:, :2], lm33[:, 3]
    out = np.zeros((16, 3), dtype=np.float32)

    def put(name, p, v):
        out[MPII16_NAMES.index(name)] = (p[0], p[1], v)

    def mid(a, b):
        return (xy[_MP[a]] + xy[_MP[b]]) / 2, min(vis[_MP[a]], vis[_MP[b]])

    for name, i in _DIRECT.items():
        put(name, xy[i], vis[i])
    pelvis, v_pelvis = mid("l_hip", "r_hip")
    thorax, v_thorax = mid("l_shoulder", "r_shoulder")
    head, v_head = mid("l_ear", "r_ear")
    v_neck = min(v_thorax, v_head)
    put("pelvis", pelvis, v_pelvis)
    put("thorax", thorax, v_thorax)
    put("upper_neck", thorax + UPPER_NECK_FRACTION * (head - thorax), v_neck)
    put("head_top", head + HEAD_TOP_FRACTION * (head - thorax), v_neck)
    return out


def mpii16_from_coco17(kp17: np.ndarray) -> np.ndarray:
    """(17, 2|3) COCO keypoints (x, y[, visibility]) -> (16, 3) MPII joints, same rule as detections."""
    kp17 = np.asarray(kp17, dtype=np.float64)
    if kp17.ndim != 2 or kp17.shape[0] != 17 or kp17.shape[1] not in (2, 3):
        raise ValueError(f"COCO keypoints must be (17, 2) or (17, 3); got {kp17.shape}")
    lm33 = np.full((33, 4), np.nan)
    lm33[COCO17_TO_MEDIAPIPE, :2] = kp17[:, :2]
    lm33[COCO17_TO_MEDIAPIPE, 3] = kp17[:, 2] if kp17.shape[1] == 3 else 1.0
    return mpii16_from_mediapipe(lm33)


def flip_landmarks(lm16: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of the horizontally mirrored image (np.fliplr): x -> width - x, left <-> right swapped."""
    out = np.array(lm16, dtype=np.float32)[FLIP_16]
    out[:, 0] = width - out[:, 0]
    return out


def default_fwhm(height: int) -> float:
    """Heatmap full width at half maximum in pixels: 6 px at 128 px, scaled with the image height."""
    return 6.0 * height / 128.0


def gaussian_heatmaps(lm16: np.ndarray, size_hw, fwhm: float | None = None) -> np.ndarray:
    """(N, 2+) points -> float32 (N, H, W) Gaussians with peak 1 at each point (pixel centres at i + 0.5).

    A point that is NaN or outside [0, W] x [0, H] gives an all-zero channel. Visibility is not used:
    like the paper, the network sees every joint, occluded or not.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    pts = np.asarray(lm16, dtype=np.float64)[:, :2]
    sigma = (default_fwhm(h) if fwhm is None else float(fwhm)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    with np.errstate(invalid="ignore"):
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w) & (pts[:, 1] >= 0) & (pts[:, 1] <= h)
    x, y = np.where(inside, pts[:, 0], 0.0), np.where(inside, pts[:, 1], 0.0)
    gx = np.exp(-((np.arange(w) + 0.5)[None, :] - x[:, None]) ** 2 / (2 * sigma**2)).astype(np.float32)
    gy = np.exp(-((np.arange(h) + 0.5)[None, :] - y[:, None]) ** 2 / (2 * sigma**2)).astype(np.float32)
    gy *= inside[:, None]
    return gy[:, :, None] * gx[:, None, :]
