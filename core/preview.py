"""A picture a person can judge at a glance: the photo and what was made of it.

:func:`render_preview` returns one uint8 RGB image with up to three panels side by side:

1. **input**: the photo, the person mask tinted, the crop box, the 16 MPII landmarks and their skeleton
   (the person's right in red/orange, left in blue, the spine in green);
2. **front**: the reconstruction seen from the front (Blender's front view: looking along +Y, X right,
   Z up);
3. **side**: seen from the person's left (Blender's right view: looking along -X, Y right, Z up), so
   the face points to the left of the panel.

The mesh (metric frame, see core/frame.py) is drawn by core.geometry's numpy z-buffer rasteriser
(orthographic, Lambert shading with interpolated vertex normals), both views at the same scale with the
ground line Z = 0 and the height written in the corner.  Without a mesh, a shaded depth rendering of the
occupancy volume is shown instead (volume frame: front = along depth, side = from +x).
Headless: numpy + OpenCV only.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.files import write_atomic
from core.geometry import barycentrics, rasterise

PANEL_HEIGHT = 512
BACKGROUND = (40, 42, 48)
CLAY = np.array([214, 196, 170], dtype=np.float32)

# MPII-16 skeleton: r-ankle 0, r-knee 1, r-hip 2, l-hip 3, l-knee 4, l-ankle 5, pelvis 6, thorax 7,
# upper neck 8, head top 9, r-wrist 10, r-elbow 11, r-shoulder 12, l-shoulder 13, l-elbow 14, l-wrist 15.
_RIGHT = (255, 90, 40)
_LEFT = (60, 140, 255)
_MID = (60, 220, 90)
SKELETON = (
    (0, 1, _RIGHT), (1, 2, _RIGHT), (2, 6, _RIGHT),
    (5, 4, _LEFT), (4, 3, _LEFT), (3, 6, _LEFT),
    (6, 7, _MID), (7, 8, _MID), (8, 9, _MID),
    (10, 11, _RIGHT), (11, 12, _RIGHT), (12, 7, _RIGHT),
    (15, 14, _LEFT), (14, 13, _LEFT), (13, 7, _LEFT),
)
_JOINT_COLOURS = [_RIGHT] * 3 + [_LEFT] * 3 + [_MID] * 4 + [_RIGHT] * 3 + [_LEFT] * 3


def _shade(face_id, bary, faces, vertex_normals_view, light_view):
    """Lambert shading (two-sided) from interpolated view-space vertex normals -> (H, W, 3) uint8."""
    H, W = face_id.shape
    img = np.empty((H, W, 3), np.float32)
    img[:] = BACKGROUND
    m = face_id >= 0
    if not m.any():
        return img.astype(np.uint8)
    f = faces[face_id[m]]
    b = bary[m]
    n = (vertex_normals_view[f] * b[:, :, None]).sum(1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    lam = np.abs(n @ light_view)
    shade = 0.22 + 0.78 * lam
    img[m] = CLAY[None, :] * shade[:, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_mesh_view(vertices, faces, vertex_normals, view: str, scale: float, origin, size):
    """Orthographic render of a metric-frame mesh.

    view: "front" (looking along +Y: u = X, v = -Z) or "side" (looking along -X: u = Y, v = -Z).
    scale: pixels per metre; origin: the metric point (X or Y, Z) drawn at pixel (size[1]/2, ground row)
    given as ``(u0, z0, ground_row)``; size: (height, width).
    """
    H, W = size
    V = np.asarray(vertices, np.float64)
    N = np.asarray(vertex_normals, np.float64)
    u0, z0, ground_row = origin
    if view == "front":
        hcoord, depth = V[:, 0], V[:, 1]
        nview = np.stack([N[:, 0], -N[:, 2], N[:, 1]], axis=1)
    elif view == "side":
        hcoord, depth = V[:, 1], -V[:, 0]
        nview = np.stack([N[:, 1], -N[:, 2], -N[:, 0]], axis=1)
    else:
        raise ValueError(f"view must be 'front' or 'side', got {view!r}")
    uv = np.stack([W / 2 + (hcoord - u0) * scale, ground_row - (V[:, 2] - z0) * scale], axis=1)
    face_id, _ = rasterise(uv, depth, faces, (H, W))
    bary = barycentrics(uv, faces, face_id)
    # view space: x right, y down, z away from the viewer; light from the viewer, upper left
    light = np.array([-0.35, -0.45, -1.0])
    light /= np.linalg.norm(light)
    return _shade(face_id, bary, np.asarray(faces, np.int64), nview, light)


# --------------------------------------------------------------------------------------------------
# panels
# --------------------------------------------------------------------------------------------------

def _label(img, text, org=(8, 22)):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)


def _box_tuple(crop_box):
    if crop_box is None:
        return None
    if all(hasattr(crop_box, k) for k in ("x0", "y0", "width", "height")):
        return (float(crop_box.x0), float(crop_box.y0), float(crop_box.width), float(crop_box.height))
    x0, y0, w, h = [float(v) for v in crop_box]
    return (x0, y0, w, h)


def _photo_panel(rgb, landmarks16, mask, crop_box, height):
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    rgb = rgb[:, :, :3]
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb * (255.0 if rgb.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    h0, w0 = rgb.shape[:2]
    s = height / h0
    W = max(1, int(round(w0 * s)))
    img = cv2.resize(rgb, (W, height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    img = np.ascontiguousarray(img)
    if mask is not None:
        mk = np.asarray(mask, np.float32)
        if mk.max() > 1.0:
            mk = mk / 255.0
        mk = cv2.resize(mk, (W, height), interpolation=cv2.INTER_LINEAR) > 0.5
        tint = np.array([80, 255, 120], np.float32)
        img[mk] = (0.65 * img[mk] + 0.35 * tint).astype(np.uint8)
    box = _box_tuple(crop_box)
    if box is not None:
        x0, y0, bw, bh = box
        p0 = (int(round(x0 * s)), int(round(y0 * s)))
        p1 = (int(round((x0 + bw) * s)), int(round((y0 + bh) * s)))
        cv2.rectangle(img, p0, p1, (255, 220, 0), 2, cv2.LINE_AA)
    if landmarks16 is not None:
        lm = np.asarray(landmarks16, np.float64)
        vis = lm[:, 2] if lm.shape[1] > 2 else np.ones(len(lm))
        good = np.all(np.isfinite(lm[:, :2]), axis=1) & (np.nan_to_num(vis) >= 0.3)
        pts = lm[:, :2] * s
        th = max(2, height // 200)
        for a, b, col in SKELETON:
            if a < len(lm) and b < len(lm) and good[a] and good[b]:
                cv2.line(img, tuple(np.round(pts[a]).astype(int)), tuple(np.round(pts[b]).astype(int)),
                         col, th, cv2.LINE_AA)
        for k in range(len(lm)):
            if good[k]:
                c = tuple(np.round(pts[k]).astype(int))
                cv2.circle(img, c, th + 2, _JOINT_COLOURS[k % 16], -1, cv2.LINE_AA)
                cv2.circle(img, c, th + 2, (0, 0, 0), 1, cv2.LINE_AA)
    _label(img, "input")
    return img


def _mesh_panels(mesh_metric, height):
    V = np.asarray(mesh_metric.vertices, np.float64)
    F = np.asarray(mesh_metric.faces, np.int64)
    N = np.asarray(mesh_metric.vertex_normals, np.float64)
    lo, hi = V.min(0), V.max(0)
    body_h = max(hi[2] - lo[2], 1e-9)
    margin = 0.06 * height
    scale = (height - 2 * margin - 20) / body_h
    ground_row = height - margin
    panels = []
    for view, axis in (("front", 0), ("side", 1)):
        centre = 0.5 * (lo[axis] + hi[axis])
        W = int(max(0.45 * height, (hi[axis] - lo[axis]) * scale + 2 * margin))
        img = render_mesh_view(V, F, N, view, scale, (centre, lo[2], ground_row), (height, W))
        img = np.ascontiguousarray(img)
        cv2.line(img, (0, int(round(ground_row))), (W - 1, int(round(ground_row))), (120, 120, 130), 1)
        _label(img, view)
        if view == "front":
            _label(img, f"{body_h:.2f} m", (8, height - 8))
        panels.append(img)
    return panels


def _volume_panels(volume, height, level=0.5):
    occ = np.asarray(volume) >= level  # (D, H, W)
    panels = []
    for view in ("front", "side"):
        if view == "front":
            o = occ  # along depth d, image (h, w)
            hit = o.any(axis=0)
            first = np.argmax(o, axis=0).astype(np.float32)  # nearest = smallest d
        else:
            o = occ[:, :, ::-1]  # from +x: look along -w, image (h, d)
            hit = o.any(axis=2).T
            first = np.argmax(o, axis=2).T.astype(np.float32)
        gy, gx = np.gradient(np.where(hit, first, first[hit].max() + 5 if hit.any() else 0))
        n = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        light = np.array([-0.35, -0.45, 1.0])
        light /= np.linalg.norm(light)
        lam = np.clip(n @ light, 0, 1)
        img = np.empty(hit.shape + (3,), np.float32)
        img[:] = BACKGROUND
        img[hit] = CLAY * (0.22 + 0.78 * lam[hit])[:, None]
        s = height / hit.shape[0]
        W = max(1, int(round(hit.shape[1] * s)))
        img = cv2.resize(img.astype(np.uint8), (W, height), interpolation=cv2.INTER_NEAREST)
        img = np.ascontiguousarray(img)
        _label(img, f"{view} (volume)")
        panels.append(img)
    return panels


def render_preview(rgb, mesh_metric=None, landmarks16=None, mask=None, crop_box=None, volume=None,
                   height: int = PANEL_HEIGHT) -> np.ndarray:
    """One uint8 RGB image (height x total width): input panel, then front and side of the result.

    rgb: the photo (H, W, 3) uint8; landmarks16 (16, 3) ``(x, y, visibility)``, mask (H, W) and
    crop_box (``CropBox`` or ``(x0, y0, width, height)``) in the photo's pixels.
    mesh_metric: a trimesh in the metric frame (preferred); volume: (D, H, W) occupancy, drawn when no
    mesh is given.
    """
    panels = [_photo_panel(rgb, landmarks16, mask, crop_box, height)]
    if mesh_metric is not None and len(mesh_metric.faces) > 0:
        panels += _mesh_panels(mesh_metric, height)
    elif volume is not None:
        panels += _volume_panels(volume, height)
    sep = np.full((height, 4, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [sep, p]
    return np.ascontiguousarray(np.concatenate(out, axis=1))


def write_preview(path, rgb, mesh_metric=None, landmarks16=None, mask=None, crop_box=None, volume=None,
                  height: int = PANEL_HEIGHT) -> Path:
    """Render the preview and write it atomically as PNG (or JPEG, by suffix); returns the path."""
    path = Path(path)
    img = render_preview(rgb, mesh_metric, landmarks16, mask, crop_box, volume, height=height)
    ext = path.suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode a preview as '{ext}'")
    write_atomic(path, buf.tobytes())
    return path
