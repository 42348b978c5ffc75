"""Anny bodies, poses, the rasteriser and the sample format (real anny, CPU)."""

import os

import numpy as np
import pytest

os.environ.setdefault("ANNY_CACHE_DIR", "/root/.cache/monohuman/anny")

from core.landmarks import MPII16_NAMES  # noqa: E402
from train import bodies, poses  # noqa: E402
from train.render import rasterise  # noqa: E402
from train.samples import read_sample, unpack_volume, write_sample  # noqa: E402

NEUTRAL = {"gender": 0.3, "age": 0.6, "muscle": 0.5, "weight": 0.5, "height": 0.5, "proportions": 0.5}


def test_body_is_deterministic_and_complete():
    a = bodies.make_anny_body(np.random.default_rng([3, 1]))
    b = bodies.make_anny_body(np.random.default_rng([3, 1]))
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert a.params == b.params
    assert a.vertices.shape == (13718, 3) and a.faces.shape[1] == 3
    assert a.joints.shape == (104, 3) and len(a.joint_names) == 104
    assert a.landmarks16.shape == (16, 3) and np.all(np.isfinite(a.landmarks16))
    assert abs(a.vertices[:, 2].min()) < 1e-9
    assert set(np.unique(a.parts)) == set(range(1, len(bodies.PART_NAMES)))
    ph = a.params["phenotype"]
    assert all(0.0 <= ph[k] <= 1.0 for k in ("gender", "height", "weight", "muscle", "proportions"))


def test_shapes_span_ages():
    rng = np.random.default_rng(0)
    ages = [bodies.sample_phenotype(rng)["morphological_age_years"] for _ in range(40)]
    assert min(ages) < 15 and max(ages) > 60


def test_landmarks_follow_the_body():
    rest = bodies.rest_skeleton(NEUTRAL)
    st = bodies.topology()
    p = poses.sample_pose(np.random.default_rng(0), rest, kind="t_pose", perturb=0.0)
    v, _ = bodies._forward(NEUTRAL, p["deltas"])
    lm = dict(zip(MPII16_NAMES, bodies.landmarks16_3d(st.kp_weights @ v)))
    assert lm["head_top"][2] > lm["upper_neck"][2] > lm["thorax"][2] > lm["pelvis"][2] > lm["l_knee"][2]
    assert lm["l_wrist"][0] > 0.5 and lm["r_wrist"][0] < -0.5          # person's left is +X
    assert abs(lm["l_wrist"][2] - lm["l_shoulder"][2]) < 0.08           # T-pose: arms horizontal
    head = v[st.parts == bodies.PART["head"]]
    assert head[:, 2].min() > lm["thorax"][2] - 0.05


@pytest.mark.parametrize("kind", sorted(poses.BASE_POSES))
def test_base_poses_are_clean(kind):
    rest = bodies.rest_skeleton(NEUTRAL)
    p = poses.sample_pose(np.random.default_rng(0), rest, kind=kind, perturb=0.0)
    v, h = bodies._forward(NEUTRAL, p["deltas"])
    assert poses.self_intersection(v, h, bodies.topology().parts)["bad_vertices"] <= poses.MAX_BAD_VERTICES


def test_self_intersection_catches_an_arm_through_the_body():
    rest = bodies.rest_skeleton(NEUTRAL)
    spec = poses._pose(poses._arm(abd=-10, fwd=0, twist=90, elbow=150), poses._arm())
    spec["arm_l"]["abd"] = -40  # beyond the limit on purpose: upper arm swung into the chest
    v, h = bodies._forward(NEUTRAL, poses.spec_to_deltas(spec, rest))
    assert poses.self_intersection(v, h, bodies.topology().parts)["bad_vertices"] > poses.MAX_BAD_VERTICES


def test_rasterise_pixel_centres():
    uv = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    mask, lab, z = rasterise(uv, np.array([1.0, 1.0, 2.0, 2.0]), faces, (5, 5), np.array([4, 7], np.uint8))
    want = np.zeros((5, 5), bool)
    want[1:3, 1:3] = True
    np.testing.assert_array_equal(mask, want)
    assert set(np.unique(lab[mask])) <= {4, 7}


def test_sample_roundtrip(tmp_path):
    vol = np.random.default_rng(0).random((8, 6, 5)) > 0.5
    p = write_sample(tmp_path / "samples" / "0000000.npz", rgb=np.zeros((6, 5, 3), np.uint8),
                     mask=np.ones((6, 5), bool), parts=np.zeros((6, 5), np.uint8),
                     landmarks16=np.zeros((16, 3)), landmarks16_detected=np.full((16, 3), np.nan),
                     volume=vol, vertices_vox=np.zeros((4, 3)), joints_vox=np.zeros((2, 3)),
                     vertices_cam=np.zeros((4, 3)), joints_cam=np.zeros((2, 3)), meta={"index": 0})
    s = read_sample(p)
    np.testing.assert_array_equal(s["volume"], vol)
    np.testing.assert_array_equal(unpack_volume(s["volume_bits"], s["volume_shape"]), vol)
    assert s["mask"].dtype == np.uint8 and s["mask"].max() == 255 and s["meta"] == {"index": 0}
    assert s["volume_shape"].dtype == np.int32 and s["landmarks16"].dtype == np.float32
    assert not list((tmp_path / "samples").glob(".*.tmp"))
