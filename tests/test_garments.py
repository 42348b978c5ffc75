"""train.garments: every kind, made around a real posed Anny body at a tiny size, is a closed outward surface
that encloses the body parts it covers, and adds volume where it is loose."""

import numpy as np
import pytest

from train import garments
from train.bodies import PART
from train.voxelise import mesh_is_closed, voxelise, winding_numbers

N = 48  # the test volume: N^3 voxels over the body's height, orthographic front view


@pytest.fixture(scope="module")
def body():
    from train import bodies
    for seed in range(20):  # an adult standing with the feet apart (room between the legs for a skirt)
        b = bodies.make_anny_body(np.random.default_rng(seed), pose_kind="standing")
        if b.params["height_m"] > 1.5:
            return b
    raise AssertionError("no adult in 20 draws")


@pytest.fixture(scope="module")
def field(body):
    return garments.body_field(body, garments.GRID_M * garments.size_scale(body), garments.size_scale(body))


def spec_of(kind, **fixed):
    spec = garments.sample_garment(np.random.default_rng(garments.KINDS.index(kind)), kind)
    spec.update(fixed)
    return spec


def to_volume(points, body):
    """Orthographic front view: x -> W, -z -> H, y (depth) -> D; the body's height spans 0.9 N."""
    v = body.vertices
    k = 0.9 * N / np.ptp(v[:, 2])
    centre = (v.max(0) + v.min(0)) / 2
    p = np.asarray(points)
    return np.stack([(p[:, 0] - centre[0]) * k + N / 2, (centre[2] - p[:, 2]) * k + N / 2,
                     (p[:, 1] - centre[1]) * k + N / 2], axis=1)


def covered(kind, body, m):
    """Body vertices the garment must enclose (well inside its band: 3 cm margins)."""
    v, parts, s = body.vertices, body.parts, m["s"]
    z = v[:, 2]
    legs_torso = np.isin(parts, [PART[p] for p in ("torso", "upper_leg_l", "upper_leg_r")])
    band = {
        "skirt": (legs_torso, m["hip"][2], m["waist_z"]),
        "dress": (parts == PART["torso"], m["waist_z"], m["sh"][2] - 0.06 * s),
        "coat": (np.isin(parts, [PART["torso"], PART["upper_arm_l"], PART["upper_arm_r"]]),
                 m["hip"][2], m["sh"][2] - 0.06 * s),
        "trousers": (legs_torso, m["knee_z"], m["waist_z"]),
        "hood": (parts == PART["head"], m["brow_z"] + 0.03 * s, np.inf),
        "hair": (parts == PART["head"], m["brow_z"] + 0.03 * s, np.inf),
        "shoes": (np.isin(parts, [PART["foot_l"], PART["foot_r"]]), -np.inf, m["ankle_z"] - 0.03 * s),
        "boots": (np.isin(parts, [PART["foot_l"], PART["foot_r"]]), -np.inf, m["ankle_z"] - 0.03 * s),
    }[kind]
    sel, lo, hi = band
    sel = sel & (z > lo + 0.03 * s) & (z < hi - 0.03 * s)
    # where another part rests on the skin (a hand on the thigh, the arm in the armpit) there is no room
    # for cloth: the garment may give way there
    from scipy.spatial import cKDTree
    others = cKDTree(v[~np.isin(parts, np.unique(parts[sel]))])
    sel &= others.query(v, distance_upper_bound=0.03 * s)[0] > 0.03 * s
    if kind == "hood":  # the hood's opening is the face
        sel &= (v - m["ear"]) @ m["face"] < 0
    return v[sel]


EXTRA = {"skirt": dict(length=1.0, flare=0.12), "dress": dict(length=1.0, flare=0.12),
         "coat": dict(open=False), "hood": dict(up=True), "boots": dict(height=0.25)}


@pytest.mark.parametrize("kind", garments.KINDS)
def test_each_kind_is_closed_encloses_the_body_and_adds_volume(kind, body, field):
    spec = spec_of(kind, **EXTRA.get(kind, {}))
    (g,) = garments.make_garments(body, [spec])
    assert g.kind == kind and len(g.faces) > 100
    closed, oriented = mesh_is_closed(g.vertices, g.faces)
    assert closed and oriented, kind
    inner = covered(kind, body, field.marks)
    assert len(inner) > 20, kind
    wn = winding_numbers(inner, g.vertices, g.faces)
    assert np.all(wn > 0.5), (kind, int(np.sum(wn <= 0.5)), len(inner))  # outward, and nothing pokes out
    assert len(g.parts) == len(g.vertices) and set(np.unique(g.parts)) <= set(PART.values())

    shape = (N, N, N)
    body_vol = voxelise(to_volume(body.vertices, body), body.faces, shape)
    garment_vol = voxelise(to_volume(g.vertices, body), g.faces, shape)
    union = body_vol | garment_vol
    assert (union & ~body_vol).sum() > 0.02 * body_vol.sum(), kind   # strictly larger than the body


@pytest.mark.parametrize("kind", ["skirt", "dress"])
def test_long_skirt_fills_the_space_between_the_legs(kind, body, field):
    """The skirt hangs from the waist instead of following the legs: between the calves is cloth."""
    m = field.marks
    (g,) = garments.make_garments(body, [spec_of(kind, length=1.0, flare=0.1)])
    between = np.array([[m["hip"][0], m["hip"][1], (m["knee_z"] + m["ankle_z"]) / 2]])
    shape = (N, N, N)
    body_vol = voxelise(to_volume(body.vertices, body), body.faces, shape)
    garment_vol = voxelise(to_volume(g.vertices, body), g.faces, shape)
    x, y, z = np.floor(to_volume(between, body)[0]).astype(int)
    assert not body_vol[z, y, x] and garment_vol[z, y, x]


def test_garments_move_with_the_pose():
    """Generated from the posed body: a raised arm takes its coat sleeve with it."""
    from train import bodies
    up = bodies.make_anny_body(np.random.default_rng(1), pose_kind="arms_raised")
    (coat,) = garments.make_garments(up, [spec_of("coat")])
    wrist_z = up.coco17[[9, 10], 2].max()
    assert coat.vertices[:, 2].max() > wrist_z - 0.1  # the sleeves reach up to the raised wrists


def test_outfits_are_reproducible_and_respect_the_kinds():
    a = garments.sample_garments(np.random.default_rng(4))
    b = garments.sample_garments(np.random.default_rng(4))
    assert a == b
    drawn = set()
    for i in range(60):
        outfit = garments.sample_garments(np.random.default_rng(i), kinds=("skirt", "hair"))
        drawn |= {g["kind"] for g in outfit}
    assert drawn == {"skirt", "hair"}
    every = {g["kind"] for i in range(40) for g in garments.sample_garments(np.random.default_rng(i))}
    assert every == set(garments.KINDS)
