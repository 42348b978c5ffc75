"""The Anny template that HumanMeshNet regresses: topology, the subsampled template, the smoothing operator and
the joint regressor; one small file, `models/anny-template.npz` (numpy, read with `allow_pickle=False`).

Why a file and not anny at run time: `core/` may not import anny (see docs/ARCHITECTURE.md, the import rules),
and everything here is a constant of the Anny topology. The file is written once by

    python -m train.fit_hmnet --build-template --data /work/data/anny128-a

(`train.fit_hmnet.build_template_file`: reads Anny's rig and skin weights, and fits the joint regressor on
training samples), and `load_template()` reads it (cached per process). Everything below the loading is
plain numpy/scipy/torch and works on any triangle mesh, so the tests run on tiny synthetic meshes.

Contents (N = 13,718 vertices, F = 27,420 triangles, J = 104 bones, n = the subsampled count):

| key | dtype, shape | meaning |
| --- | --- | --- |
| `rest_vertices` | float32 (N, 3) | neutral Anny (all phenotype values 0.5), A-pose, body frame (metres, Z up, faces -Y, feet on z = 0, root on x = y = 0) |
| `faces` | int32 (F, 3) | triangles (counter-clockwise = outward) |
| `parts` | uint8 (N,) | per-vertex part labels, `train.bodies.PART_NAMES` |
| `sub_index` | int32 (n,) | the subsampled template: indices into the full mesh |
| `up_index`, `up_weight` | int32 / float32 (N, 3) | the fixed map back: full vertex v = sum_k up_weight[v, k] * sub[up_index[v, k]] (rows sum to 1) |
| `sub_edges` | int32 (E_s, 2) | edges of the subsampled template (for the smoothing operator) |
| `regressor_index`, `regressor_weight` | int32 / float32 (J, K) | joints from the full surface: J_j = sum_k w[j, k] * V[index[j, k]] (rows sum to 1; padding has weight 0) |
| `joint_names`, `bone_parents` | str (J,), int32 (J,) | Anny's 104 bones (= `train.bodies` JOINT order; parent -1 for the root) |
| `bone_heads`, `bone_tails`, `bone_axes` | float32 (J, 3), (J, 3), (J, 3, 3) | the rest armature (columns of `bone_axes`: the bone's x, y, z; y points head -> tail) |
| `skin_index`, `skin_weight` | int16 / float32 (N, 9) | Anny's linear-blend skin weights (rows sum to 1) |
| `info` | str (JSON) | how it was built and its measured errors |

Subsampling rule (the paper's 6890 -> 1723, i.e. about a quarter): farthest-point sampling on the rest
vertices starting at vertex 0 (deterministic); each full vertex belongs to the sample that is nearest along
the mesh's edges (a graph Voronoi cell, multi-source Dijkstra); two samples are template neighbours when their
cells touch. The map back takes, among a vertex's cell owner and that owner's neighbours, the 3 nearest
samples in the rest pose and weights them by inverse distance (a sample maps to itself exactly). Following
mesh edges keeps the map from mixing the two legs or an arm and the torso.

Smoothing (eq. 3 of the paper): V_i <- mean of V_j over the mesh neighbours j of i (the umbrella operator),
a fixed sparse (n, n) matrix with rows summing to 1, built from the template's edges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import ModelError

TEMPLATE_NAME = "anny-template.npz"
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "models" / TEMPLATE_NAME
TEMPLATES = ("full", "subsampled")
KEYS = ("rest_vertices", "faces", "parts", "sub_index", "up_index", "up_weight", "sub_edges", "regressor_index",
        "regressor_weight", "joint_names", "bone_parents", "bone_heads", "bone_tails", "bone_axes", "skin_index",
        "skin_weight", "info")


# ---------------------------------------------------------------------------------------------------------
# Mesh graph helpers (any triangle mesh)
# ---------------------------------------------------------------------------------------------------------

def mesh_edges(faces) -> np.ndarray:
    """Unique undirected edges (E, 2), smaller index first, sorted."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def smoothing_matrix(edges, n: int) -> torch.Tensor:
    """Eq. 3 as a sparse (n, n) float32 COO matrix S: (S @ V)_i = mean of V_j over the neighbours j of i.

    A vertex without neighbours keeps its position (its row is the identity row).
    """
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    lonely = np.flatnonzero(degree == 0)
    rows = np.concatenate([rows, lonely])
    cols = np.concatenate([cols, lonely])
    vals = np.concatenate([1.0 / degree[rows[:len(rows) - len(lonely)]], np.ones(len(lonely))])
    index = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(index, torch.from_numpy(vals.astype(np.float32)), (n, n),
                                   check_invariants=True).coalesce()


def smooth(vertices: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply the smoothing matrix to (n, 3) or a batch (B, n, 3) of vertices."""
    if vertices.dim() == 2:
        return torch.sparse.mm(matrix, vertices)
    b, n, c = vertices.shape
    flat = vertices.transpose(0, 1).reshape(n, b * c)  # (n, B*3)
    return torch.sparse.mm(matrix, flat).reshape(n, b, c).transpose(0, 1)


def farthest_point_sample(points, count: int, start: int = 0) -> np.ndarray:
    """Deterministic farthest-point sampling: `count` indices, the first is `start`."""
    p = np.asarray(points, dtype=np.float64)
    if not 0 < count <= len(p):
        raise ValueError(f"count must be in 1..{len(p)}; got {count}")
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = start
    dist = np.sum((p - p[start]) ** 2, axis=1)
    for i in range(1, count):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, np.sum((p - p[chosen[i]]) ** 2, axis=1))
    return chosen


def subsample(vertices, faces, count: int, k: int = 3):
    """The subsampled template of a mesh (see the module docstring).

    Returns sub_index (n,), up_index (N, k), up_weight (N, k) float32 (rows sum to 1), sub_edges (E_s, 2).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    v = np.asarray(vertices, dtype=np.float64)
    n_full = len(v)
    sub = farthest_point_sample(v, count)
    edges = mesh_edges(faces)
    length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1) + 1e-12
    graph = coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n_full, n_full)).tocsr()
    _, _, owner_full = dijkstra(graph, directed=False, indices=sub, min_only=True, return_predecessors=True)
    slot = np.full(n_full, -1, dtype=np.int64)
    slot[sub] = np.arange(count)
    owner = np.where(owner_full >= 0, slot[np.maximum(owner_full, 0)], -1)  # cell of each vertex (sample slot)

    a, b = owner[edges[:, 0]], owner[edges[:, 1]]
    keep = (a >= 0) & (b >= 0) & (a != b)
    sub_edges = np.unique(np.sort(np.stack([a[keep], b[keep]], axis=1), axis=1), axis=0)
    neighbours = [[] for _ in range(count)]
    for i, j in sub_edges:
        neighbours[i].append(j)
        neighbours[j].append(i)

    tree = cKDTree(v[sub])
    up_index = np.zeros((n_full, k), dtype=np.int64)
    up_weight = np.zeros((n_full, k), dtype=np.float64)
    for vi in range(n_full):
        c = owner[vi]
        if c < 0:  # a component without a sample: the nearest samples in space
            cand = tree.query(v[vi], k=k)[1]
        else:
            cand = np.array([c, *neighbours[c]], dtype=np.int64)
        d = np.linalg.norm(v[sub[cand]] - v[vi], axis=1)
        order = np.argsort(d, kind="stable")[:k]
        cand, d = cand[order], d[order]
        if d[0] < 1e-9:
            w = np.zeros(len(cand))
            w[0] = 1.0
        else:
            w = 1.0 / d
            w /= w.sum()
        up_index[vi, :len(cand)] = cand
        up_weight[vi, :len(cand)] = w
    return sub.astype(np.int32), up_index.astype(np.int32), up_weight.astype(np.float32), sub_edges.astype(np.int32)


def fit_regressor(vertices, joints, supports, ridge: float = 1e-3):
    """Sparse linear joint regressor with weights summing to 1 (so it commutes with translation, rotation and
    scale): for each joint j, w_j = argmin sum_s |V_s[support_j]^T w - J_s[j]|^2 + ridge' |w - uniform|^2
    subject to sum(w) = 1, solved exactly (KKT system). vertices (S, N, 3), joints (S, J, 3), supports: a list
    of J index arrays. ridge' = ridge * trace(A^T A) / m. Returns index (J, K) int32, weight (J, K) float32.
    """
    V = np.asarray(vertices, dtype=np.float64)
    Jt = np.asarray(joints, dtype=np.float64)
    width = max(len(s) for s in supports)
    index = np.zeros((len(supports), width), dtype=np.int32)
    weight = np.zeros((len(supports), width), dtype=np.float32)
    for j, support in enumerate(supports):
        support = np.asarray(support, dtype=np.int64)
        m = len(support)
        X = V[:, support, :]                                   # (S, m, 3)
        centre = X.mean(axis=1, keepdims=True)                 # sum-to-one => centring changes nothing
        A = (X - centre).transpose(0, 2, 1).reshape(-1, m)     # (S*3, m)
        b = (Jt[:, j, :] - centre[:, 0, :]).reshape(-1)
        AtA = A.T @ A
        lam = ridge * max(np.trace(AtA) / m, 1e-12)
        w0 = np.full(m, 1.0 / m)
        kkt = np.zeros((m + 1, m + 1))
        kkt[:m, :m] = 2 * (AtA + lam * np.eye(m))
        kkt[:m, m] = kkt[m, :m] = 1.0
        rhs = np.concatenate([2 * (A.T @ b + lam * w0), [1.0]])
        w = np.linalg.solve(kkt, rhs)[:m]
        index[j, :m] = support
        weight[j, :m] = w
    return index, weight


def content_hash(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in KEYS:
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The template object
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Template:
    arrays: dict
    path: Path
    sha256: str

    def __getattr__(self, key):
        arrays = object.__getattribute__(self, "arrays")
        if key in arrays:
            return arrays[key]
        raise AttributeError(key)

    @classmethod
    def from_arrays(cls, arrays: dict, path="<memory>") -> "Template":
        missing = [k for k in KEYS if k not in arrays]
        if missing:
            raise ValueError(f"template arrays lack {missing}")
        arrays = dict(arrays)
        return cls(arrays=arrays, path=Path(path), sha256=content_hash(arrays))

    @property
    def info(self) -> dict:
        return json.loads(str(self.arrays["info"]))

    @property
    def full_count(self) -> int:
        return int(len(self.arrays["rest_vertices"]))

    @property
    def joint_count(self) -> int:
        return int(len(self.arrays["joint_names"]))

    def vertex_count(self, kind: str) -> int:
        _check_kind(kind)
        return self.full_count if kind == "full" else int(len(self.arrays["sub_index"]))

    def edges(self, kind: str) -> np.ndarray:
        _check_kind(kind)
        return _full_edges(self) if kind == "full" else self.arrays["sub_edges"]

    def smoothing(self, kind: str) -> torch.Tensor:
        return smoothing_matrix(self.edges(kind), self.vertex_count(kind))

    def upsample(self, sub_vertices):
        """(n, 3) or (B, n, 3), numpy or torch -> the full mesh's vertices, same type."""
        idx, w = self.arrays["up_index"], self.arrays["up_weight"]
        if isinstance(sub_vertices, torch.Tensor):
            i = torch.from_numpy(idx.astype(np.int64)).to(sub_vertices.device)
            wt = torch.from_numpy(w).to(sub_vertices)
            return (sub_vertices[..., i, :] * wt[..., None]).sum(-2)
        return (np.asarray(sub_vertices)[..., idx, :] * w[..., None]).sum(-2)

    def regressor(self, kind: str) -> torch.Tensor:
        """Dense (J, n) float32: joints = R @ vertices of the `kind` template (rows sum to 1)."""
        _check_kind(kind)
        idx, w = self.arrays["regressor_index"], self.arrays["regressor_weight"]
        full = np.zeros((self.joint_count, self.full_count), dtype=np.float64)
        np.add.at(full, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
        if kind == "subsampled":
            ui, uw = self.arrays["up_index"], self.arrays["up_weight"]
            sub = np.zeros((self.joint_count, self.vertex_count("subsampled")))
            for k in range(ui.shape[1]):
                np.add.at(sub.T, ui[:, k], (full * uw[:, k][None, :]).T)
            full = sub
        return torch.from_numpy(full.astype(np.float32))


    def mirror(self) -> tuple[np.ndarray, np.ndarray]:
        """(vertex map (N,), joint map (J,)): the left/right counterpart of each vertex and joint, so that a
        horizontally flipped body is `flip_x(V[vertex_map])`. Anny's mesh is symmetric (measured: every
        mirrored rest vertex lies within 0.41 mm of a vertex); joints pair by their .L/.R names."""
        if "_mirror_vertices" not in self.arrays:  # derived once per template object (not part of the file)
            from scipy.spatial import cKDTree

            v = np.asarray(self.arrays["rest_vertices"], np.float64)
            _, vmap = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
            names = [str(n) for n in self.arrays["joint_names"]]
            swap = {".L": ".R", ".R": ".L"}
            jmap = [names.index(n[:-2] + swap[n[-2:]]) if n[-2:] in swap else i for i, n in enumerate(names)]
            self.arrays["_mirror_vertices"], self.arrays["_mirror_joints"] = vmap, np.asarray(jmap)
        return self.arrays["_mirror_vertices"], self.arrays["_mirror_joints"]


def _full_edges(t: Template) -> np.ndarray:
    if "_full_edges" not in t.arrays:  # derived once per template object (not part of the file)
        t.arrays["_full_edges"] = mesh_edges(t.arrays["faces"]).astype(np.int32)
    return t.arrays["_full_edges"]


def _check_kind(kind: str) -> None:
    if kind not in TEMPLATES:
        raise ValueError(f"unknown template {kind!r}; known: {list(TEMPLATES)}")


_TEMPLATES: dict = {}


def save_template(path, arrays: dict) -> Path:
    """Write the template file atomically (numpy .npz, no pickles; core.files.write_atomic)."""
    import io

    from core.files import write_atomic

    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"template arrays lack {missing}")
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: arrays[k] for k in KEYS})
    write_atomic(Path(path), buf.getvalue())
    return Path(path)


def load_template(path=None) -> Template:
    """The template file (default `models/anny-template.npz`), validated and cached per process."""
    path = Path(path) if path is not None else TEMPLATE_PATH
    key = str(path.resolve())
    for (p, _), t in _TEMPLATES.items():
        if p == key:
            return t
    if not path.is_file():
        raise ModelError(f"The HumanMeshNet template {path} is missing.",
                         "Build it with `python -m train.fit_hmnet --build-template --data DATASET` "
                         "(needs anny and a dataset from train.make_dataset), or restore it from the repository.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise ModelError(f"The HumanMeshNet template {path} cannot be read ({type(e).__name__}: {e}).",
                         "Rebuild it with `python -m train.fit_hmnet --build-template`.") from e
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ModelError(f"The HumanMeshNet template {path} lacks {missing}.",
                         "Rebuild it with `python -m train.fit_hmnet --build-template`.")
    t = Template.from_arrays(arrays, path)
    _TEMPLATES[(key, t.sha256)] = t
    return t
