"""Mesh metrics of the HumanMeshNet paper (section 4.2): mean per-vertex / per-joint Euclidean error, with and
without Procrustes analysis (PA: "we scale the output to the size of the ground truth and solve for rotation").

Everything works on torch tensors (N, 3) or batches (B, N, 3); lengths are in whatever unit the inputs use
(multiply by millimetres per unit for the paper's figures, e.g. 1000 / px_per_metre for volume-frame points).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


def mean_distance(pred, target) -> torch.Tensor:
    """Mean Euclidean distance between corresponding points: (N, 3) -> scalar, (B, N, 3) -> (B,)."""
    return torch.linalg.norm(_as_tensor(pred) - _as_tensor(target), dim=-1).mean(-1)


def procrustes_align(pred, target, scale: bool = True):
    """The similarity transform (rotation, uniform scale, translation) that best maps `pred` onto `target` in
    the least-squares sense (Umeyama 1991; reflections excluded), applied to `pred`.

    pred, target: (N, 3) or (B, N, 3), numpy or torch (the result has pred's type; float64 internally).
    Returns the aligned prediction. With scale=False only rotation and translation are solved.
    """
    is_numpy = not isinstance(pred, torch.Tensor)
    P, T = _as_tensor(pred).to(torch.float64), _as_tensor(target).to(torch.float64)
    single = P.dim() == 2
    if single:
        P, T = P[None], T[None]
    mp, mt = P.mean(1, keepdim=True), T.mean(1, keepdim=True)
    Pc, Tc = P - mp, T - mt
    cov = Tc.transpose(1, 2) @ Pc  # (B, 3, 3) = sum t p^T
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    R = U @ D @ Vh  # rotation taking centred pred to centred target
    if scale:
        var = (Pc ** 2).sum(dim=(1, 2))
        s = (S * torch.diagonal(D, dim1=1, dim2=2)).sum(1) / var.clamp_min(1e-30)
    else:
        s = torch.ones(P.shape[0], dtype=P.dtype)
    out = s[:, None, None] * Pc @ R.transpose(1, 2) + mt
    if single:
        out = out[0]
    if is_numpy:
        return out.numpy()
    return out.to(pred.dtype)


def pa_mean_distance(pred, target) -> torch.Tensor:
    """Mean Euclidean distance after Procrustes alignment of pred onto target."""
    return mean_distance(procrustes_align(_as_tensor(pred), _as_tensor(target)), _as_tensor(target))


def mesh_errors(pred_vertices, target_vertices, pred_joints, target_joints, mm_per_unit) -> dict:
    """The paper's four numbers for a batch, in mm: surface, joint, PA surface, PA joint (means over the batch).

    mm_per_unit: scalar or (B,) millimetres per input unit.
    """
    mm = _as_tensor(mm_per_unit).to(torch.float64)
    out = {}
    for name, p, t in (("surface", pred_vertices, target_vertices), ("joint", pred_joints, target_joints)):
        p, t = _as_tensor(p).to(torch.float64), _as_tensor(t).to(torch.float64)
        out[f"{name}_mm"] = float((mean_distance(p, t) * mm).mean())
        out[f"pa_{name}_mm"] = float((pa_mean_distance(p, t) * mm).mean())
    return out
