"""The Anny rig as arrays, skin-weight transfer to another surface, and posing by linear blend skinning."""

from __future__ import annotations

import numpy as np
import pytest

from core.parts import PART
from core.rig import (chain_children, pose_rig, pose_transforms, raise_arm, rig_for_body, rotation_about, skin,
                      template_rig, transfer_skin_weights)
from core.template import load_template

ARM_L = [PART[p] for p in ("lower_arm_l", "hand_l")]
LEGS = [PART[p] for p in ("upper_leg_r", "lower_leg_r", "foot_r", "upper_leg_l", "lower_leg_l", "foot_l")]


@pytest.fixture(scope="module")
def anny():
    t = load_template()
    return t, template_rig(t)


@pytest.fixture(scope="module")
def vrn_like(anny):
    """A VRN-like surface: Anny's rest body voxelised at 2 cm and re-meshed by marching cubes (other vertices,
    other topology, the surface displaced by up to a voxel), with its nearest Anny part for checking."""
    import trimesh
    from scipy.spatial import cKDTree

    t, _ = anny
    grid = trimesh.Trimesh(t.rest_vertices, t.faces, process=False).voxelized(0.02)
    mesh = grid.marching_cubes
    mesh.apply_transform(grid.transform)
    nearest = cKDTree(t.rest_vertices).query(mesh.vertices)[1]
    return np.asarray(mesh.vertices), t.parts[nearest]


def test_template_rig_arrays(anny):
    t, rig = anny
    assert len(rig.names) == 104 and rig.heads.shape == rig.tails.shape == (104, 3)
    assert rig.parents[0] == -1 and all(0 <= p < b for b, p in enumerate(rig.parents) if b)
    assert np.allclose(rig.skin_weight.sum(1), 1, atol=1e-5) and rig.skin_index.shape[0] == t.full_count
    lengths = np.linalg.norm(rig.tails - rig.heads, axis=1)
    assert (lengths > 0.005).all()
    y = (rig.tails - rig.heads) / lengths[:, None]
    assert np.allclose(np.einsum("jc,jc->j", y, rig.axes[:, :, 1]), 1, atol=1e-4)  # y axis points to the tail


def test_identity_pose_leaves_the_mesh(anny):
    t, rig = anny
    posed = skin(t.rest_vertices, rig.skin_index, rig.skin_weight, pose_transforms(rig, {}))
    assert np.abs(posed - t.rest_vertices).max() < 1e-6


def test_raise_arm_moves_the_arm_and_leaves_the_legs(anny):
    t, rig = anny
    G = pose_transforms(rig, raise_arm(rig, "L", 60.0))
    moved = np.linalg.norm(skin(t.rest_vertices, rig.skin_index, rig.skin_weight, G) - t.rest_vertices, axis=1)
    assert moved[np.isin(t.parts, ARM_L)].min() > 0.1
    assert moved[np.isin(t.parts, LEGS)].max() < 1e-6
    heads, _ = pose_rig(rig, G)
    wrist = rig.index("wrist.L")
    assert heads[wrist, 2] > rig.heads[wrist, 2] + 0.2  # up (body frame: Z up)
    shoulder, elbow = rig.index("upperarm01.L"), rig.index("lowerarm01.L")
    before = rig.heads[elbow] - rig.heads[shoulder]
    after = heads[elbow] - heads[shoulder]
    angle = np.degrees(np.arccos(before @ after / np.linalg.norm(before) / np.linalg.norm(after)))
    assert angle == pytest.approx(60.0, abs=1.0)


def test_transferred_weights_sum_to_one_and_pose_the_vrn_surface(anny, vrn_like):
    t, rig = anny
    verts, parts = vrn_like
    index, weight = transfer_skin_weights(t.rest_vertices, t.faces, rig.skin_index, rig.skin_weight, verts,
                                          max_bones=4)
    assert index.shape == weight.shape == (len(verts), 4)
    assert np.allclose(weight.sum(1), 1, atol=1e-5) and (weight >= 0).all()
    G = pose_transforms(rig, raise_arm(rig, "L", 60.0))
    moved = np.linalg.norm(skin(verts, index, weight, G) - verts, axis=1)
    assert moved[np.isin(parts, ARM_L)].min() > 0.1  # no forearm or hand vertex left at the rest position
    assert moved[np.isin(parts, LEGS)].max() < 1e-6


def test_rig_for_a_posed_body_follows_its_pose(anny):
    t, rig = anny
    G = pose_transforms(rig, raise_arm(rig, "R", 45.0))
    R = rotation_about([0, 0, 1], 30.0)  # the body in another frame: turned, scaled, moved
    posed = skin(t.rest_vertices, rig.skin_index, rig.skin_weight, G)
    heads, tails = pose_rig(rig, G)
    frame = lambda p: 1.3 * p @ R.T + np.array([0.2, 0.0, -1.0])  # noqa: E731
    body = rig_for_body(frame(posed), frame(heads), t)
    assert np.allclose(body.heads, frame(heads))
    chain = chain_children(rig) >= 0
    assert chain.sum() > 60
    assert np.abs(body.tails - frame(tails))[chain].max() < 3e-3  # a chain's tail follows its child's head
    # other tails and the bone axes come from a rigid fit of each bone's vertices (LBS blends are not rigid)
    assert np.abs(body.tails - frame(tails)).max() < 0.03
    arm = rig.index("upperarm01.R")
    want = R @ G[arm, :3, :3] @ rig.axes[arm]
    assert np.abs(body.axes[arm][:, 1] - want[:, 1]).max() < 0.01  # direction: from the joints
    assert np.abs(body.axes[arm] - want).max() < 0.1  # roll: from a rigid fit of blended vertices
    assert np.allclose(np.einsum("jab,jac->jbc", body.axes, body.axes), np.eye(3), atol=1e-6)


def test_closest_point_near_vertices_matches_the_exact_search(anny, vrn_like):
    """The fast search the weight transfer uses against trimesh's exact one, on a surface 0-2 cm off the body."""
    import trimesh

    from core.rig import closest_point_near_vertices

    t, _ = anny
    verts, _ = vrn_like
    exact, exact_dist, _ = trimesh.proximity.closest_point(trimesh.Trimesh(t.rest_vertices, t.faces, process=False),
                                                           verts)
    found, face = closest_point_near_vertices(t.rest_vertices, t.faces, verts)
    assert found.shape == verts.shape and face.shape == (len(verts),)
    excess = np.linalg.norm(found - verts, axis=1) - exact_dist
    assert excess.min() > -1e-5  # never closer than the closest point (up to trimesh's own rounding)
    assert np.mean(excess > 1e-3) < 1e-3 and excess.max() < 0.01
    # the found point lies on its face (barycentric coordinates in [0, 1])
    from trimesh.triangles import points_to_barycentric

    bary = points_to_barycentric(np.asarray(t.rest_vertices)[np.asarray(t.faces)[face]], found)
    assert (bary > -1e-6).all() and np.allclose(bary.sum(1), 1.0)
