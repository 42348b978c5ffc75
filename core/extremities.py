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
3. the body's triangles with all three corners in the part (its hand or foot, open at the seam) are appended.

The seam is not stitched: the surface's cut edge and the body's wrist or ankle loop are up to about a voxel
apart (a small gap or overlap); the result is one mesh but no longer watertight. Arrays in, arrays out; the
caller maps the rest (UVs, skin weights) through `Joined.surface_index` and `Joined.body_index`.
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


def _boundary_vertices(faces: np.ndarray) -> np.ndarray:
    """The vertices on edges that only one of the faces uses (the mesh's holes)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges[trimesh.grouping.group_rows(edges, require_count=1)])


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


def replace_extremities(surface_vertices, surface_faces, body_vertices, body_faces, parts: dict,
                        reach: float = REACH, min_fragment: float = MIN_FRAGMENT) -> Joined:
    """The surface with its hands and feet replaced by the body's (see the module docstring), both meshes in
    the same frame. parts: {name: (N,) bool over the body's vertices}, e.g. `template_extremities()`."""
    sv = np.asarray(surface_vertices, dtype=np.float64)
    bv = np.asarray(body_vertices, dtype=np.float64)
    kept = np.asarray(surface_faces, dtype=np.int64)
    dist, nearest = scipy.spatial.cKDTree(bv).query(sv)
    cut = []
    for name, inside in parts.items():
        inside = np.asarray(inside, bool)
        point, normal = cut_plane(bv, body_faces, inside)
        beyond = (sv - point) @ normal
        trial = cut_extremity(kept, beyond, inside[nearest] & (beyond > 0) & (dist <= reach), min_fragment)
        if trial is not None:
            kept = trial
            cut.append(name)
    surface_index = np.unique(kept)
    added = np.concatenate([part_faces(body_faces, inside) for inside in parts.values()])
    body_index = np.unique(added)
    remap_s = np.full(len(sv), -1, np.int64)
    remap_s[surface_index] = np.arange(len(surface_index))
    remap_b = np.full(len(bv), -1, np.int64)
    remap_b[body_index] = len(surface_index) + np.arange(len(body_index))
    return Joined(np.concatenate([sv[surface_index], bv[body_index]]),
                  np.concatenate([remap_s[kept], remap_b[added]]), surface_index, body_index, tuple(cut))


def template_extremities(template=None) -> dict:
    """{name: (N,) bool} Anny's hands and feet (`EXTREMITIES`), from the template's per-vertex part labels."""
    from core.parts import PART
    from core.template import load_template

    t = template if template is not None else load_template()
    return {name: np.asarray(t.parts) == PART[name] for name in EXTREMITIES}
