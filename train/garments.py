"""Garments and hair as closed surfaces around a posed Anny body (pure numpy/scipy/skimage, no bpy).

Why: a body model's offset skin teaches a volume network nothing the body model lacks; skirts, coats, hoods
and long hair do.  Each garment is made as a *solid* in a metric voxel grid around the posed body (a union
of simple shapes: a shell at distance ``t`` around chosen body parts, cloth hanging under gravity from what
supports it and widening to the hem, truncated cones along the legs, a curtain of hair behind the head),
and its surface is taken by marching cubes, so every garment is a watertight mesh.  The shells are made of the parts' *interior* plus
the band around the skin, so a garment encloses what it covers (it never cuts through the body) and,
being built from the posed body, moves with the pose.

``sample_garments(rng, kinds)`` draws the garment specs (JSON-able: kind, sizes, looseness, material);
``make_garments(body, specs)`` turns them into meshes (``Garment``).  Both depend only on their inputs, so a
sample's garments are reproducible from its meta.

Grid: voxel (k, j, i) of ``BodyField`` is the point ``origin + ((i, j, k) + .5) * h`` in the body frame
(metres, z up); arrays are (z, y, x).  Heads are placed with world-z thresholds (brow, ears), so a strongly
tilted head gets an approximate face opening.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.bodies import PART, Body

KINDS = ("skirt", "dress", "coat", "trousers", "hood", "hair", "shoes", "boots")
GRID_M = 0.016               # voxel size of the garment grid (metres) for a 1.7 m person
ADULT_M = 1.7                # sizes in a spec are for a person this tall; they scale with the body
METRES = ("ease", "flare", "gap", "drop", "width", "sole", "height")  # spec keys that are lengths
TEXTURES = ("plain", "noise", "stripes", "checker", "denim")

_LEGS = [PART[k] for k in ("upper_leg_l", "upper_leg_r", "lower_leg_l", "lower_leg_r")]
_ARMS = [PART[k] for k in ("upper_arm_l", "upper_arm_r", "lower_arm_l", "lower_arm_r")]
_HANDS = [PART["hand_l"], PART["hand_r"]]
_FEET = [PART["foot_l"], PART["foot_r"]]
_TORSO, _HEAD = [PART["torso"]], [PART["head"]]


@dataclass
class Garment:
    kind: str
    vertices: np.ndarray     # (N, 3) body frame, metres
    faces: np.ndarray        # (F, 3), outward
    parts: np.ndarray        # (N,) uint8: the body part nearest each vertex (for the part-label image)
    spec: dict               # what sample_garments drew (material included)


# ------------------------------------------------------------------------------------------ sampling

def _cloth(rng, dark=0.05, light=0.9, textures=TEXTURES) -> dict:
    from train.scene import _colour
    tex = textures[int(rng.integers(len(textures)))]
    c = _colour(rng, dark, light)
    c2 = _colour(rng, dark, light) if tex != "denim" else [0.6 * x for x in c]
    if tex == "denim":  # blue-grey cotton twill
        c = [float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.25, 0.55))]
        c2 = [0.55 * x for x in c]
    return dict(colour=c, colour2=c2, texture=tex, scale=float(rng.uniform(3, 25)),
                roughness=float(rng.uniform(0.6, 0.95)))


def sample_garment(rng, kind: str) -> dict:
    """One garment's spec: kind, sizes (metres or fractions) and material."""
    u = rng.uniform
    spec = dict(kind=kind, ease=float(u(0.03, 0.05)), material=_cloth(rng))
    if kind in ("skirt", "dress"):
        spec.update(length=float(u(0.25, 1.0)), flare=float(u(0.02, 0.2)))
    if kind == "dress":
        spec.update(sleeve=float(u(0.0, 0.15)))
    elif kind == "coat":
        spec.update(ease=float(u(0.035, 0.06)), length=float(u(0.15, 0.7)), flare=float(u(0.0, 0.1)),
                    open=bool(rng.random() < 0.5), gap=float(u(0.04, 0.1)))
    elif kind == "trousers":
        spec.update(flare=float(u(0.0, 0.08)))
    elif kind == "hood":
        spec.update(ease=float(u(0.035, 0.06)), up=bool(rng.random() < 0.6))
    elif kind == "hair":
        from train.scene import HAIR_COLOURS
        col = list(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))])
        spec.update(ease=float(u(0.03, 0.05)), drop=float(u(0.0, 0.3)), width=float(u(0.03, 0.1)),
                    material=dict(colour=col, colour2=[0.7 * x for x in col], texture="noise",
                                  scale=float(u(40, 90)), roughness=float(u(0.35, 0.55))))
    elif kind in ("shoes", "boots"):
        spec.update(ease=float(u(0.024, 0.032)), sole=float(u(0.015, 0.04)),
                    material=_cloth(rng, 0.02, 0.5, ("plain", "noise")))
        if kind == "boots":
            spec.update(height=float(u(0.1, 0.3)))
    return spec


def sample_garments(rng, kinds=KINDS) -> list[dict]:
    """An outfit: at most one of each slot (lower body, coat, head, feet), drawn among `kinds`."""
    slots = [(("skirt", 0.3), ("dress", 0.2), ("trousers", 0.35)), (("coat", 0.35),),
             (("hood", 0.2), ("hair", 0.45)), (("shoes", 0.45), ("boots", 0.25))]
    out = []
    for slot in slots:
        r = rng.random()
        for kind, p in slot:
            if r < p:
                if kind in kinds:
                    out.append(sample_garment(rng, kind))
                break
            r -= p
    return out


# ------------------------------------------------------------------------------------------ the body field

@dataclass
class BodyField:
    """The posed body in a metric grid: inside, distance to the nearest vertex, that vertex's part."""
    origin: np.ndarray
    h: float
    occ: np.ndarray
    dist: np.ndarray
    part: np.ndarray
    z: np.ndarray            # (nz, 1, 1) voxel-centre coordinates, broadcastable
    y: np.ndarray            # (1, ny, 1)
    x: np.ndarray            # (1, 1, nx)
    marks: dict              # landmarks and axes (body frame)
    vertices: np.ndarray     # the posed body's vertices and parts
    parts: np.ndarray

    def along(self, point, axis) -> np.ndarray:
        """(P - point) . axis at every voxel centre."""
        p, a = np.asarray(point, float), np.asarray(axis, float)
        return (self.x - p[0]) * a[0] + (self.y - p[1]) * a[1] + (self.z - p[2]) * a[2]

    def of(self, parts) -> np.ndarray:
        """Voxels whose nearest skin belongs to one of `parts`."""
        lut = np.zeros(256, bool)
        lut[list(parts)] = True
        return lut[self.part]

    def shell(self, parts, t: float) -> np.ndarray:
        """The parts' interior and everything within t of their skin."""
        return (self.occ | (self.dist < t)) & self.of(parts)

    def near(self, parts, t: float) -> np.ndarray:
        return (self.dist < t) & self.of(parts)


def body_field(body: Body, h: float = GRID_M, scale: float = 1.0, margin=(0.3, 0.06, 0.12)) -> BodyField:
    """Voxelise the posed body (ray parity, train.voxelise) and its distance field in a grid of h metres."""
    from scipy.ndimage import distance_transform_edt
    from train.voxelise import voxelise

    v = np.asarray(body.vertices, float)
    side, below, above = (scale * x for x in margin)
    lo = v.min(0) - [side, side, below]
    hi = v.max(0) + [side, side, above]
    n = np.ceil((hi - lo) / h).astype(int)                       # (nx, ny, nz)
    idx = (v - lo) / h
    occ = voxelise(idx, body.faces, (n[2], n[1], n[0]))          # (z, y, x): rays along world z
    cell = np.minimum(idx.astype(int), n - 1)
    empty = np.ones((n[2], n[1], n[0]), bool)
    empty[cell[:, 2], cell[:, 1], cell[:, 0]] = False
    seed_part = np.zeros_like(empty, np.uint8)
    seed_part[cell[:, 2], cell[:, 1], cell[:, 0]] = body.parts
    dist, near = distance_transform_edt(empty, sampling=h, return_indices=True)
    part = seed_part[near[0], near[1], near[2]]
    axes = [lo[k] + (np.arange(n[k]) + 0.5) * h for k in range(3)]
    return BodyField(origin=lo, h=h, occ=occ, dist=dist.astype(np.float32), part=part,
                     x=axes[0][None, None, :], y=axes[1][None, :, None], z=axes[2][:, None, None],
                     marks=landmarks(body, scale), vertices=v, parts=np.asarray(body.parts))


def _unit(a):
    a = np.asarray(a, float)
    return a / max(np.linalg.norm(a), 1e-9)


def _horizontal(a):
    return _unit([a[0], a[1], 0.0])


def landmarks(body: Body, s: float = 1.0) -> dict:
    """Heights, centres and torso/head axes from the posed COCO keypoints and vertices; s: size scale."""
    c = body.coco17
    hip, sh = (c[11] + c[12]) / 2, (c[5] + c[6]) / 2
    right = _horizontal(c[11] - c[12] + c[5] - c[6])              # towards the body's left
    front = _unit(np.cross([0.0, 0.0, 1.0], right))
    if np.dot(front, c[0] - sh) < 0:
        front = -front
    ear = (c[3] + c[4]) / 2
    face = _horizontal(c[0] - ear)
    head = body.vertices[np.isin(body.parts, _HEAD)]
    return dict(hip=hip, sh=sh, right=right, front=front, ear=ear, face=face,
                head_right=_horizontal(c[3] - c[4]),
                waist_z=float(hip[2] + 0.3 * (sh[2] - hip[2])), knee_z=float((c[13][2] + c[14][2]) / 2),
                ankle_z=float(min(c[15][2], c[16][2])), brow_z=float((c[1][2] + c[2][2]) / 2 + 0.03 * s), s=s,
                head_rx=float(np.abs((head - ear) @ _horizontal(c[3] - c[4])).max()) if len(head) else 0.08,
                legs=[(c[11], c[13], c[15]), (c[12], c[14], c[16])], shoulders=(c[5], c[6]))


# ------------------------------------------------------------------------------------------ shapes

def _drape(f: BodyField, support: np.ndarray, z_top: float, z_hem: float, flare: float) -> np.ndarray:
    """Cloth hanging (gravity: world -z) from `support` down to z_hem, widening by `flare` at the hem: what
    a skirt or a coat's tail does instead of following the legs (standing: from the hips, over the gap
    between the legs; sitting: from the thighs and knees)."""
    from scipy.ndimage import distance_transform_edt

    band = (f.z >= z_hem) & (f.z <= z_top)
    hang = np.flip(np.maximum.accumulate(np.flip(support & band, 0), axis=0), 0) & band
    zs = f.z[:, 0, 0]
    for k in np.nonzero(band.reshape(-1) & hang.any(axis=(1, 2)))[0]:
        r = flare * (z_top - zs[k]) / max(z_top - z_hem, 1e-6)
        if r >= f.h / 2:
            hang[k] = distance_transform_edt(~hang[k], sampling=f.h) <= r
    return hang


def _hem(f: BodyField, length: float) -> float:
    """Hem height: `length` 0 = mid-thigh, 1 = just above the ankles."""
    m = f.marks
    top = (m["hip"][2] + m["knee_z"]) / 2
    return float(top + length * (m["ankle_z"] + 0.04 * m["s"] - top))


def _away_from_hands(f: BodyField, solid: np.ndarray, parts=_HANDS) -> np.ndarray:
    """Hanging shapes must not swallow the hands (or arms) that hang beside them."""
    return solid & ~f.near(parts, 0.04 * f.marks["s"])


def skirt(f: BodyField, g: dict) -> np.ndarray:
    m = f.marks
    hem = _hem(f, g["length"])
    band = (f.z >= hem) & (f.z <= m["waist_z"])
    hips = f.shell(_TORSO + _LEGS, g["ease"]) & band
    return hips | _away_from_hands(f, _drape(f, hips, m["waist_z"], hem, g["flare"]), _HANDS + _ARMS)


def dress(f: BodyField, g: dict) -> np.ndarray:
    m = f.marks
    bodice = f.shell(_TORSO, g["ease"]) & (f.z >= m["waist_z"] - g["ease"]) & (f.z <= m["sh"][2] + 0.02 * m["s"])
    if g["sleeve"] > 0.02:
        reach = np.minimum(*(np.sqrt((f.x - s[0]) ** 2 + (f.y - s[1]) ** 2 + (f.z - s[2]) ** 2)
                             for s in m["shoulders"]))
        bodice |= f.shell(_ARMS, g["ease"]) & (reach < g["sleeve"] + 0.05 * m["s"])
    return bodice | skirt(f, g)


def coat(f: BodyField, g: dict) -> np.ndarray:
    m = f.marks
    hem = _hem(f, g["length"])
    body = f.shell(_ARMS, g["ease"]) | (f.shell(_TORSO, g["ease"]) & (f.z <= m["sh"][2] + 0.05 * m["s"]))
    hips = f.shell(_TORSO + _LEGS, g["ease"]) & (f.z >= hem) & (f.z <= m["waist_z"])
    body |= hips
    tail = _away_from_hands(f, _drape(f, hips, m["waist_z"], hem, g["flare"]))
    if g["open"]:  # the front opens below the waist: the legs show between the panels
        strip = (f.along(m["hip"], m["front"]) > 0) & (np.abs(f.along(m["hip"], m["right"])) < g["gap"])
        tail &= ~(strip & (f.z < m["waist_z"] - 0.05 * m["s"]))
    return body | tail


def _segment_distance(f: BodyField, a, b):
    """(distance to segment a-b, position t along it, unclipped) at every voxel centre."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = f.along(a, ab) / max(float(ab @ ab), 1e-9)
    tc = np.clip(t, 0.0, 1.0)
    d2 = ((f.x - a[0] - tc * ab[0]) ** 2 + (f.y - a[1] - tc * ab[1]) ** 2 + (f.z - a[2] - tc * ab[2]) ** 2)
    return np.sqrt(d2), t


def _limb_radius(f: BodyField, a, b, parts) -> float:
    """How far the parts' skin reaches from the bone a-b (90th percentile over the bone's middle)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    v = f.vertices[np.isin(f.parts, parts)] - a
    ab = b - a
    t = v @ ab / max(float(ab @ ab), 1e-9)
    d = np.linalg.norm(v - t[:, None] * ab, axis=1)[(t > 0.15) & (t < 0.85)]
    return float(np.percentile(d, 90)) if len(d) else 0.07


def trousers(f: BodyField, g: dict) -> np.ndarray:
    m = f.marks
    legs = np.zeros_like(f.occ)
    for (hip, knee, ankle), thigh, shin in zip(m["legs"], (PART["upper_leg_l"], PART["upper_leg_r"]),
                                                (PART["lower_leg_l"], PART["lower_leg_r"])):
        d, _ = _segment_distance(f, hip, knee)
        legs |= d < _limb_radius(f, hip, knee, [thigh]) + g["ease"]
        d, t = _segment_distance(f, knee, ankle)
        r = _limb_radius(f, knee, ankle, [shin]) + g["ease"] + g["flare"] * np.clip(t, 0, 1)
        legs |= (d < r) & (t <= 1.0)
    solid = _away_from_hands(f, legs, _HANDS + _ARMS) | f.shell(_TORSO + _LEGS, g["ease"])
    return solid & (f.z <= m["waist_z"])


def _face(f: BodyField) -> np.ndarray:
    """The face: in front of the ears and below the brow (left open by hoods and hair)."""
    m = f.marks
    return (f.along(m["ear"], m["face"]) > 0.0) & (f.z < m["brow_z"])


def hood(f: BodyField, g: dict) -> np.ndarray:
    m = f.marks
    neck_lo, chin = m["sh"][2] - 0.03 * m["s"], m["brow_z"] - 0.11 * m["s"]
    collar = f.shell(_TORSO + _HEAD, g["ease"]) & (f.z >= neck_lo) & (f.z <= chin)
    if g["up"]:
        collar |= f.shell(_HEAD, g["ease"] + 0.01 * m["s"])
    return collar & ~_face(f)


def hair(f: BodyField, g: dict) -> np.ndarray:
    m = f.marks
    behind = f.along(m["ear"], m["face"]) < 0.01 * m["s"]
    cap = f.shell(_HEAD, g["ease"]) & ((f.z >= m["brow_z"]) | behind)
    side = np.abs(f.along(m["ear"], m["head_right"])) < m["head_rx"] + g["width"]
    end = m["sh"][2] - g["drop"]
    curtain = behind & side & (f.z >= end) & (f.z <= m["ear"][2]) & f.shell(_HEAD + _TORSO, g["ease"] + 0.03 * m["s"])
    return (cap | _away_from_hands(f, curtain, _HANDS + _ARMS)) & ~_face(f)


def _soled(f: BodyField, upper: np.ndarray, sole: float) -> np.ndarray:
    """The upper plus a sole: the upper's own footprint repeated `sole` metres further down."""
    out = upper.copy()
    for k in range(1, int(round(sole / f.h)) + 1):
        out[:-k] |= upper[k:]
    return out


def shoes(f: BodyField, g: dict) -> np.ndarray:
    return _soled(f, f.shell(_FEET, g["ease"]) & (f.z <= f.marks["ankle_z"] + 0.02 * f.marks["s"]), g["sole"])


def boots(f: BodyField, g: dict) -> np.ndarray:
    upper = f.shell(_FEET + _LEGS, g["ease"]) & (f.z <= f.marks["ankle_z"] + g["height"])
    return _soled(f, upper, g["sole"])


SHAPES = dict(skirt=skirt, dress=dress, coat=coat, trousers=trousers, hood=hood, hair=hair, shoes=shoes,
              boots=boots)


# ------------------------------------------------------------------------------------------ meshes

def solid_to_mesh(f: BodyField, solid: np.ndarray, smooth: float = 0.6):
    """Watertight surface of a voxel solid: marching cubes on the (slightly blurred) occupancy, padded so
    the surface closes at the grid's edges. Returns (vertices (N, 3) body frame, faces (F, 3) outward)."""
    from scipy.ndimage import gaussian_filter
    from skimage.measure import marching_cubes

    nz = np.nonzero(solid)
    lo = np.maximum([a.min() - 3 for a in nz], 0)
    hi = [a.max() + 4 for a in nz]
    box = solid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    field = np.pad(gaussian_filter(box.astype(np.float32), smooth), 2)
    verts, faces, _, _ = marching_cubes(field, 0.5)
    zyx = verts - 2 + lo
    xyz = f.origin + (zyx[:, ::-1] + 0.5) * f.h
    return xyz, faces.astype(np.int64)


def size_scale(body: Body) -> float:
    """Garment sizes (and the grid) scale with the body: an infant's shoes are not an adult's."""
    height = float(np.ptp(body.vertices[:, 2]))
    return float(np.clip(height / ADULT_M, 0.45, 1.2))


def make_garments(body: Body, specs: list[dict], h: float = GRID_M) -> list[Garment]:
    """The meshes of `specs` around the posed `body` (empty when specs is empty)."""
    if not specs:
        return []
    s = size_scale(body)
    f = body_field(body, h * s, s)
    out = []
    for spec in specs:
        scaled = {k: (v * s if k in METRES else v) for k, v in spec.items()}
        solid = SHAPES[spec["kind"]](f, scaled)
        if not solid.any():
            continue
        v, faces = solid_to_mesh(f, solid)
        cell = np.clip(((v - f.origin) / f.h).astype(int), 0, np.array(f.part.shape[::-1]) - 1)
        out.append(Garment(kind=spec["kind"], vertices=v, faces=faces,
                           parts=f.part[cell[:, 2], cell[:, 1], cell[:, 0]], spec=spec))
    return out
