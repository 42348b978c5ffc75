"""Hands and feet from the fitted body on a volume's surface (#13).

Why: one voxel of a 64^3 or 128^3 occupancy volume is 1.5 to 3 cm, so fingers and toes are below its
resolution and the iso-surface ends in mittens and stumps. The fitted Anny body has ten fingers and two feet;
`replace_extremities` cuts the surface's hands and feet away and puts the body's in their place, in one mesh:

1. each extremity (`EXTREMITIES`, Anny's part labels: `core.template`, `train.bodies.PART_NAMES`) has a cut
   plane through the middle of its seam (the part's vertices that share a triangle with the rest of the body:
   the wrist, just above the ankle), facing away from the body (towards the part's centroid);
2. a surface vertex belongs to an extremity when its nearest body vertex is one of the extremity's, it lies
   beyond that plane and within `reach` of the body (further out it is clothing and stays); every surface
   triangle touching such a vertex goes, and so do the pieces of the surface this cuts loose (under
   `min_fragment` of its triangles). The cut is kept only when the hole it leaves is a cap at the plane
   (`cut_extremity`): where the volume has no limb ending in that hand or foot (a hand lying against a
   blob's hip, as the weak VRN models of today give) the surface stays whole and the body's part is added as
   it is, partly inside the surface, rather than opening a hole in the surface's side;
3. the body's triangles with all three corners in the part (its hand or foot, open at the seam) are appended;
4. each cut seam is stitched (`stitch_seam`): the one hole the cut opened (its rim, `boundary_loops`) and the
   part's one open loop (wrist or ankle) are joined by a strip of triangles (`bridge`: the loops walked together
   by arc length, each triangle using one loop edge reversed, so the strip is wound as both meshes are). The
   strip is kept only when the holes face each other and each of its edges is then used once each way, so a
   watertight, outward surface gives a watertight, outward mesh. A seam stays open where the surface was not cut
   (the body's part is added with its wrist or ankle open inside the surface) or the strip fails that check.

The strip closes the gap; it does not blend: the rim and the body's loop are up to about a voxel apart, and
Anny's ankle loop is oblique to the cut plane, so the foot's strip is a wedge (tens of cm^2) that may cross
the surface's heel. Arrays in, arrays out; the strip only joins existing vertices, so the caller maps the rest
(UVs, skin weights) through `Joined.surface_index` and `Joined.body_index`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.spatial
import trimesh

EXTREMITIES = ("hand_r", "hand_l", "foot_r", "foot_l")
REACH = 0.05  # metres: the volume's hand is within a voxel or two of the fitted one
MIN_FRAGMENT = 0.02  # surface pieces cut loose with fewer than this share of the triangles go
SEAM_TOLERANCE = 0.025  # metres past the cut plane that a cap's rim may reach (a voxel at 64^3)
MAX_OFF_SEAM = 0.25  # share of the rim that may lie further: more, and the cut would open the surface's side


class Joined(NamedTuple):
    """A surface with the body's extremities: vertices = concat(surface[surface_index], body[body_index])."""

    vertices: np.ndarray      # (M, 3)
    faces: np.ndarray         # (G, 3) int64
    surface_index: np.ndarray  # (Ms,) the kept surface vertices, in output order
    body_index: np.ndarray    # (Mb,) the added body vertices, in output order (after the surface's)
    cut: tuple = ()           # the extremities whose surface part was cut away (the others: added as they are)
    stitched: tuple = ()      # the cut extremities whose seam is bridged (closed); the others' is left open


def part_faces(faces, inside) -> np.ndarray:
    """The triangles with all three corners in a part (bool per vertex)."""
    faces = np.asarray(faces, dtype=np.int64)
    return faces[np.asarray(inside, bool)[faces].all(1)]


def cut_plane(vertices, faces, inside) -> tuple[np.ndarray, np.ndarray]:
    """(point, unit normal) of the plane between a part and the rest of the body: through the mean of its seam
    vertices (part vertices on a triangle that leaves the part), the normal towards the part's centroid."""
    v = np.asarray(vertices, dtype=np.float64)
    inside = np.asarray(inside, bool)
    faces = np.asarray(faces, dtype=np.int64)
    mixed = faces[inside[faces].any(1) & ~inside[faces].all(1)]
    seam = np.unique(mixed[inside[mixed]])
    if len(seam) == 0:
        raise ValueError("the part has no seam with the rest of the body (is it a whole separate mesh?)")
    point = v[seam].mean(0)
    normal = v[inside].mean(0) - point
    return point, normal / max(float(np.linalg.norm(normal)), 1e-12)


def _directed_edges(faces: np.ndarray) -> np.ndarray:
    """(3F, 2) each face's edges in its winding order."""
    return np.asarray(faces, dtype=np.int64)[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)


def _boundary_edges(faces) -> np.ndarray:
    """(E, 2) the edges that only one of the faces uses (the mesh's holes), as that face winds them."""
    directed = _directed_edges(faces)
    return directed[trimesh.grouping.group_rows(np.sort(directed, axis=1), require_count=1)]


def boundary_loops(faces) -> list[np.ndarray]:
    """The holes of a consistently wound mesh as vertex loops, each in the order its faces use its edges (a
    boundary edge a->b is in exactly one face). Holes that touch another at a vertex are left out: ambiguous."""
    edges = _boundary_edges(faces)
    starts, out = np.unique(edges[:, 0], return_counts=True)
    ends, into = np.unique(edges[:, 1], return_counts=True)
    pinched = set(starts[out > 1].tolist()) | set(ends[into > 1].tolist())
    following = dict(zip(edges[:, 0].tolist(), edges[:, 1].tolist()))
    loops, seen = [], set()
    for start in following:
        loop, v = [], start
        while v not in seen and v in following:
            seen.add(v)
            loop.append(v)
            v = following[v]
        if v == start and len(loop) >= 3 and not pinched.intersection(loop):
            loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def _boundary_vertices(faces: np.ndarray) -> np.ndarray:
    """The vertices on the mesh's holes."""
    return np.unique(_boundary_edges(faces))


def _drop_fragments(faces: np.ndarray, min_fragment: float) -> np.ndarray:
    """The faces of the connected pieces that hold at least `min_fragment` of them."""
    if len(faces) == 0:
        return faces
    labels = trimesh.graph.connected_component_labels(trimesh.graph.face_adjacency(faces), node_count=len(faces))
    sizes = np.bincount(labels)
    return faces[sizes[labels] >= min_fragment * len(faces)]


def cut_extremity(faces, beyond, owned, min_fragment: float = MIN_FRAGMENT,
                  seam_tolerance: float = SEAM_TOLERANCE) -> np.ndarray | None:
    """The faces left when the `owned` vertices' triangles (and the pieces that cuts loose) go, or None when
    that is no cap but a hole in the side of the surface: more than `MAX_OFF_SEAM` of the new hole's rim lies
    over `seam_tolerance` beyond the cut plane (`beyond`: each vertex's signed distance past it). A volume whose
    limb ends in the extremity has its rim at the plane; one whose hand lies against its hip does not."""
    faces = np.asarray(faces, dtype=np.int64)
    kept = _drop_fragments(faces[~owned[faces].any(1)], min_fragment)
    if len(kept) == len(faces):
        return faces
    rim = np.setdiff1d(_boundary_vertices(kept), _boundary_vertices(faces))
    if len(rim) and np.mean(beyond[rim] > seam_tolerance) > MAX_OFF_SEAM:
        return None
    return kept


def _arc(points: np.ndarray) -> np.ndarray:
    """(n,) the normalised arc length of a closed loop at its vertices after the first (the last is 1)."""
    steps = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
    return np.cumsum(steps) / max(float(steps.sum()), 1e-12)


def _strip(v: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The triangles between loop a (forward) and loop c (already reversed and started), merged by normalised
    arc length: (a[i+1], a[i], c[k]) where a advances, (c[k], c[k+1], a[i]) where c does."""
    from_a = np.r_[np.ones(len(a), bool), np.zeros(len(c), bool)][np.argsort(np.r_[_arc(v[a]), _arc(v[c])],
                                                                              kind="stable")]
    i, k = np.cumsum(from_a) - from_a, np.cumsum(~from_a) - ~from_a  # loop edges each walk used before a step
    ai, ck = a[i % len(a)], c[k % len(c)]
    return np.where(from_a[:, None], np.stack([a[(i + 1) % len(a)], ai, ck], 1),
                    np.stack([ck, c[(k + 1) % len(c)], ai], 1))


def bridge(vertices, rim, seam) -> np.ndarray:
    """(n_rim + n_seam, 3) triangles closing the gap between two facing holes of two meshes (`boundary_loops`
    order): rim walked forward, seam backward, merged by normalised arc length, from the seam vertex that makes
    the rungs (the edges across the gap) shortest in all. Each triangle uses one loop edge reversed, so the strip
    is wound as both meshes are."""
    v = np.asarray(vertices, dtype=np.float64)
    a, c = np.asarray(rim, dtype=np.int64), np.asarray(seam, dtype=np.int64)[::-1]
    strips = [_strip(v, a, np.roll(c, -start)) for start in range(len(c))]
    return min(strips, key=lambda t: float(np.linalg.norm(v[t[:, 1]] - v[t[:, 2]], axis=1).sum()))


def _vector_area(points: np.ndarray) -> np.ndarray:
    """The vector area of a closed loop: its normal by the right-hand rule, as long as its area."""
    return 0.5 * np.cross(points, np.roll(points, -1, axis=0)).sum(0)


def _closes(faces: np.ndarray, strip: np.ndarray) -> bool:
    """Whether each edge of the strip is used once each way by faces + strip (closed and consistently wound
    there): the strip fills a hole between the meshes and nothing else uses its edges."""
    directed = _directed_edges(np.concatenate([faces, strip]))
    n = int(directed.max()) + 1
    keys, counts = np.unique(directed[:, 0] * n + directed[:, 1], return_counts=True)
    own = _directed_edges(strip)
    for key in (own[:, 0] * n + own[:, 1], own[:, 1] * n + own[:, 0]):
        at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        if not ((keys[at] == key) & (counts[at] == 1)).all():
            return False
    return True


def stitch_seam(vertices, faces, rim, part) -> np.ndarray | None:
    """The strip bridging a cut surface's rim loop and the open seam of a body part (`part`: its faces, among
    `faces`), or None when it would not close the mesh there: the part has not exactly one hole, the holes do
    not face each other (one mesh wound inside out), or the strip's edges are not each used once each way."""
    seams = boundary_loops(part)
    if len(seams) != 1:
        return None
    v = np.asarray(vertices, dtype=np.float64)
    if _vector_area(v[rim]) @ _vector_area(v[seams[0]]) >= 0:
        return None
    strip = bridge(v, rim, seams[0])
    return strip if _closes(faces, strip) else None


def _new_rim(before: np.ndarray, after: np.ndarray) -> np.ndarray | None:
    """The one hole loop a cut opened (`after` has it, `before` had none of its vertices on a hole), or None
    when the cut opened none or several."""
    old = set(_boundary_vertices(before).tolist())
    new = [loop for loop in boundary_loops(after) if not old.intersection(loop.tolist())]
    return new[0] if len(new) == 1 else None


def replace_extremities(surface_vertices, surface_faces, body_vertices, body_faces, parts: dict,
                        reach: float = REACH, min_fragment: float = MIN_FRAGMENT) -> Joined:
    """The surface with its hands and feet replaced by the body's (see the module docstring), both meshes in
    the same frame. parts: {name: (N,) bool over the body's vertices}, e.g. `template_extremities()`."""
    sv = np.asarray(surface_vertices, dtype=np.float64)
    bv = np.asarray(body_vertices, dtype=np.float64)
    kept = np.asarray(surface_faces, dtype=np.int64)
    dist, nearest = scipy.spatial.cKDTree(bv).query(sv)
    rims = {}  # the cut extremities: their rim loop (surface indices) or None
    for name, inside in parts.items():
        inside = np.asarray(inside, bool)
        point, normal = cut_plane(bv, body_faces, inside)
        beyond = (sv - point) @ normal
        trial = cut_extremity(kept, beyond, inside[nearest] & (beyond > 0) & (dist <= reach), min_fragment)
        if trial is not None:
            rims[name] = _new_rim(kept, trial) if len(trial) < len(kept) else None
            kept = trial
    surface_index = np.unique(kept)
    added = {name: part_faces(body_faces, inside) for name, inside in parts.items()}
    body_index = np.unique(np.concatenate(list(added.values())))
    remap_s = np.full(len(sv), -1, np.int64)
    remap_s[surface_index] = np.arange(len(surface_index))
    remap_b = np.full(len(bv), -1, np.int64)
    remap_b[body_index] = len(surface_index) + np.arange(len(body_index))
    vertices = np.concatenate([sv[surface_index], bv[body_index]])
    faces = np.concatenate([remap_s[kept]] + [remap_b[f] for f in added.values()])
    holes = {frozenset(loop.tolist()) for loop in boundary_loops(kept)}  # a later cut may have changed a rim
    stitched = []
    for name, rim in rims.items():
        if rim is None or frozenset(rim.tolist()) not in holes:
            continue
        strip = stitch_seam(vertices, faces, remap_s[rim], remap_b[added[name]])
        if strip is not None:
            faces = np.concatenate([faces, strip])
            stitched.append(name)
    return Joined(vertices, faces, surface_index, body_index, tuple(rims), tuple(stitched))


def template_extremities(template=None) -> dict:
    """{name: (N,) bool} Anny's hands and feet (`EXTREMITIES`), from the template's per-vertex part labels."""
    from core.parts import PART
    from core.template import load_template

    t = template if template is not None else load_template()
    return {name: np.asarray(t.parts) == PART[name] for name in EXTREMITIES}
