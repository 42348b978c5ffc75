"""Which point of the Anny body each mediapipe pose landmark is: defined once, used by the 16-joint rule
(`core.landmarks`), the body fit (`core.bodyfit`) and the fit's metrics.

A correspondence says how to compute the Anny point: ``("coco", k)`` anny's COCO-17 keypoint k (regressed
from the surface, where a photo annotator puts the joint), ``("vertex", name)`` a named surface vertex
chosen by rule when the body model is built (`EXTRA_VERTEX_RULES`), or ``("bone", name)`` the head of an
Anny bone. "Left" is the person's left (Anny's .L, +X).
"""

from __future__ import annotations

import numpy as np

# COCO-17 keypoint k is mediapipe landmark COCO17_TO_MEDIAPIPE[k] (nose, eyes, ears, shoulders, ... ankles).
COCO17_TO_MEDIAPIPE = np.array([0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28])

# Surface points COCO lacks, found on the neutral rest body by (part, rule): "back" = the part's vertex
# furthest backwards (+Y) among its lowest 2 cm, "front" = its vertex furthest forwards (-Y).
EXTRA_VERTEX_RULES = {
    "heel.L": ("foot_l", "back"), "heel.R": ("foot_r", "back"),
    "toe.L": ("foot_l", "front"), "toe.R": ("foot_r", "front"),
}

# mediapipe index -> (kind, reference, weight). The knuckle points of mediapipe's pose model are rough,
# so they count less than the joints.
MEDIAPIPE_TO_ANNY: dict[int, tuple[str, object, float]] = {
    **{int(mp): ("coco", k, 1.0) for k, mp in enumerate(COCO17_TO_MEDIAPIPE)},
    29: ("vertex", "heel.L", 0.7), 30: ("vertex", "heel.R", 0.7),
    31: ("vertex", "toe.L", 0.7), 32: ("vertex", "toe.R", 0.7),
    17: ("bone", "finger5-1.L", 0.3), 18: ("bone", "finger5-1.R", 0.3),
    19: ("bone", "finger2-1.L", 0.3), 20: ("bone", "finger2-1.R", 0.3),
    21: ("bone", "finger1-3.L", 0.3), 22: ("bone", "finger1-3.R", 0.3),
}

# Bones (pairs of mediapipe indices) whose 3D directions the fit matches against mediapipe's world landmarks.
DIRECTION_PAIRS = (
    (11, 13), (13, 15), (12, 14), (14, 16),  # upper arms, forearms
    (23, 25), (25, 27), (24, 26), (26, 28),  # thighs, shins
    (27, 31), (28, 32),                      # feet
    (12, 11), (24, 23),                      # shoulder line, hip line (right -> left)
)
# The torso: mid-hips -> mid-shoulders, as a pair of pairs.
TORSO = ((23, 24), (11, 12))

# Which landmarks belong to which body region, and the bones that region's pose comes from: a region the photo
# does not show is "guessed" (a warning names it) and its bones are held in the neutral standing pose.
REGIONS = {
    "head": (0, 2, 5, 7, 8), "left arm": (13, 15), "right arm": (14, 16),
    "left leg": (25, 27, 29, 31), "right leg": (26, 28, 30, 32),
}
REGION_BONES = {
    "head": ("neck01", "head"), "left arm": ("lowerarm01.L", "wrist.L"), "right arm": ("lowerarm01.R", "wrist.R"),
    "left leg": ("upperleg01.L", "lowerleg01.L", "foot.L"), "right leg": ("upperleg01.R", "lowerleg01.R", "foot.R"),
}


def extra_vertex_index(rule: tuple[str, str], rest_vertices: np.ndarray, parts: np.ndarray,
                       part_names: tuple) -> int:
    """The vertex an `EXTRA_VERTEX_RULES` entry names, on a rest body (Anny frame, Z up, faces -Y)."""
    part, where = rule
    sel = np.flatnonzero(parts == part_names.index(part))
    v = rest_vertices[sel]
    if where == "back":
        low = v[:, 2] <= v[:, 2].min() + 0.02
        return int(sel[low][np.argmax(v[low, 1])])
    return int(sel[np.argmin(v[:, 1])])
