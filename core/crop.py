"""The crop box: where in the photo the network looks, and the exact maps between photo and crop pixels.

Conventions (ARCHITECTURE.md): source pixel centres at i + 0.5; a crop of size (H_out, W_out) maps the
box's continuous span [x0, x0 + width] x [y0, y0 + height] onto [0, W_out] x [0, H_out]. Training and
inference both cut through `crop_image`, including its anti-aliasing, so a photo and a render of the
same person reach the network looking alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import NoPersonError


@dataclass(frozen=True)
class CropBox:
    """A box in source pixels (floats); it may reach beyond the photo (padding fills the outside)."""

    x0: float
    y0: float
    width: float
    height: float

    def __post_init__(self):
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"CropBox needs a positive size; got {self.width} x {self.height}")

    def _scale(self, out_hw):
        return out_hw[1] / self.width, out_hw[0] / self.height

    def to_crop(self, points_xy, out_hw) -> np.ndarray:
        """(N, 2+) source-pixel points -> pixels of an (H_out, W_out) crop; extra columns pass through."""
        sx, sy = self._scale(out_hw)
        out = np.array(points_xy, dtype=np.float64)
        out[..., 0] = (out[..., 0] - self.x0) * sx
        out[..., 1] = (out[..., 1] - self.y0) * sy
        return out

    def to_source(self, points_xy, out_hw) -> np.ndarray:
        """(N, 2+) crop pixels of an (H_out, W_out) crop -> source pixels; extra columns pass through."""
        sx, sy = self._scale(out_hw)
        out = np.array(points_xy, dtype=np.float64)
        out[..., 0] = out[..., 0] / sx + self.x0
        out[..., 1] = out[..., 1] / sy + self.y0
        return out

    def as_dict(self) -> dict:
        return {"x0": float(self.x0), "y0": float(self.y0),
                "width": float(self.width), "height": float(self.height)}

    @classmethod
    def from_dict(cls, d: dict) -> "CropBox":
        return cls(float(d["x0"]), float(d["y0"]), float(d["width"]), float(d["height"]))


def crop_box_from_mask(mask: np.ndarray, aspect_wh: float = 1.0, fill: float = 0.85,
                       scale_jitter: float = 1.0, shift_jitter=(0.0, 0.0)) -> CropBox:
    """Box of aspect W:H centred on the person's bounding box (mask > 0.5), the person filling `fill`.

    The person's height fills `fill` of the box height, or their width `fill` of the box width when they
    are wider than the aspect allows. `scale_jitter` multiplies the box size and `shift_jitter` (dx, dy)
    moves it by that fraction of its width/height: training-time augmentation; 1 and (0, 0) at inference.
    """
    ys, xs = np.nonzero(np.asarray(mask) > 0.5)
    if xs.size == 0:
        raise NoPersonError("The person mask is empty, so there is nothing to crop.",
                            "Use a photo where the person is clearly visible.")
    # Continuous extent: pixel i covers [i, i + 1].
    return _frame(xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0,
                  aspect_wh, fill, scale_jitter, shift_jitter)


def crop_box_from_points(points_xy: np.ndarray, aspect_wh: float = 1.0, fill: float = 0.85,
                         scale_jitter: float = 1.0, shift_jitter=(0.0, 0.0), pad: float = 0.1) -> CropBox:
    """Fallback of `crop_box_from_mask` from landmarks (finite points only).

    Joints sit inside the silhouette (ankles, not soles; wrists, not fingertips), so their box is grown
    by `pad` times its height (half on each side, in x and y) before framing.
    """
    pts = np.asarray(points_xy, dtype=np.float64)[:, :2]
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise NoPersonError("No landmarks to frame the person with.",
                            "Use a photo where the whole body is visible.")
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    grow = 0.5 * pad * max(y1 - y0, x1 - x0, 1.0)
    return _frame(x0 - grow, y0 - grow, x1 + grow, y1 + grow, aspect_wh, fill, scale_jitter, shift_jitter)


def _frame(x0, y0, x1, y1, aspect_wh, fill, scale_jitter, shift_jitter) -> CropBox:
    height = max(y1 - y0, (x1 - x0) / aspect_wh) / fill * scale_jitter
    width = height * aspect_wh
    cx = (x0 + x1) / 2 + shift_jitter[0] * width
    cy = (y0 + y1) / 2 + shift_jitter[1] * height
    return CropBox(float(cx - width / 2), float(cy - height / 2), float(width), float(height))


def crop_image(img: np.ndarray, box: CropBox, out_hw, interpolation: str = "linear") -> np.ndarray:
    """Cut `box` out of `img` (H, W[, C]) and resample it to out_hw; outside the photo is 0.

    'linear' for photos and soft masks (low-passed first when shrinking, so large photos do not alias);
    'nearest' for label maps. A bool image comes back bool with 'nearest', float32 with 'linear'.
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest'; got {interpolation!r}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    img = np.asarray(img)
    channel_axis = img.ndim == 3
    is_bool = img.dtype == bool
    if is_bool:
        img = img.astype(np.uint8 if interpolation == "nearest" else np.float32)
    sx, sy = box._scale((out_h, out_w))
    x0, y0 = box.x0, box.y0
    if interpolation == "linear" and min(sx, sy) < 1.0:
        # Blur only the part of the photo under the box (plus the kernel's reach), then crop from that.
        sig_x, sig_y = max(0.0, (1 / sx - 1) / 2), max(0.0, (1 / sy - 1) / 2)
        reach = int(math.ceil(3 * max(sig_x, sig_y))) + 2
        xa, ya = max(0, int(math.floor(x0)) - reach), max(0, int(math.floor(y0)) - reach)
        xb = min(img.shape[1], int(math.ceil(x0 + box.width)) + reach)
        yb = min(img.shape[0], int(math.ceil(y0 + box.height)) + reach)
        if xa >= xb or ya >= yb:
            return np.zeros((out_h, out_w) + img.shape[2:], dtype=img.dtype)
        img = cv2.GaussianBlur(np.ascontiguousarray(img[ya:yb, xa:xb]), (0, 0), sig_x + 1e-6,
                               sigmaY=sig_y + 1e-6, borderType=cv2.BORDER_REFLECT)
        x0, y0 = x0 - xa, y0 - ya
    # Inverse map in index coordinates (continuous minus 0.5): src = (dst + .5) / s + x0 - .5.
    inv = np.array([[1 / sx, 0, 0.5 / sx + x0 - 0.5], [0, 1 / sy, 0.5 / sy + y0 - 0.5]], dtype=np.float64)
    flags = (cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST) | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(np.ascontiguousarray(img), inv, (out_w, out_h), flags=flags,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out.ndim == 2 and channel_axis:  # cv2 drops a trailing channel axis of length 1
        out = out[:, :, None]
    return out.astype(bool) if is_bool and interpolation == "nearest" else out
