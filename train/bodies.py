"""Anny bodies for the synthetic data: random shape from anny's own shape distribution, random pose,
and everything the ground truth needs from the same posed body.

Frame of a :class:`Body` ("body frame"): Anny's world frame, metres, Z up, the person faces -Y, the
person's left is +X; the lowest vertex sits on z = 0 and the pelvis on x = y = 0.

What a body carries (all from the same posed mesh):

* ``vertices`` (N, 3), ``faces`` (F, 3): the Anny "anny" topology (13,718 vertices, triangles).
* ``joints`` (104, 3): the heads of Anny's 104 bones, in ``JOINT_NAMES`` order (= ``model.bone_labels``).
* ``coco17`` (17, 3): anny's own COCO keypoint regressor (``anny.KeypointsRegressor.coco``), first 17 labels.
* ``landmarks16`` (16, 3): the design's 16 MPII joints.  Mapping (one rule with the detector, see
  ``core.landmarks``): ankles, knees, hips, wrists, elbows, shoulders are the COCO keypoints of the same
  name (anny regresses them from vertices, so they sit where a photo annotator puts them); pelvis =
  mid-hips; thorax = mid-shoulders; head centre = mid-ears; upper neck = thorax + 0.5 (head centre -
  thorax); head top = head centre + 0.6 (head centre - thorax).  ``core.landmarks.mpii16_from_coco17``
  applies the same rule in 2D; the samples' 2D landmarks are that function applied to the projected COCO
  points, so they match detections made by mediapipe on photos exactly in definition.
* ``parts`` (N,) uint8 per-vertex labels, ``PART_NAMES`` (0 = background, never on a vertex):
  head, hands and feet come from anny's own segmentation texture (``anny/data/segmentation``: head,
  eyes, mouth cavity, tongue -> head; hand.L/R; foot.L/R); the rest of the body ("body" in anny's map)
  is split by the vertex's dominant skinning bone: neck bones -> head, shoulder01/upperarm* -> upper
  arm, lowerarm* -> lower arm, wrist/finger*/metacarpal* -> hand, upperleg* -> upper leg,
  lowerleg* -> lower leg, foot/toe* -> foot, everything else (root, pelvis, spine, clavicle) -> torso.
  Scans carry ``PART_UNKNOWN`` (255) on every vertex.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from core import landmarks as core_landmarks

PART_NAMES = (
    "background", "head", "torso",
    "upper_arm_r", "lower_arm_r", "hand_r", "upper_arm_l", "lower_arm_l", "hand_l",
    "upper_leg_r", "lower_leg_r", "foot_r", "upper_leg_l", "lower_leg_l", "foot_l",
)
PART = {name: i for i, name in enumerate(PART_NAMES)}
PART_UNKNOWN = 255  # a person pixel/vertex whose part is not known (scans)

COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

DEFAULT_CACHE = os.path.expanduser("~/.cache/monohuman/anny")


@dataclass
class Body:
    vertices: np.ndarray            # (N, 3) float64, body frame
    faces: np.ndarray               # (F, 3) int64
    parts: np.ndarray               # (N,) uint8
    joints: np.ndarray              # (J, 3) float64 (J = 104 for Anny, 0 for scans)
    joint_names: tuple
    coco17: np.ndarray              # (17, 3), NaN for scans
    landmarks16: np.ndarray         # (16, 3) body frame, NaN for scans
    rest_vertices: np.ndarray       # (N, 3) same shape, no pose (Anny rest = A-pose); = vertices for scans
    params: dict = field(default_factory=dict)  # JSON-able: phenotype, pose, ...
    source: str = "anny"

    @property
    def height(self) -> float:
        return float(self.vertices[:, 2].max() - self.vertices[:, 2].min())


# --------------------------------------------------------------------------------------------- model

@lru_cache(maxsize=1)
def get_model():
    """The Anny model (default rig/topology, local-ref poses), loaded once per process (~3 s from cache)."""
    os.environ.setdefault("ANNY_CACHE_DIR", DEFAULT_CACHE)
    import torch
    import anny

    torch.set_num_threads(1)
    return anny.Anny()


@dataclass(frozen=True)
class AnnyTopology:
    """What every Anny body shares (the default rig and topology), built once per process by `topology()`."""

    faces: np.ndarray  # (F, 3) int64 triangles
    parts: np.ndarray  # (N,) uint8 part labels (PART_NAMES), see the module docstring
    kp_weights: np.ndarray  # (17, N) anny's COCO keypoint regressor: coco17 = kp_weights @ vertices
    bone_labels: tuple  # the 104 bone names, in JOINT order (= model.bone_labels)
    bone_parents: tuple  # parent index per bone (-1 = root)
    dist: object  # anny.shape_distribution.SimpleShapeDistribution: the phenotype law (sample_phenotype)


def _bone_part(name: str) -> int:
    """The part a vertex belongs to when `name` is its dominant skinning bone (the module docstring's rule)."""
    side = "l" if name.endswith(".L") else "r"
    if name.startswith(("neck", "head", "eye")):
        return PART["head"]
    if name.startswith(("shoulder01", "upperarm")):
        return PART[f"upper_arm_{side}"]
    if name.startswith("lowerarm"):
        return PART[f"lower_arm_{side}"]
    if name.startswith(("wrist", "finger", "metacarpal")):
        return PART[f"hand_{side}"]
    if name.startswith("upperleg"):
        return PART[f"upper_leg_{side}"]
    if name.startswith("lowerleg"):
        return PART[f"lower_leg_{side}"]
    if name.startswith(("foot", "toe")):
        return PART[f"foot_{side}"]
    return PART["torso"]


def _vertex_parts(model, faces: np.ndarray, labels: list) -> np.ndarray:
    """Per-vertex part labels: the dominant skinning bone's part, overridden by anny's segmentation texture
    (per face) for head, hands and feet."""
    from anny.face_segmentation import get_face_segmentation_mask

    n = model.template_vertices.shape[0]
    bidx = model.vertex_bone_indices.cpu().numpy()
    bw = model.vertex_bone_weights.cpu().numpy()
    dom = bidx[np.arange(n), bw.argmax(1)]
    parts = np.array([_bone_part(b) for b in labels], dtype=np.uint8)[dom]
    seg = [(["head", "eye_back.L", "eye_front.L", "eye_back.R", "eye_front.R", "eye_cavity.L",
             "eye_cavity.R", "mouth_cavity", "tongue"], PART["head"]),
           (["hand.L"], PART["hand_l"]), (["hand.R"], PART["hand_r"]),
           (["foot.L"], PART["foot_l"]), (["foot.R"], PART["foot_r"])]
    for names, part in seg:
        fmask = get_face_segmentation_mask(model, names).cpu().numpy()
        parts[np.unique(faces[fmask])] = part
    return parts


@lru_cache(maxsize=1)
def topology() -> AnnyTopology:
    """Faces, part labels, keypoint regressor, bone names and shape distribution of the Anny model."""
    import anny
    from anny.shape_distribution import SimpleShapeDistribution

    model = get_model()
    faces = model.faces.cpu().numpy().astype(np.int64)
    labels = list(model.bone_labels)
    kp = anny.KeypointsRegressor.coco(model, labels=list(COCO17_NAMES))
    return AnnyTopology(faces=faces, parts=_vertex_parts(model, faces, labels),
                        kp_weights=kp.regression_weights.cpu().numpy(), bone_labels=tuple(labels),
                        bone_parents=tuple(int(p) for p in model.bone_parents),
                        dist=SimpleShapeDistribution(model))


# --------------------------------------------------------------------------------------------- shape

def sample_phenotype(rng: np.random.Generator) -> dict:
    """Draw anny's phenotype from its own SimpleShapeDistribution, with numpy's rng (deterministic).

    Same law as ``SimpleShapeDistribution.sample``: morphological age ~ U(0, 90) years, gender ~ U(0, 1),
    height/weight/muscle/proportions ~ Beta(alpha(age), beta(age)) for boys (gender <= 0.5) or girls.
    """
    import torch

    dist = topology().dist
    morph_age = float(rng.uniform(0.0, 90.0))
    gender = float(rng.uniform(0.0, 1.0))
    age = dist.morphological_age_mapping.morphological_to_anny_age(
        torch.tensor([morph_age], dtype=torch.float64))
    who = "boys" if gender <= 0.5 else "girls"
    out = {"gender": gender, "age": float(age[0])}
    for key in ("height", "weight", "muscle", "proportions"):
        cond = getattr(dist, f"{who}_conditional_{key}_distribution")
        a, b = cond.get_distribution_params(age)
        out[key] = float(rng.beta(float(a[0]), float(b[0])))
    return {"morphological_age_years": morph_age, "phenotype": out}


# --------------------------------------------------------------------------------------------- forward

def _forward(phenotype: dict, deltas: dict | None):
    import torch

    model = get_model()
    ph = {k: torch.tensor([v], dtype=model.dtype) for k, v in phenotype.items()}
    pose = None
    if deltas:
        pose = {}
        for name, R in deltas.items():
            M = torch.eye(4, dtype=model.dtype)
            M[:3, :3] = torch.as_tensor(R, dtype=model.dtype)
            pose[name] = M[None]
    with torch.no_grad():
        out = model(pose_parameters=pose, phenotype_kwargs=ph)
    verts = out["vertices"][0].cpu().numpy().astype(np.float64)
    heads = out["bone_poses"][0, :, :3, 3].cpu().numpy().astype(np.float64)
    return verts, heads


def rest_skeleton(phenotype: dict) -> dict:
    """Bone heads of the unposed (rest, A-pose) body: {bone name: (3,)} plus 'vertices'."""
    verts, heads = _forward(phenotype, None)
    labels = topology().bone_labels
    out = {name: heads[i] for i, name in enumerate(labels)}
    out["__vertices__"] = verts
    return out


def landmarks16_3d(coco17: np.ndarray) -> np.ndarray:
    """(17, 3) COCO points in 3D -> (16, 3) MPII joints in 3D, the rule of core.landmarks."""
    c = {n: np.asarray(coco17[i], dtype=np.float64) for i, n in enumerate(COCO17_NAMES)}
    thorax = (c["left_shoulder"] + c["right_shoulder"]) / 2
    head = (c["left_ear"] + c["right_ear"]) / 2
    pts = dict(
        r_ankle=c["right_ankle"], r_knee=c["right_knee"], r_hip=c["right_hip"], l_hip=c["left_hip"],
        l_knee=c["left_knee"], l_ankle=c["left_ankle"], pelvis=(c["left_hip"] + c["right_hip"]) / 2,
        thorax=thorax, upper_neck=thorax + core_landmarks.UPPER_NECK_FRACTION * (head - thorax),
        head_top=head + core_landmarks.HEAD_TOP_FRACTION * (head - thorax),
        r_wrist=c["right_wrist"], r_elbow=c["right_elbow"], r_shoulder=c["right_shoulder"],
        l_shoulder=c["left_shoulder"], l_elbow=c["left_elbow"], l_wrist=c["left_wrist"],
    )
    return np.stack([pts[n] for n in core_landmarks.MPII16_NAMES])


def make_anny_body(rng: np.random.Generator, pose_kind: str | None = None,
                   max_pose_tries: int = 12) -> Body:
    """A random Anny body: shape from anny's distribution, pose from train.poses (self-intersection checked)."""
    from train import poses

    st = topology()
    shape = sample_phenotype(rng)
    rest = rest_skeleton(shape["phenotype"])
    pose = None
    verts = heads = None
    for attempt in range(max_pose_tries):
        pose = poses.sample_pose(rng, rest, kind=pose_kind)
        verts, heads = _forward(shape["phenotype"], pose["deltas"])
        score = poses.self_intersection(verts, heads, st.parts, st.bone_labels)
        pose["intersection"] = score
        pose["attempts"] = attempt + 1
        if score["bad_vertices"] <= poses.MAX_BAD_VERTICES:
            break
    else:  # fall back to the plain base pose (always clean) rather than keep a bad one
        pose = poses.sample_pose(rng, rest, kind="standing", perturb=0.0)
        verts, heads = _forward(shape["phenotype"], pose["deltas"])
        pose["attempts"] = max_pose_tries + 1
        pose["fallback"] = True

    rest_verts = rest["__vertices__"]
    # Place: lowest vertex on z = 0, pelvis (root head) on x = y = 0.
    labels = st.bone_labels
    root = heads[labels.index("root")]
    shift = np.array([-root[0], -root[1], -verts[:, 2].min()])
    verts = verts + shift
    heads = heads + shift
    rest_verts = rest_verts - np.array([0.0, 0.0, rest_verts[:, 2].min()])
    coco = st.kp_weights @ verts
    params = dict(shape, pose={k: v for k, v in pose.items() if k != "deltas"},
                  height_m=float(verts[:, 2].max()))
    return Body(vertices=verts, faces=st.faces, parts=st.parts, joints=heads,
                joint_names=tuple(labels), coco17=coco, landmarks16=landmarks16_3d(coco),
                rest_vertices=rest_verts, params=params, source="anny")


def body_from_mesh(vertices, faces, name: str = "scan") -> Body:
    """A Body from a normalised scan (metres, Z up, feet on z = 0): no joints, unknown parts, NaN landmarks."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    centre = (v[:, :2].min(0) + v[:, :2].max(0)) / 2
    v = v - np.array([centre[0], centre[1], v[:, 2].min()])
    return Body(vertices=v, faces=f, parts=np.full(len(v), PART_UNKNOWN, np.uint8),
                joints=np.zeros((0, 3)), joint_names=(), coco17=np.full((17, 3), np.nan),
                landmarks16=np.full((16, 3), np.nan), rest_vertices=v,
                params={"scan": name, "height_m": float(v[:, 2].max())}, source="scan")
