"""Off-the-shelf body-part segmentation (HumanMeshNet's phase 1, "HMNet"): the detector's person mask split into
parts by the detected skeleton.

Each mask pixel takes the part of the nearest "bone" of a 2-D skeleton built from the 16 MPII landmarks
(`core.landmarks`; the same joints both the samples and `core.detect` carry), where distances are divided by a
per-part radius (a thigh is thicker than a forearm) that scales with the torso length:

    head        from 30 % of the way thorax -> upper neck, to the head top  (the neck counts as head, as in the
                renders' labels, train/bodies.py)
    torso       the shoulder-hip quadrilateral (distance 0 inside) and the pelvis -> thorax segment
    upper arm   shoulder -> elbow      lower arm  elbow -> wrist      hand  wrist -> wrist + 0.35 (wrist - elbow)
    upper leg   hip -> knee            lower leg  knee -> ankle       foot  ankle -> ankle + 0.2 (ankle - knee)

With mediapipe's 33 landmarks (`parts_from_mediapipe33`) the hands and feet use the detected hand (index and
pinky knuckles) and foot (heel, toe) points instead of the extrapolated ones.

Labels are `PART_NAMES` (0 = background); they equal `train.bodies.PART_NAMES` (a test checks it: `core/` may
not import `train/`).
"""

from __future__ import annotations

import numpy as np

from core.geometry import point_segment_distance
from core.landmarks import MPII16_NAMES

PART_NAMES = (
    "background", "head", "torso",
    "upper_arm_r", "lower_arm_r", "hand_r", "upper_arm_l", "lower_arm_l", "hand_l",
    "upper_leg_r", "lower_leg_r", "foot_r", "upper_leg_l", "lower_leg_l", "foot_l",
)
PART = {name: i for i, name in enumerate(PART_NAMES)}
# The label of each part in a horizontally flipped image (left and right swap).
PART_MIRROR = np.array([PART[n[:-1] + {"l": "r", "r": "l"}[n[-1]] if n[-2:] in ("_l", "_r") else n]
                        for n in PART_NAMES], dtype=np.uint8)

# Radius of each part as a fraction of the torso length (thorax to pelvis); distances are divided by it.
RADIUS = {"head": 0.30, "torso": 0.45, "upper_arm": 0.16, "lower_arm": 0.13, "hand": 0.12,
          "upper_leg": 0.22, "lower_leg": 0.16, "foot": 0.12}
TORSO_INSIDE_COST = 0.35  # normalised cost of a pixel inside the torso quadrilateral (limbs in front of it win)
HAND_EXTENT = 0.35
FOOT_EXTENT = 0.20
NECK_START = 0.30


def _inside_quad(p: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Points inside a (possibly non-convex, self-intersecting) quadrilateral by the even-odd rule."""
    inside = np.zeros(len(p), dtype=bool)
    for i in range(len(quad)):
        a, b = quad[i], quad[(i + 1) % len(quad)]
        cond = (a[1] > p[:, 1]) != (b[1] > p[:, 1])
        x = a[0] + (p[:, 1] - a[1]) * (b[0] - a[0]) / np.where(b[1] == a[1], 1e-12, b[1] - a[1])
        inside ^= cond & (p[:, 0] < x)
    return inside


def skeleton_segments(lm16: np.ndarray, hands=None, feet=None) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """(part label, start, end, radius in pixels) for each bone; hands/feet: optional {"r": (a, b), "l": ...}."""
    j = {name: np.asarray(lm16[i, :2], dtype=np.float64) for i, name in enumerate(MPII16_NAMES)}
    torso_len = max(float(np.linalg.norm(j["thorax"] - j["pelvis"])), 1.0)
    r = {k: v * torso_len for k, v in RADIUS.items()}
    neck = j["thorax"] + NECK_START * (j["upper_neck"] - j["thorax"])
    segs = [(PART["head"], neck, j["head_top"], r["head"]),
            (PART["torso"], j["pelvis"], j["thorax"], r["torso"])]
    for s in ("r", "l"):
        sh, el, wr = j[f"{s}_shoulder"], j[f"{s}_elbow"], j[f"{s}_wrist"]
        hip, kn, an = j[f"{s}_hip"], j[f"{s}_knee"], j[f"{s}_ankle"]
        hand = hands[s] if hands else (wr, wr + HAND_EXTENT * (wr - el))
        foot = feet[s] if feet else (an, an + FOOT_EXTENT * (an - kn))
        segs += [(PART[f"upper_arm_{s}"], sh, el, r["upper_arm"]), (PART[f"lower_arm_{s}"], el, wr, r["lower_arm"]),
                 (PART[f"hand_{s}"], np.asarray(hand[0]), np.asarray(hand[1]), r["hand"]),
                 (PART[f"upper_leg_{s}"], hip, kn, r["upper_leg"]), (PART[f"lower_leg_{s}"], kn, an, r["lower_leg"]),
                 (PART[f"foot_{s}"], np.asarray(foot[0]), np.asarray(foot[1]), r["foot"])]
    return segs


def parts_from_landmarks(mask, lm16, hands=None, feet=None) -> np.ndarray:
    """Split a person mask (H, W) bool/0-255/probability (> 0.5 or > 127 is person) into part labels.

    lm16: (16, 3) MPII landmarks (x, y, visibility) in the mask's pixels. Returns uint8 (H, W), PART_NAMES.
    """
    m = np.asarray(mask)
    person = m > (127 if m.dtype == np.uint8 else 0.5)
    lm16 = np.asarray(lm16, dtype=np.float64)
    if lm16.shape[0] != 16 or not np.isfinite(lm16[:, :2]).all():
        raise ValueError(f"parts_from_landmarks needs 16 finite MPII landmarks; got {lm16.shape}")
    ys, xs = np.nonzero(person)
    out = np.zeros(person.shape, dtype=np.uint8)
    if len(xs) == 0:
        return out
    p = np.stack([xs + 0.5, ys + 0.5], axis=1)
    segs = skeleton_segments(lm16, hands, feet)
    cost = np.stack([point_segment_distance(p, a, b) / rad for _, a, b, rad in segs], axis=1)
    j = {name: lm16[i, :2] for i, name in enumerate(MPII16_NAMES)}
    quad = np.stack([j["r_shoulder"], j["l_shoulder"], j["l_hip"], j["r_hip"]])
    torso = [k for k, s in enumerate(segs) if s[0] == PART["torso"]][0]
    cost[_inside_quad(p, quad), torso] = np.minimum(cost[_inside_quad(p, quad), torso], TORSO_INSIDE_COST)
    labels = np.array([s[0] for s in segs], dtype=np.uint8)
    out[ys, xs] = labels[np.argmin(cost, axis=1)]
    return out


# mediapipe pose indices (person's left/right): wrists 15/16, pinky 17/18, index 19/20, ankles 27/28,
# heels 29/30, foot index (toes) 31/32.
_MP_HAND = {"l": (15, 17, 19), "r": (16, 18, 20)}
_MP_FOOT = {"l": (29, 31), "r": (30, 32)}


def parts_from_mediapipe33(mask, lm33) -> np.ndarray:
    """Like `parts_from_landmarks`, from mediapipe's (33, 4) landmarks (core.detect.Detection.landmarks33):
    hands from the wrist to the middle of the index and pinky knuckles (extended by half), feet from the heel
    to the toes."""
    from core.landmarks import mpii16_from_mediapipe

    lm33 = np.asarray(lm33, dtype=np.float64)
    xy = lm33[:, :2]
    hands = {}
    for s, (w, pk, ix) in _MP_HAND.items():
        knuckles = (xy[pk] + xy[ix]) / 2
        hands[s] = (xy[w], xy[w] + 1.5 * (knuckles - xy[w]))
    feet = {s: (xy[h], xy[t]) for s, (h, t) in _MP_FOOT.items()}
    return parts_from_landmarks(mask, mpii16_from_mediapipe(lm33), hands, feet)


def part_iou(pred, target, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-label (intersection, union) pixel counts for labels (default 1..14: the body parts), to be summed
    over images; mIoU = mean over labels with union > 0 of intersection / union."""
    pred, target = np.asarray(pred), np.asarray(target)
    labels = range(1, len(PART_NAMES)) if labels is None else labels
    inter = np.array([np.sum((pred == k) & (target == k)) for k in labels], dtype=np.int64)
    union = np.array([np.sum((pred == k) | (target == k)) for k in labels], dtype=np.int64)
    return inter, union
