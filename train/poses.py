"""The pose sampler: base poses perturbed per joint within anatomical limits, plus a cheap
self-intersection test.

Anny's pose parameters (``pose_parameterization="local-ref"``, the default of ``anny.Anny()``) are one
4x4 delta per bone, applied about the bone's head, chained down the skeleton; the rotation of a bone is
expressed in axes that are the world axes when its parent is in the rest pose (Anny's rest pose is an
A-pose, arms ~48 degrees below horizontal, elbows slightly bent).  World/body axes: X = the person's
left, Y = backwards (the person faces -Y), Z = up.

A pose is described by a few anatomical numbers (degrees) per joint, in a ``PoseSpec``:

* arms: ``abd`` (elevation in the frontal plane: 0 hanging, 90 T-pose, 180 overhead), ``fwd`` (swing
  forward, negative = backwards), ``twist`` (humeral rotation, positive = internal), ``elbow`` (flexion,
  0 = straight), ``wrist`` (3 small angles);
* legs: the same ``abd``/``fwd``/``twist`` at the hip (fwd 90 = thigh horizontal, forward), ``knee``
  (flexion), ``ankle`` (3 small angles);
* ``spine`` (forward flexion, side bend to the left, twist to the left) spread over spine01..03;
* ``neck`` (pitch down, yaw to the left, roll) spread over neck01 and head; ``root`` whole-body lean.

The limb numbers are turned into bone rotations geometrically: the upper limb is swung (smallest
rotation) from its rest direction (this body's own skeleton) to the target direction, then twisted about
it; elbows and knees rotate about their hinge axis (elbow: the rest bend plane; knee: +X) by the
difference between wanted and rest flexion.  So the same numbers give the same posture on every body.

Base poses (``BASE_POSES``): standing, a_pose, t_pose, walking, running, arms_raised, arms_crossed,
reaching, sitting_like, crouching.  Asymmetric ones are mirrored at random.  Each angle then gets
Gaussian noise (``NOISE``, times ``perturb``) and is clipped to ``LIMITS`` (adult range of motion,
rounded).

Self-intersection (:func:`self_intersection`): each body part (train.bodies.PART_NAMES) is approximated
by a capsule (principal axis of its posed vertices, radius = median distance to that axis); a vertex of
one part lying deeper than ``CAPSULE_DEPTH`` x radius inside the capsule of a non-adjacent part counts
as intersecting.  More than ``MAX_BAD_VERTICES`` such vertices rejects the pose (the body sampler then
draws another).  ~5 ms per body.
"""

from __future__ import annotations

import copy

import numpy as np

from core.geometry import point_segment_distance, rotation_about, rotvec_to_matrix, smallest_rotation

MAX_BAD_VERTICES = 40
CAPSULE_DEPTH = 0.6

# Per-joint anatomical limits (degrees), applied after noise.
LIMITS = {
    "arm.abd": (-10, 180), "arm.fwd": (-60, 175), "arm.twist": (-70, 90), "arm.elbow": (0, 150),
    "arm.wrist": (-60, 60),
    "leg.abd": (-20, 45), "leg.fwd": (-30, 125), "leg.twist": (-30, 40), "leg.knee": (0, 150),
    "leg.ankle": (-30, 30),
    "spine.0": (-20, 45), "spine.1": (-30, 30), "spine.2": (-35, 35),
    "neck.0": (-40, 50), "neck.1": (-70, 70), "neck.2": (-35, 35),
    "root.0": (-30, 45), "root.1": (-15, 15), "root.2": (-15, 15),
}
# Standard deviation of the per-joint noise (degrees) at perturb = 1.
NOISE = {
    "arm.abd": 12, "arm.fwd": 12, "arm.twist": 15, "arm.elbow": 12, "arm.wrist": 15,
    "leg.abd": 4, "leg.fwd": 8, "leg.twist": 8, "leg.knee": 8, "leg.ankle": 8,
    "spine.0": 6, "spine.1": 5, "spine.2": 8,
    "neck.0": 10, "neck.1": 20, "neck.2": 8, "root.0": 0, "root.1": 0, "root.2": 0,
}


def _arm(abd=8.0, fwd=5.0, twist=0.0, elbow=10.0, wrist=(0.0, 0.0, 0.0)):
    return {"abd": abd, "fwd": fwd, "twist": twist, "elbow": elbow, "wrist": list(wrist)}


def _leg(abd=3.0, fwd=0.0, twist=0.0, knee=3.0, ankle=(0.0, 0.0, 0.0)):
    return {"abd": abd, "fwd": fwd, "twist": twist, "knee": knee, "ankle": list(ankle)}


def _pose(arm_l=None, arm_r=None, leg_l=None, leg_r=None, spine=(0, 0, 0), neck=(0, 0, 0),
          root=(0, 0, 0)):
    return {"arm_l": arm_l or _arm(), "arm_r": arm_r or _arm(), "leg_l": leg_l or _leg(),
            "leg_r": leg_r or _leg(), "spine": list(spine), "neck": list(neck), "root": list(root)}


BASE_POSES = {
    "standing": _pose(),
    "a_pose": _pose(_arm(45, 0, 0, 5), _arm(45, 0, 0, 5), _leg(6), _leg(6)),
    "t_pose": _pose(_arm(90, 0, 0, 0), _arm(90, 0, 0, 0), _leg(4), _leg(4)),
    "walking": _pose(_arm(8, -25, 0, 20), _arm(8, 25, 0, 30), _leg(2, 25, 0, 10), _leg(2, -15, 0, 25)),
    "running": _pose(_arm(12, -40, 0, 90), _arm(12, 50, 10, 90), _leg(3, 55, 0, 70),
                     _leg(3, -25, 0, 95), spine=(12, 0, 0)),
    "arms_raised": _pose(_arm(165, 10, 0, 10), _arm(165, 10, 0, 10), _leg(6), _leg(6)),
    "arms_crossed": _pose(_arm(25, 45, 75, 105), _arm(25, 45, 75, 105), _leg(5), _leg(5)),
    "reaching": _pose(_arm(20, 85, 0, 5), _arm(8, 5, 0, 15), _leg(4, 5), _leg(4, -5), spine=(12, 0, 8)),
    "sitting_like": _pose(_arm(10, 35, 10, 60), _arm(10, 35, 10, 60), _leg(6, 85, 0, 90),
                          _leg(6, 85, 0, 90), spine=(5, 0, 0)),
    "crouching": _pose(_arm(15, 50, 0, 40), _arm(15, 50, 0, 40), _leg(14, 110, 5, 130),
                       _leg(14, 110, 5, 130), spine=(30, 0, 0)),
}
ASYMMETRIC = ("walking", "running", "reaching")
# A pose no generic standing body has (left arm raised sideways, right thigh forward with the knee bent): the
# fit's test render and benchmark photo.
ARM_RAISED_KNEE_BENT = _pose(_arm(150, 10, 0, 10), _arm(10, 5, 0, 20), _leg(3, 0, 0, 3), _leg(3, 45, 0, 70))


# ----------------------------------------------------------------------------------------- rotations

def _euler(angles_deg) -> np.ndarray:
    """Small rotations about X, Y, Z (degrees), composed Z @ Y @ X."""
    ax, ay, az = (np.radians(a) for a in angles_deg)
    return rotvec_to_matrix([0, 0, az]) @ rotvec_to_matrix([0, ay, 0]) @ rotvec_to_matrix([ax, 0, 0])


def _limb_direction(abd, fwd, side_sign) -> np.ndarray:
    a, f = np.radians(abd), np.radians(fwd)
    d = np.array([side_sign * np.sin(a) * np.cos(f), -np.sin(f), -np.cos(a) * np.cos(f)])
    n = np.linalg.norm(d)
    return d / n if n > 1e-9 else np.array([0.0, 0.0, -1.0])


# --------------------------------------------------------------------------------------------- sample

def _clip(key, value):
    lo, hi = LIMITS[key]
    return float(np.clip(value, lo, hi))


def perturb_spec(spec: dict, rng: np.random.Generator, perturb: float = 1.0) -> dict:
    """Add Gaussian noise (NOISE x perturb) to every angle and clip to LIMITS."""
    out = copy.deepcopy(spec)
    for limb, group in (("arm_l", "arm"), ("arm_r", "arm"), ("leg_l", "leg"), ("leg_r", "leg")):
        for key, val in out[limb].items():
            name = f"{group}.{key}"
            if isinstance(val, list):
                out[limb][key] = [_clip(name, v + perturb * NOISE[name] * rng.standard_normal())
                                  for v in val]
            else:
                out[limb][key] = _clip(name, val + perturb * NOISE[name] * rng.standard_normal())
    for group in ("spine", "neck", "root"):
        out[group] = [_clip(f"{group}.{i}", v + perturb * NOISE[f"{group}.{i}"] * rng.standard_normal())
                      for i, v in enumerate(out[group])]
    return out


def mirror_spec(spec: dict) -> dict:
    out = copy.deepcopy(spec)
    out["arm_l"], out["arm_r"] = out["arm_r"], out["arm_l"]
    out["leg_l"], out["leg_r"] = out["leg_r"], out["leg_l"]
    out["spine"][1:] = [-v for v in out["spine"][1:]]
    out["neck"][1:] = [-v for v in out["neck"][1:]]
    out["root"][1:] = [-v for v in out["root"][1:]]
    for limb in ("arm_l", "arm_r"):
        w = out[limb]["wrist"]
        out[limb]["wrist"] = [w[0], -w[1], -w[2]]
    for limb in ("leg_l", "leg_r"):
        w = out[limb]["ankle"]
        out[limb]["ankle"] = [w[0], -w[1], -w[2]]
    return out


def spec_to_deltas(spec: dict, rest: dict) -> dict:
    """Anatomical angles -> {bone: 3x3 rotation} (local-ref deltas) for a body with rest bone heads `rest`."""
    deltas = {}
    for side, s in (("L", 1.0), ("R", -1.0)):
        arm = spec[f"arm_{side.lower()}"]
        sh, el, wr = rest[f"upperarm01.{side}"], rest[f"lowerarm01.{side}"], rest[f"wrist.{side}"]
        a, b = el - sh, wr - el
        hinge = np.cross(a, b)
        if np.linalg.norm(hinge) < 1e-3 * np.linalg.norm(a) * np.linalg.norm(b):
            hinge = np.cross(a, [0.0, -1.0, 0.0])
        hinge = hinge / np.linalg.norm(hinge)
        rest_flex = np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b),
                                                 -1, 1)))
        d = _limb_direction(arm["abd"], arm["fwd"], s)
        deltas[f"upperarm01.{side}"] = rotation_about(d, s * arm["twist"]) @ smallest_rotation(a, d)
        deltas[f"lowerarm01.{side}"] = rotation_about(hinge, arm["elbow"] - rest_flex)
        w = arm["wrist"]
        deltas[f"wrist.{side}"] = _euler([w[0], s * w[1], s * w[2]])

        leg = spec[f"leg_{side.lower()}"]
        hip, kn, an = rest[f"upperleg01.{side}"], rest[f"lowerleg01.{side}"], rest[f"foot.{side}"]
        t, c = kn - hip, an - kn
        # signed rest knee flexion about +X (positive = shin backwards)
        rest_knee = np.degrees(np.arctan2(np.dot(np.cross(t, c), [1.0, 0, 0]), np.dot(t, c)))
        d = _limb_direction(leg["abd"], leg["fwd"], s)
        deltas[f"upperleg01.{side}"] = rotation_about(d, s * leg["twist"]) @ smallest_rotation(t, d)
        deltas[f"lowerleg01.{side}"] = rotation_about([1.0, 0, 0], leg["knee"] - rest_knee)
        k = leg["ankle"]
        deltas[f"foot.{side}"] = _euler([k[0], s * k[1], s * k[2]])

    fl, sb, tw = spec["spine"]
    for bone in ("spine03", "spine02", "spine01"):
        deltas[bone] = _euler([fl / 3, sb / 3, tw / 3])
    p, y, r = spec["neck"]
    deltas["neck01"] = _euler([p / 2, r / 2, y / 2])
    deltas["head"] = _euler([p / 2, r / 2, y / 2])
    if any(spec["root"]):
        deltas["root"] = _euler(spec["root"])
    return deltas


def neutral_rest() -> dict:
    """The bone heads of anny's neutral body (every phenotype value 0.5): the skeleton the body model's pose
    prior and the pose lifter's data draw their poses on."""
    from core.body_model import PHENOTYPE_KEYS
    from train.bodies import rest_skeleton

    return {k: v for k, v in rest_skeleton({k: 0.5 for k in PHENOTYPE_KEYS}).items() if k != "__vertices__"}


def fit_rotvecs(pose: dict) -> np.ndarray:
    """(len(FIT_BONES), 3) a sampled pose's local-ref rotations of the bones the fit moves, as axis-angles."""
    from scipy.spatial.transform import Rotation

    from core.body_model import FIT_BONES

    return np.stack([Rotation.from_matrix(pose["deltas"].get(b, np.eye(3))).as_rotvec() for b in FIT_BONES])


def sample_pose(rng: np.random.Generator, rest: dict, kind: str | None = None,
                perturb: float = 1.0) -> dict:
    """{'kind', 'mirrored', 'spec' (angles, JSON-able), 'deltas' ({bone: 3x3})} for one random pose."""
    kinds = list(BASE_POSES)
    if kind is None:
        kind = kinds[int(rng.integers(len(kinds)))]
    spec = BASE_POSES[kind]
    mirrored = bool(kind in ASYMMETRIC and rng.random() < 0.5)
    if mirrored:
        spec = mirror_spec(spec)
    spec = perturb_spec(spec, rng, perturb) if perturb > 0 else copy.deepcopy(spec)
    return {"kind": kind, "mirrored": mirrored, "perturb": perturb, "spec": spec,
            "deltas": spec_to_deltas(spec, rest)}


# ------------------------------------------------------------------------------- self-intersection

_ADJACENT = {
    ("head", "torso"), ("torso", "upper_arm_l"), ("torso", "upper_arm_r"), ("upper_arm_l", "lower_arm_l"),
    ("upper_arm_r", "lower_arm_r"), ("lower_arm_l", "hand_l"), ("lower_arm_r", "hand_r"),
    ("torso", "upper_leg_l"), ("torso", "upper_leg_r"), ("upper_leg_l", "lower_leg_l"),
    ("upper_leg_r", "lower_leg_r"), ("lower_leg_l", "foot_l"), ("lower_leg_r", "foot_r"),
    ("upper_leg_l", "upper_leg_r"), ("head", "upper_arm_l"), ("head", "upper_arm_r"),
    # a hand resting on the other forearm (arms crossed) is contact, not a collision
    ("hand_l", "lower_arm_r"), ("hand_r", "lower_arm_l"),
}


def _capsule(points):
    c = points.mean(0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    ax = vt[0]
    t = (points - c) @ ax
    p0, p1 = c + ax * t.min(), c + ax * t.max()
    r = float(np.median(point_segment_distance(points, p0, p1)))
    return p0, p1, r


def self_intersection(vertices, joints, parts, bone_labels=None, depth=CAPSULE_DEPTH) -> dict:
    """Count vertices deep inside the capsule of a non-adjacent body part (see module doc)."""
    from train.bodies import PART_NAMES

    caps = {}
    for i, name in enumerate(PART_NAMES[1:], start=1):
        sel = parts == i
        if sel.sum() >= 8:
            caps[name] = (sel, _capsule(vertices[sel]))
    bad = 0
    worst = None
    names = list(caps)
    for a in names:
        for b in names:
            if a == b or (a, b) in _ADJACENT or (b, a) in _ADJACENT:
                continue
            sel_a = caps[a][0]
            p0, p1, r = caps[b][1]
            n = int((point_segment_distance(vertices[sel_a], p0, p1) < depth * r).sum())
            if n:
                bad += n
                if worst is None or n > worst[2]:
                    worst = (a, b, n)
    return {"bad_vertices": bad, "worst": list(worst) if worst else None}
