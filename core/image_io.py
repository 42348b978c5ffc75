"""Read any photo into one form (uint8 RGB, H x W x 3) and write PNGs atomically.

Everything downstream (detection, crop, encoding) assumes uint8 RGB in the orientation a person sees,
so the odd cases (grey, alpha, 16-bit, EXIF rotation) are settled here, once.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InputError

_FIX_FORMAT = "Use a JPEG, PNG or WebP photo."
# Longer sides are shrunk on load: the crop is a few hundred pixels and the detector looks at 1024 at most,
# so a 12000 x 9000 photo would only cost seconds and gigabytes (the texture keeps 2048, core.reconstruct).
MAX_SIDE = 4096


def load_image(source) -> np.ndarray:
    """Return the photo as a uint8 (H, W, 3) RGB array.

    `source` is a path (str or Path) or an array (H, W), (H, W, 1|3|4) of uint8, uint16 or float in [0, 1].
    EXIF orientation is applied, so the array is upright as a viewer shows it. A file whose longer side
    exceeds MAX_SIDE is downscaled to it while loading. Transparent pixels are
    composited on white (not dropped): a cut-out person then stands on a clean background instead of
    whatever colour happens to sit under the alpha. 16-bit data is scaled to 8 bits (x / 257).
    """
    if isinstance(source, np.ndarray):
        return _to_rgb8(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"Cannot read a photo from a {type(source).__name__}.",
                         "Pass a file path or an image array.")
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a photo.", "Give the path of one image file in it.")
    if not path.is_file():
        raise InputError(f"Photo not found: {path}.", "Check the path and that the file exists.")
    try:
        with warnings.catch_warnings():  # a large photo is expected here: it is shrunk below, not a bomb
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at 1/2, 1/4, 1/8 scale when that fits
                img = ImageOps.exif_transpose(img)
                img.load()
                if max(img.size) > MAX_SIDE:
                    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
                return _pil_to_rgb8(img)
    except UnidentifiedImageError as exc:
        arr = _read_with_opencv(path)  # what PIL cannot open, e.g. a 3-channel float TIFF
        if arr is None:
            raise InputError(f"Not a readable image: {path} ({exc}).", _FIX_FORMAT) from exc
        return arr
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"Not a readable image: {path} ({exc}).", _FIX_FORMAT) from exc


def _read_with_opencv(path: Path) -> np.ndarray | None:
    """uint8 RGB of an image only OpenCV reads (float or multi-channel TIFF); None when it cannot either."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim not in (2, 3):
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    scale = max(arr.shape[:2]) / MAX_SIDE
    if scale > 1:
        arr = cv2.resize(arr, (round(arr.shape[1] / scale), round(arr.shape[0] / scale)), interpolation=cv2.INTER_AREA)
    return _to_rgb8(_unit_floats(arr) if np.issubdtype(arr.dtype, np.floating) else arr)


def _unit_floats(x: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1]: files hold [0, 1] (a little over for highlights) or [0, 255]."""
    return x / 255.0 if np.nanmax(x) > 2.0 else x


def save_png(path, rgb: np.ndarray) -> None:
    """Write uint8 grey/RGB/RGBA as PNG atomically (core.files.write_atomic), so readers never see half a file."""
    from core.files import write_atomic

    write_atomic(Path(path), image_bytes(rgb, ".png"))


IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def image_bytes(rgb: np.ndarray, suffix: str = ".png") -> bytes:
    """uint8 grey/RGB/RGBA encoded as PNG or JPEG (by suffix, see IMAGE_SUFFIXES)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise ValueError(f"image_bytes wants uint8 (H, W), (H, W, 1|3|4); got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    fmt = IMAGE_SUFFIXES[suffix.lower()]
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    (img.convert("RGB") if fmt == "JPEG" else img).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _pil_to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey: PIL's convert("L") would clip, not scale.
        return _to_rgb8(np.asarray(img))
    if img.mode == "F":  # float (TIFF): convert("L") would clip [0, 1] to black
        return _to_rgb8(_unit_floats(np.asarray(img, np.float32)))
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
