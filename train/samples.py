"""One training sample on disk: ``DIR/samples/NNNNNNN.npz`` exactly as docs/ARCHITECTURE.md
("A training sample on disk") says; written atomically (`core.files.write_atomic`: a temporary file in the
same folder, then renamed), so a sample file is either complete or absent. Temp files start with '.' and end
in '.tmp'.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.files import write_atomic

KEYS = ("rgb", "mask", "parts", "landmarks16", "landmarks16_detected", "volume_bits", "volume_shape",
        "vertices_vox", "joints_vox", "vertices_cam", "joints_cam", "meta")
# mask_detected: uint8 0..255 mediapipe person probability, absent when nobody was found;
# volume_body_bits: the naked body's occupancy (same shape as the volume), only in samples that wear garments
OPTIONAL_KEYS = ("mask_detected", "volume_body_bits")
INPUT_KEYS = ("rgb", "mask", "landmarks16", "landmarks16_detected")  # what a network input is built from
SAMPLE_DIGITS = 7


def sample_path(out_dir, index: int) -> Path:
    return Path(out_dir) / "samples" / f"{int(index):0{SAMPLE_DIGITS}d}.npz"


def pack_volume(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vol = np.asarray(volume, dtype=bool)
    return np.packbits(vol.ravel()), np.asarray(vol.shape, dtype=np.int32)


def unpack_volume(volume_bits, volume_shape) -> np.ndarray:
    """Bit-packed occupancy -> bool (D, H, W)."""
    shape = tuple(int(x) for x in np.asarray(volume_shape).reshape(-1))
    n = int(np.prod(shape))
    return np.unpackbits(np.asarray(volume_bits, dtype=np.uint8), count=n).astype(bool).reshape(shape)


def write_sample(path, *, rgb, mask, parts, landmarks16, landmarks16_detected, volume, vertices_vox,
                 joints_vox, vertices_cam, joints_cam, meta: dict, mask_detected=None, volume_body=None) -> Path:
    """Write one sample atomically. `volume` is the bool (D, H, W) occupancy; `mask_detected` the
    detector's person probability on the crop, in [0, 1] (None when nobody was found); `volume_body` the
    naked body's occupancy when `volume` also holds garments (None otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bits, shape = pack_volume(volume)
    arrays = dict(
        rgb=np.asarray(rgb, np.uint8), mask=(np.asarray(mask) > 0).astype(np.uint8) * 255,
        parts=np.asarray(parts, np.uint8),
        landmarks16=np.asarray(landmarks16, np.float32).reshape(16, 3),
        landmarks16_detected=np.asarray(landmarks16_detected, np.float32).reshape(16, 3),
        volume_bits=bits, volume_shape=shape,
        vertices_vox=np.asarray(vertices_vox, np.float32).reshape(-1, 3),
        joints_vox=np.asarray(joints_vox, np.float32).reshape(-1, 3),
        vertices_cam=np.asarray(vertices_cam, np.float32).reshape(-1, 3),
        joints_cam=np.asarray(joints_cam, np.float32).reshape(-1, 3),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    if mask_detected is not None:
        arrays["mask_detected"] = np.round(np.clip(mask_detected, 0, 1) * 255).astype(np.uint8)
    if volume_body is not None:
        arrays["volume_body_bits"] = pack_volume(volume_body)[0]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
    return path


def read_sample(path, volume: bool = True, keys=(*KEYS, *OPTIONAL_KEYS)) -> dict:
    """Load a sample: arrays, meta as a dict, and (volume=True) 'volume' unpacked to bool (D, H, W), plus
    'volume_body' (the naked body's) when the sample wears garments and `keys` asks for volume_body_bits.

    `keys` limits what is decompressed (plus mask_detected when present and what `volume` needs): the
    training loader skips the vertex arrays, which take two thirds of a full read (6.6 ms -> 2.1 ms a
    128^3 sample on the 2-core CPU).
    """
    path = Path(path)
    wanted = set(keys) | {"meta"} | ({"volume_bits", "volume_shape"} if volume else set())
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k in wanted and k not in z.files]
            if missing:
                raise DataError(f"Sample {path} lacks {', '.join(missing)}.",
                                "Delete it and run make_dataset again to regenerate it.")
            out = {k: z[k] for k in (*KEYS, *OPTIONAL_KEYS) if (k in wanted or k == "mask_detected") and k in z.files}
    except DataError:
        raise
    except Exception as e:  # truncated zip, bad header, ...
        raise DataError(f"Sample {path} cannot be read ({type(e).__name__}: {e}).",
                        "Delete it and run make_dataset again to regenerate it.") from e
    out["meta"] = json.loads(str(out["meta"]))
    if volume:
        out["volume"] = unpack_volume(out["volume_bits"], out["volume_shape"])
        if "volume_body_bits" in out:
            out["volume_body"] = unpack_volume(out["volume_body_bits"], out["volume_shape"])
    return out


def read_meta(path) -> dict:
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except Exception as e:  # truncated zip, no meta, bad JSON
        raise DataError(f"Sample {path} cannot be read ({type(e).__name__}: {e}).",
                        "Run the make_dataset command again: it remakes broken samples.") from e


def sample_problem(path) -> str | None:
    """Why a sample file is broken (cut off, a bad CRC, a key or its meta missing), or None when it is whole.
    Reads every byte (zip CRCs), so a rerun finds what a crash or a full disk left behind."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                return f"{bad} fails its checksum"
            names = {n.removesuffix(".npy") for n in z.namelist()}
        missing = [k for k in KEYS if k not in names]
        if missing:
            return f"lacks {', '.join(missing)}"
        read_meta(path)
    except (zipfile.BadZipFile, OSError, EOFError, DataError) as e:
        return f"{type(e).__name__}: {e}"
    return None
