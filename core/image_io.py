"""Read any photo into one form (uint8 RGB, H x W x 3) and write PNGs atomically.

Everything downstream (detection, crop, encoding) assumes uint8 RGB in the orientation a person sees,
so the odd cases (grey, alpha, 16-bit, EXIF rotation) are settled here, once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InputError

_FIX_FORMAT = "Use a JPEG, PNG or WebP photo."


def load_image(source) -> np.ndarray:
    """Return the photo as a uint8 (H, W, 3) RGB array.

    `source` is a path (str or Path) or an array (H, W), (H, W, 1|3|4) of uint8, uint16 or float in [0, 1].
    EXIF orientation is applied, so the array is upright as a viewer shows it. Transparent pixels are
    composited on white (not dropped): a cut-out person then stands on a clean background instead of
    whatever colour happens to sit under the alpha. 16-bit data is scaled to 8 bits (x / 257).
    """
    if isinstance(source, np.ndarray):
        return _to_rgb8(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"Cannot read a photo from a {type(source).__name__}.",
                         "Pass a file path or an image array.")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"Photo not found: {path}.", "Check the path and that the file exists.")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return _pil_to_rgb8(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"Not a readable image: {path} ({exc}).", _FIX_FORMAT) from exc


def save_png(path, rgb: np.ndarray) -> None:
    """Write uint8 grey/RGB/RGBA as PNG via a temp file + os.replace, so readers never see half a file."""
    path = Path(path)
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise ValueError(f"save_png wants uint8 (H, W), (H, W, 1|3|4); got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pil_to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey: PIL's convert("L") would clip, not scale.
        return _to_rgb8(np.asarray(img))
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    return _to_rgb8(np.asarray(img.convert("RGBA" if has_alpha else "RGB")))


def _to_rgb8(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise InputError(f"An image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}.",
                         "Pass a grey, RGB or RGBA image.")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype in (np.uint16, np.int32, np.int64, np.uint32):
        x = arr.astype(np.float32) / 65535.0  # PIL hands 16-bit PNGs over as int32
    elif arr.dtype == bool:
        x = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        x = np.nan_to_num(arr.astype(np.float32))
    else:
        raise InputError(f"Unsupported image data type {arr.dtype}.", "Use 8- or 16-bit images.")
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    x = np.clip(x, 0.0, 1.0)
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    elif x.shape[2] == 4:
        alpha = x[:, :, 3:]
        x = x[:, :, :3] * alpha + (1.0 - alpha)  # composite on white
    return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
