"""Evaluation metrics: the paper's volumetric IoU and surface distances in millimetres."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from train.dataset import shift_depth


def volume_iou(pred, target) -> np.ndarray:
    """IoU as the VRN paper defines it: intersecting set voxels over voxels set in either volume.

    pred, target: boolean (or 0/1) arrays of shape (..., D, H, W); returns one IoU per leading index.
    Two empty volumes agree perfectly (IoU 1).
    """
    if isinstance(pred, torch.Tensor):
        pred, target = pred.bool(), target.bool()
        inter = (pred & target).flatten(-3).sum(-1).double()
        union = (pred | target).flatten(-3).sum(-1).double()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).cpu().numpy()
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    axes = (-3, -2, -1)
    inter = np.logical_and(pred, target).sum(axis=axes).astype(np.float64)
    union = np.logical_or(pred, target).sum(axis=axes).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def best_depth_shift_iou(pred, target, max_shift: int = 2) -> tuple[float, int]:
    """The best IoU of `pred` (D, H, W) moved by a whole number of voxels in depth (|shift| <= max_shift).

    A diagnostic, not the paper's metric: it separates the body's shape from its placement in depth. The
    aligned frame puts the body's mean vertex depth at D/2, and one voxel of global depth error alone costs
    about a third of the IoU of a 64^3 body (`train.iou_bounds`).
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    best = (-1.0, 0)
    for shift in range(-max_shift, max_shift + 1):
        iou = float(volume_iou(shift_depth(pred, shift), target))
        if iou > best[0]:
            best = (iou, shift)
    return best


def silhouette_iou(volume, mask) -> float:
    """Front projection of an occupancy volume (D, H, W) against a person mask (H, W)."""
    front = np.asarray(volume, bool).any(axis=0)
    mask = np.asarray(mask) > (127 if np.asarray(mask).dtype == np.uint8 else 0.5)
    union = np.logical_or(front, mask).sum()
    return float(np.logical_and(front, mask).sum() / union) if union else 1.0


def surface_distances_mm(pred: trimesh.Trimesh, target: trimesh.Trimesh, samples: int = 10000, seed: int = 0):
    """Chamfer distance (mean of both directions) and mean point-to-surface error from pred to target, in mm.

    Both meshes must be in metres in the same frame.
    """
    rng = np.random.default_rng(seed)
    p = trimesh.sample.sample_surface(pred, samples, seed=rng.integers(1 << 31))[0]
    t = trimesh.sample.sample_surface(target, samples, seed=rng.integers(1 << 31))[0]
    _, p_to_t, _ = trimesh.proximity.closest_point(target, p)
    _, t_to_p, _ = trimesh.proximity.closest_point(pred, t)
    return {"chamfer_mm": 1000 * float((p_to_t.mean() + t_to_p.mean()) / 2),
            "p2s_mm": 1000 * float(p_to_t.mean())}
