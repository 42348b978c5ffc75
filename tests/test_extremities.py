"""Hands and feet from the fitted body (core.extremities): the cut-and-join on synthetic limbs, and on a real Anny
body voxelised at the shipped model's 64^3 (the surface a perfect volume network would give)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from core.extremities import (boundary_loops, bridge, cut_plane, part_faces, replace_extremities, stitch_seam,
                               template_extremities)

HAND_FROM = 0.8  # the synthetic limb's "hand" is everything above this height


def _limb(radius: float, centre=(0.0, 0.0, 0.5)) -> trimesh.Trimesh:
    """A closed capsule along z from about 0 to 1: a body's limb (thin) or the volume's surface around it (fat)."""
    m = trimesh.creation.capsule(height=1.0 - 2 * radius, radius=radius, count=[24, 24])
    v, f = trimesh.remesh.subdivide_to_size(m.vertices, m.faces, max_edge=0.02)  # rings all along
    return trimesh.Trimesh(v + np.asarray(centre), f)


def _body():
    body = _limb(0.05)
    return body, {"hand": np.asarray(body.vertices)[:, 2] > HAND_FROM}


def test_cut_plane_sits_on_the_seam_and_faces_the_part():
    body, parts = _body()
    point, normal = cut_plane(body.vertices, body.faces, parts["hand"])
    assert np.allclose(normal, [0, 0, 1], atol=1e-6)
    seam_height = np.asarray(body.vertices)[parts["hand"], 2].min()
    assert point[2] == pytest.approx(seam_height) and np.allclose(point[:2], 0, atol=1e-9)
    with pytest.raises(ValueError, match="no seam"):
        cut_plane(body.vertices, body.faces, np.ones(len(body.vertices), bool))


def _closed(vertices, faces) -> trimesh.Trimesh:
    """The mesh, asserted watertight, consistently wound and outward (positive volume)."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    return mesh


def test_a_limb_ending_in_a_mitten_gets_the_body_hand():
    body, parts = _body()
    surface = _limb(0.07)
    joined = replace_extremities(surface.vertices, surface.faces, body.vertices, body.faces, parts)
    assert joined.cut == ("hand",) and joined.stitched == ("hand",)
    assert np.array_equal(joined.vertices, np.concatenate([surface.vertices[joined.surface_index],
                                                          body.vertices[joined.body_index]]))
    assert joined.faces.min() == 0 and joined.faces.max() == len(joined.vertices) - 1
    n = len(joined.surface_index)
    from_surface, from_body = joined.faces.max(1) < n, joined.faces.min(1) >= n
    kept = joined.vertices[:n]
    assert kept[:, 2].max() < HAND_FROM + 0.03  # the mitten went, up to one ring past the seam
    assert kept[:, 2].min() == pytest.approx(np.asarray(surface.vertices)[:, 2].min())  # the other end stays
    # the body's hand came whole: all its triangles, re-indexed
    hand_faces = part_faces(body.faces, parts["hand"])
    assert from_body.sum() == len(hand_faces)
    assert np.isclose(joined.vertices[:, 2].max(), np.asarray(body.vertices)[:, 2].max())
    hand = trimesh.Trimesh(joined.vertices, joined.faces[from_body])
    assert hand.area == pytest.approx(trimesh.Trimesh(body.vertices, hand_faces).area)
    # the seam is stitched: one strip, one triangle per edge of the two loops, and the whole is closed
    strip = joined.faces[~from_surface & ~from_body]
    loops = boundary_loops(joined.faces[from_surface]) + boundary_loops(joined.faces[from_body])
    assert len(loops) == 2 and len(strip) == sum(map(len, loops))
    joined_mesh = _closed(joined.vertices, joined.faces)
    assert joined_mesh.volume == pytest.approx(surface.volume, rel=0.15)  # a thinner hand than the mitten


def _cup(count: int, radius: float, rim_height: float, apex_height: float):
    """A cone open at its base: `count` rim vertices on a circle, then the apex; wound outward."""
    angle = 2 * np.pi * np.arange(count) / count
    vertices = np.c_[radius * np.cos(angle), radius * np.sin(angle), np.full(count, rim_height)]
    j = np.arange(count)
    fan = np.c_[np.full(count, count), (j + 1) % count, j]  # outward when the apex is below the rim
    return np.r_[vertices, [[0, 0, apex_height]]], fan if apex_height < rim_height else fan[:, [0, 2, 1]]


def test_the_bridge_closes_two_facing_holes():
    """Two cones open towards each other (12 and 7 rim vertices): the strip makes one closed, outward solid."""
    va, fa = _cup(12, 1.0, 0.0, -0.5)
    vb, fb = _cup(7, 0.8, 1.0, 1.5)
    vertices, faces = np.r_[va, vb], np.r_[fa, fb + len(va)]
    (rim,), (seam,) = boundary_loops(fa), boundary_loops(fb + len(va))
    assert sorted(rim) == list(range(12)) and sorted(seam) == list(range(13, 20))
    strip = bridge(vertices, rim, seam)
    assert len(strip) == 12 + 7 and np.array_equal(strip, stitch_seam(vertices, faces, rim, fb + len(va)))
    solid = _closed(vertices, np.r_[faces, strip])
    cones = 3.0 * 0.5 / 3 + 3.5 * 0.64 * np.sin(2 * np.pi / 7) * 0.5 / 3  # base area x height / 3
    assert cones < solid.volume < cones + np.pi  # and less than a unit cylinder between them
    # one of the two wound inside out: the holes do not face each other, and nothing is bridged
    assert stitch_seam(vertices, np.r_[fa, fb[:, ::-1] + len(va)], rim, fb[:, ::-1] + len(va)) is None


def test_an_inside_out_surface_keeps_its_seam_open():
    """A surface wound the other way from the body cannot be bridged consistently: cut, but the seam stays open."""
    body, parts = _body()
    surface = _limb(0.07)
    joined = replace_extremities(surface.vertices, surface.faces[:, ::-1], body.vertices, body.faces, parts)
    assert joined.cut == ("hand",) and joined.stitched == ()
    n = len(joined.surface_index)
    assert ((joined.faces.max(1) < n) | (joined.faces.min(1) >= n)).all()  # no triangle joins the two


def test_a_hand_against_the_side_of_a_blob_opens_no_hole():
    """A volume without the arm (the hand lies against its side): the blob stays whole, the hand is added."""
    body, parts = _body()
    blob = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    blob.apply_translation((0.33, 0.0, 0.9))
    joined = replace_extremities(blob.vertices, blob.faces, body.vertices, body.faces, parts)
    assert joined.cut == joined.stitched == ()
    assert len(joined.surface_index) == len(blob.vertices)
    assert trimesh.Trimesh(joined.vertices[:len(blob.vertices)], joined.faces[:len(blob.faces)]).is_watertight


def test_far_from_the_body_the_surface_stays():
    """Clothing beyond `reach` (a wide sleeve) is not the hand and is not cut."""
    body, parts = _body()
    sleeve = _limb(0.2)
    joined = replace_extremities(sleeve.vertices, sleeve.faces, body.vertices, body.faces, parts, reach=0.05)
    assert len(joined.surface_index) == len(sleeve.vertices)


def _voxelised_rest_body(size: int):
    """Anny's rest body, voxelised at size^3 (body 85 % of the height) and extracted as the pipeline does, both
    in metres: (surface, template)."""
    from core.surface import extract_surface
    from core.template import load_template
    from train.voxelise import voxelise

    t = load_template()
    v = np.asarray(t.rest_vertices, np.float64)
    s, c = 0.85 * size / np.ptp(v[:, 2]), (v.min(0) + v.max(0)) / 2
    to_vox = lambda p: np.stack([p[:, 0] - c[0], c[2] - p[:, 2], p[:, 1] - c[1]], 1) * s + size / 2  # noqa: E731
    mesh = extract_surface(voxelise(to_vox(v), t.faces, (size,) * 3).astype(np.float32))
    q = (np.asarray(mesh.vertices) - size / 2) / s
    back = np.stack([q[:, 0] + c[0], q[:, 2] + c[1], c[2] - q[:, 1]], 1)
    return trimesh.Trimesh(back, mesh.faces, process=False), t  # both axis changes are rotations: still outward


def tip_bones(rig) -> list[int]:
    """The last bone of each finger and toe: their tails are the fingertips and toe tips (within 8 mm of
    Anny's skin)."""
    leaf = [b for b, n in enumerate(rig.names) if n.startswith(("finger", "toe")) and not (rig.parents == b).any()]
    assert len(leaf) == 20
    return leaf


def tip_distances(mesh: trimesh.Trimesh, rig) -> np.ndarray:
    """(20,) how far the mesh passes from each fingertip and toe tip of a rig in its frame."""
    return trimesh.proximity.closest_point(mesh, rig.tails[tip_bones(rig)])[1]


def test_a_voxelised_body_gets_ten_fingers_and_two_feet():
    from core.rig import template_rig

    surface, t = _voxelised_rest_body(64)
    parts, rig = template_extremities(t), template_rig(t)
    assert np.median(tip_distances(surface, rig)) > 0.02  # no fingers at 64^3: mittens miss the tips by cm
    joined = replace_extremities(surface.vertices, surface.faces, t.rest_vertices, t.faces, parts)
    assert joined.cut == joined.stitched == ("hand_r", "hand_l", "foot_r", "foot_l")
    out = _closed(joined.vertices, joined.faces)  # all four seams stitched
    assert tip_distances(out, rig).max() < 0.02
    # the rest of the surface is untouched: one piece with four openings (two wrists, two ankles)
    kept = trimesh.Trimesh(joined.vertices, joined.faces[joined.faces.max(1) < len(joined.surface_index)])
    assert len(kept.split(only_watertight=False)) == 1
    assert len(trimesh.graph.connected_components(kept.edges[trimesh.grouping.group_rows(
        kept.edges_sorted, require_count=1)])) == 4
    assert len(joined.surface_index) > 0.85 * len(surface.vertices)
