"""Find the person: mediapipe pose (33 landmarks) and its segmentation mask, in source pixels.

mediapipe 0.10.21's legacy `solutions.pose` ships its models inside the wheel, so this works offline.
Only the "full" landmark model (model_complexity=1) is in the wheel; complexity 2 would try to download
the heavy one at run time, so it is not used. One Pose graph per process, behind a lock: the graph is
not safe to call from two threads at once, and the Blender add-on calls from a worker thread.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.errors import ModelError, NoPersonError
from core.landmarks import FLIP_33, mpii16_from_mediapipe

DETECT_MAX_SIDE = 1024  # longer photos are shrunk for the detector; results are scaled back
LARGE_BLOB = 0.2  # a mask blob this fraction of the largest one's area counts as another person
# Nobody found: look again with this fraction of the longer side added around the photo (edges replicated).
# On 200 held-out renders where the person fills the frame, mediapipe found 15 of the 21 it missed this way.
PAD_RETRY = 0.25
# A second pass over the mirrored photo: mediapipe now and then puts a limb somewhere absurd, or finds a person
# with every landmark unsure, and the mirrored photo rarely fails the same way. On the 195 held-out renders at
# 512 px (seed 977) the body landmarks' mean 2D error went 55.6 -> 38.1 mm (median 22.2 -> 21.4), one
# mediapipe pass more per photo (docs/RESULTS.md, "A second look in the mirror").
MIRROR_PASS = True
MIRROR_MARGIN = 0.02  # the mirrored pass leads when its body landmarks' mean visibility is this much higher
MIRROR_AGREE = 0.3    # landmarks closer than this many torso lengths are averaged
BODY = [0, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]  # nose, arms, legs: what decides which pass leads

_LOCK = threading.Lock()
_POSE = None


@dataclass
class Detection:
    """landmarks33 (33, 4): x_px, y_px, z (mediapipe's depth relative to the hips, in the same pixels as x),
    visibility. landmarks16 (16, 3): MPII order, see core.landmarks. mask: float32 (H, W) in [0, 1],
    only the chosen person. All in source pixels but world33 (mediapipe's metric 3D pose)."""

    landmarks33: np.ndarray
    landmarks16: np.ndarray
    mask: np.ndarray
    warnings: list[str] = field(default_factory=list)
    world33: np.ndarray | None = None  # (33, 3) metres, hip-centred, x right, y down, z away from the camera


def detect_person(rgb: np.ndarray, name: str = "the photo", mirror: bool | None = None) -> Detection:
    """Detect the one person to reconstruct in a uint8 (H, W, 3) RGB image; `name` is used in messages. With
    `mirror` (default MIRROR_PASS) the photo is also seen mirrored and the passes are combined (`combine_passes`)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"detect_person wants uint8 (H, W, 3) RGB; got {rgb.dtype} {rgb.shape}")
    src_h, src_w = rgb.shape[:2]
    small = _shrink(rgb)
    sh, sw = small.shape[:2]
    mirror = MIRROR_PASS if mirror is None else mirror
    with _LOCK:
        first = _pose_pass(small)
        second = _pose_pass(np.ascontiguousarray(small[:, ::-1])) if mirror and first is not None else None
    if first is None:
        raise NoPersonError(f"No person found in {name}.",
                            "Use a photo where the whole body is visible, well lit, and not too small.")
    if second is not None:
        lm, seg, world = second
        lm = lm[list(FLIP_33)]
        lm[:, 0] = sw - lm[:, 0]
        world = None if world is None else world[list(FLIP_33)] * np.array([-1, 1, 1], np.float32)
        first = combine_passes(first, (lm, np.ascontiguousarray(seg[:, ::-1]), world))
    lm, seg, world = first
    to_src = src_w / sw
    lm33 = np.concatenate([lm[:, :3] * to_src, lm[:, 3:]], 1).astype(np.float32)
    small_mask, note = _one_person(np.ascontiguousarray(seg), lm33[:, :2] / to_src, lm33[:, 3])
    warnings = [note] if note else []
    if not small_mask.any():
        raise NoPersonError(f"No person found in {name} (the person mask is empty).",
                            "Use a photo where the whole body is visible, well lit, and not too small.")
    mask = small_mask if small.shape == rgb.shape else cv2.resize(small_mask, (src_w, src_h),
                                                                   interpolation=cv2.INTER_LINEAR)
    warnings += _framing_warnings(lm33, src_w, src_h)
    return Detection(lm33, mpii16_from_mediapipe(lm33), np.clip(mask, 0.0, 1.0), warnings, world)


def _pose_pass(small: np.ndarray):
    """One mediapipe pass: (landmarks (33, 4) in `small`'s pixels, segmentation (h, w), world (33, 3) or None),
    or None when nobody is found even with a border added. Callers hold _LOCK."""
    sh, sw = small.shape[:2]
    pad = 0
    result = _pose().process(small)
    if result.pose_landmarks is None:  # a person filling the frame: mediapipe finds them with room around
        pad = round(PAD_RETRY * max(sh, sw))
        result = _pose().process(cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
    if result.pose_landmarks is None or result.segmentation_mask is None:
        return None
    pw, ph = sw + 2 * pad, sh + 2 * pad  # the image mediapipe saw
    lm = np.array([(p.x * pw - pad, p.y * ph - pad, p.z * pw, p.visibility) for p in result.pose_landmarks.landmark],
                  dtype=np.float32)
    seg = np.asarray(result.segmentation_mask, dtype=np.float32)[pad:pad + sh, pad:pad + sw]
    world = None
    if result.pose_world_landmarks is not None:
        world = np.array([(p.x, p.y, p.z) for p in result.pose_world_landmarks.landmark], dtype=np.float32)
    return lm, seg, world


def combine_passes(first, second):
    """Two passes (landmarks (33, 4), segmentation, world or None) over the same photo -> one. The pass whose body
    landmarks mediapipe is surer of (mean visibility higher by MIRROR_MARGIN) leads: its mask, and its landmarks
    where the two passes disagree by more than MIRROR_AGREE torso lengths. Landmarks they agree on are averaged,
    as visible as the less sure pass saw them (a hip at the photo's edge that one pass half sees stays unseen).
    Lowering the visibility of the landmarks the passes disagree on as well fixed one bad fit and broke three
    whose leader was right (PA surface 64.7 -> 65.8 mm on the 195 renders)."""
    (la, sa, wa), (lb, sb, wb) = first, second
    if lb[BODY, 3].mean() > la[BODY, 3].mean() + MIRROR_MARGIN:
        (la, sa, wa), (lb, sb, wb) = second, first
    torso = np.linalg.norm((la[11, :2] + la[12, :2]) / 2 - (la[23, :2] + la[24, :2]) / 2)
    agree = np.linalg.norm(la[:, :2] - lb[:, :2], axis=1) < MIRROR_AGREE * max(torso, 1e-6)
    lm = np.where(agree[:, None], (la + lb) / 2, la).astype(np.float32)
    lm[:, 3] = np.where(agree, np.minimum(la[:, 3], lb[:, 3]), la[:, 3])
    world = wa if wa is None or wb is None else np.where(agree[:, None], (wa + wb) / 2, wa).astype(np.float32)
    return lm, sa, world


def _pose():
    global _POSE
    if _POSE is None:
        # mediapipe's C++ side logs INFO/WARNING lines to stderr on every start; keep the CLI's output clean.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise ModelError("The pose detector (mediapipe 0.10.21) is not installed.",
                             "Install it: pip install mediapipe==0.10.21") from exc
        _POSE = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                       enable_segmentation=True, min_detection_confidence=0.5)
    return _POSE


def _shrink(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = DETECT_MAX_SIDE / max(h, w)
    if s >= 1.0:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _one_person(mask: np.ndarray, xy: np.ndarray, vis: np.ndarray):
    """Keep the mask blob the pose lies on; say so when there were several person-sized blobs."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0.5).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask), None
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = 1 + int(np.argmax(areas))
    ij = np.floor(xy[vis > 0.5]).astype(int)
    ij = ij[(ij[:, 0] >= 0) & (ij[:, 0] < mask.shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < mask.shape[0])]
    hits = np.bincount(labels[ij[:, 1], ij[:, 0]], minlength=n)[1:]
    chosen = 1 + int(np.argmax(hits)) if hits.max() > 0 and hits.max() > hits[largest - 1] else largest
    note = None
    if np.count_nonzero(areas >= LARGE_BLOB * areas.max()) > 1:
        note = ("Several people found; reconstructing the largest." if chosen == largest else
                "Several people found; reconstructing the one whose pose was detected.")
    # Keep the soft edge of the chosen blob (values < 0.5 just outside it), nothing of the others.
    keep = cv2.dilate((labels == chosen).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    keep &= (labels == 0) | (labels == chosen)
    return mask * keep, note


def _framing_warnings(lm33: np.ndarray, w: int, h: int) -> list[str]:
    feet = lm33[[27, 28, 29, 30, 31, 32]]
    head = lm33[[0, 7, 8]]

    def cut(p):
        return bool(((p[:, 3] < 0.3) | (p[:, 0] < 0) | (p[:, 0] > w) | (p[:, 1] < 0) | (p[:, 1] > h)).all())

    out = []
    hips = lm33[[23, 24]]
    if cut(hips):
        out.append("Only the upper body is in the photo (no hips or legs): the fitted body (--method fit, the "
                   "default) fits what is visible and guesses the rest; VRN and HumanMeshNet guess a whole body.")
    elif cut(feet):
        out.append("The feet are cut off or hidden; the legs will be guessed. "
                   "A photo showing the whole body works best.")
    torso = (lm33[11, :2] + lm33[12, :2]) / 2 - (lm33[23, :2] + lm33[24, :2]) / 2
    if np.linalg.norm(torso) > 0 and abs(torso[1]) < abs(torso[0]):  # more sideways than upright in the image
        out.append("The person is lying down or the photo is turned on its side: the body is reconstructed as "
                   "seen, not standing. Rotate the photo so the person is upright if they are standing.")
    if cut(head):
        out.append("The head is cut off or hidden; it will be guessed. "
                   "A photo showing the whole body works best.")
    return out
