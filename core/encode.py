"""The network input, built by one function that training and inference both call.

Channel order is fixed (image, landmarks, mask, body), whatever order a config lists its inputs in.
"""

from __future__ import annotations

import numpy as np

from core.landmarks import gaussian_heatmaps

INPUT_CHANNELS = {"image": 3, "landmarks": 16, "mask": 1, "body": 3}  # body: core.guide.body_guide

IMAGE_MEAN = 0.5
IMAGE_STD = 0.25


def _check(inputs) -> set:
    names = set(inputs)
    unknown = names - INPUT_CHANNELS.keys()
    if unknown:
        raise ValueError(f"unknown network inputs {sorted(unknown)}; known: {list(INPUT_CHANNELS)}")
    if not names:
        raise ValueError("a network needs at least one input")
    return names


def channel_count(inputs) -> int:
    """Number of input channels for a config's `inputs` list."""
    return sum(INPUT_CHANNELS[name] for name in _check(inputs))


def encode(rgb, landmarks16, mask, inputs, body=None) -> np.ndarray:
    """Build the float32 (C, H, W) network input from a crop at the model's input resolution.

    rgb: uint8 (H, W, 3) crop. landmarks16: (16, 2|3) in that crop's pixels (NaN = missing).
    mask: (H, W) person probability, float in [0, 1], or uint8 0/255, or bool. An input the config does
    not name may be None; the size comes from rgb, else mask. body: the (3, H, W) guide of a fitted body
    (`core.guide.body_guide`), for body-guided networks.
    """
    names = _check(inputs)
    ref = rgb if rgb is not None else mask
    if ref is None:
        raise ValueError("encode needs rgb or mask to know the input size")
    h, w = np.shape(ref)[:2]
    parts = []
    if "image" in names:
        rgb = np.asarray(rgb)
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 (H, W, 3); got {rgb.dtype} {rgb.shape}")
        x = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
        parts.append((x - IMAGE_MEAN) / IMAGE_STD)
    if "landmarks" in names:
        if landmarks16 is None or np.ndim(landmarks16) != 2 or np.shape(landmarks16)[0] != 16:
            raise ValueError(f"landmarks16 must be (16, 2|3); got {np.shape(landmarks16)}")
        parts.append(gaussian_heatmaps(landmarks16, (h, w)))
    if "mask" in names:
        m = np.asarray(mask)
        if m.shape != (h, w):
            raise ValueError(f"mask must be (H, W) = {(h, w)}; got {m.shape}")
        m = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
        parts.append(np.clip(m, 0.0, 1.0)[None])
    if "body" in names:
        if body is None or np.shape(body) != (INPUT_CHANNELS["body"], h, w):
            raise ValueError(f"body must be the (3, H, W) = (3, {h}, {w}) guide of core.guide.body_guide; "
                             f"got {None if body is None else np.shape(body)}")
        parts.append(np.asarray(body, np.float32))
    return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
