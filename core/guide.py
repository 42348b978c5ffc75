"""A body as a network input: where it is and how deep, in the network's own image frame.

Why: the body-guided VRN (#13) is given the fitted Anny body, so it has to correct a body rather than guess
limbs and depth from pixels (PaMIR / ICON's idea). Three 2D channels say what the body says about the
volume: the depth of its nearest and of its farthest surface along each pixel's ray (as fractions of the
volume's depth) and whether the ray meets it at all. Two z-buffer passes (`core.geometry.rasterise`), no
voxeliser: inference computes them from the fit, training from a true body made as wrong as the fit
(`train.fit_noise`).
"""

from __future__ import annotations

import numpy as np

from core.geometry import rasterise

GUIDE_CHANNELS = ("body_front", "body_back", "body_cover")


def depth_centring(vertices_vox, depth: int) -> float:
    """The depth shift (voxels) that puts a body's vertex mean at D/2: the one anchor of guide bodies (the fit
    at inference and evaluation, perturbed true bodies in training), also where a fitted body starts its
    alignment to a VRN surface (`core.reconstruct.fitted_body`)."""
    return depth / 2.0 - float(np.mean(np.asarray(vertices_vox)[:, 2]))


def body_guide(vertices_vox, faces, volume_shape, input_hw, centre_depth: bool = True) -> np.ndarray:
    """(3, H, W) float32 at the network's input size from a body in the volume frame (x right and y down in
    [0, W] / [0, H] of the volume, z depth in [0, D]): front depth / D, back depth / D (both 0 off the body)
    and coverage (1 on the body). centre_depth: first move the body so its vertex mean sits at depth D/2, the
    one anchor inference (the fit), evaluation and training (perturbed true bodies) all give the network."""
    d, h, w = (int(x) for x in volume_shape)
    ih, iw = (int(x) for x in input_hw)
    v = np.array(vertices_vox, np.float64)
    if centre_depth:
        v[:, 2] += depth_centring(v, d)
    uv = v[:, :2] * np.array([iw / w, ih / h])
    depth = v[:, 2] / d
    face, front = rasterise(uv, depth, faces, (ih, iw))
    _, back = rasterise(uv, -depth, faces, (ih, iw))
    cover = face >= 0
    out = np.zeros((len(GUIDE_CHANNELS), ih, iw), np.float32)
    out[0][cover] = front[cover]
    out[1][cover] = -back[cover]
    out[2][cover] = 1.0
    return out
