"""Training samples as network inputs: reads datasets made by `train.make_dataset` and builds each input with
`core.encode.encode`, the same function inference calls, after the paper's on-the-fly augmentation.

Augmentation (VRN paper, section 3.3): colour channel scaling, random translation and horizontal flip; the
flip also mirrors the volume and swaps left/right landmarks. Scale augmentation happens at generation time
(the crop box is jittered), so it costs nothing here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.encode import encode
from core.errors import DataError
from core.landmarks import flip_landmarks
from train.samples import INPUT_KEYS, read_sample


@dataclass(frozen=True)
class Augment:
    colour: float = 0.2  # each RGB channel is scaled by a factor in [1 - colour, 1 + colour]
    shift: float = 0.05  # translation up to this fraction of the volume width/height
    flip: float = 0.5  # probability of a horizontal flip


NO_AUGMENT = Augment(colour=0.0, shift=0.0, flip=0.0)


def read_manifest(data_dir: str | Path) -> list[dict]:
    """The manifest lines of one dataset folder, each with the absolute path of its sample file."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise DataError(f"No manifest.jsonl in {data_dir}.",
                        "Point at a folder written by `python -m train.make_dataset` (a finished run).")
    rows = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                row["path"] = str(data_dir / row["file"])
            except (json.JSONDecodeError, TypeError, KeyError) as err:
                raise DataError(f"{manifest} line {number} is cut off or damaged ({err}).",
                                "Run the make_dataset command that made it again: it rebuilds the manifest.") from None
            rows.append(row)
    return rows


def pooling_factor(data_shape, model_shape) -> int:
    """Integer factor k with data = k * model in every axis (k = 1: same shape)."""
    ratios = {d / m for d, m in zip(data_shape, model_shape)}
    if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
        raise DataError(f"The data holds volumes of shape {tuple(data_shape)}, the model wants "
                        f"{tuple(model_shape)}.", "Use --volume equal to the data's, or the data's divided by 2 or 4.")
    return int(next(iter(ratios)))


def pool_volume(volume: np.ndarray, factor: int) -> np.ndarray:
    """Coarser occupancy: a voxel is inside when at least half of its factor^3 fine voxels are."""
    if factor == 1:
        return volume
    d, h, w = (s // factor for s in volume.shape)
    blocks = volume.reshape(d, factor, h, factor, w, factor)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32) >= 0.5


DEPTH_ANCHORS = ("vertex-mean", "centroid")


def depth_anchor_shift(volume: np.ndarray, anchor: str) -> int:
    """Whole voxels to move a stored volume along depth so it is aligned by `anchor`.

    "vertex-mean" (the paper's "aligned by the mean of the Z component"; how samples are stored): the mean
    depth of the mesh's vertices sits at D/2; no move. Anny's vertices are dense on the face, hands and
    feet, so where that mean falls inside the body depends on the pose: the stored bodies' own centroids sit
    2.7 voxels (std, 64^3) from D/2, an offset a network must guess from the photo. "centroid": the occupied
    voxels' mean depth sits at D/2 (to within half a voxel of the stored grid), a function of the shape alone.
    """
    if anchor == "vertex-mean":
        return 0
    if anchor != "centroid":
        raise DataError(f"Unknown depth anchor {anchor!r}.", f"Use one of {list(DEPTH_ANCHORS)}.")
    return int(round(-depth_centroid_offset(volume)))


def depth_centroid_offset(volume: np.ndarray) -> float:
    """Mean depth of the occupied voxels (centres at d + .5) minus D/2, in voxels; 0 for an empty volume."""
    per_slice = volume.sum(axis=(1, 2), dtype=np.int64)
    if not per_slice.any():
        return 0.0
    return float((per_slice * (np.arange(volume.shape[0]) + 0.5)).sum() / per_slice.sum()) - volume.shape[0] / 2.0


def shift_depth(volume: np.ndarray, shift: int) -> np.ndarray:
    """Move a (D, H, W) volume `shift` voxels deeper (negative: nearer), filling with empty space."""
    return _shift(volume, shift, 0, axes=(0, 1)) if shift else volume


def model_depth_anchor(loaded) -> str:
    """The depth anchor a model was trained with (older models: the paper's vertex mean)."""
    recipe = (loaded.meta.get("training") or {}).get("recipe") or {}
    return str(recipe.get("depth_anchor", "vertex-mean"))


def target_volume(volume: np.ndarray, model_shape, anchor: str = "vertex-mean") -> np.ndarray:
    """A stored occupancy volume as a model's target: aligned by `anchor`, then pooled to the model's shape.

    The one place training, calibration and evaluation turn sample volumes into targets."""
    aligned = shift_depth(volume, depth_anchor_shift(volume, anchor))
    return pool_volume(aligned, pooling_factor(volume.shape, model_shape))


def training_landmarks(sample: dict, rng: np.random.Generator, detected_fraction: float) -> np.ndarray:
    """Detected landmarks (what inference sees) when there are some, mixed with the projected ground truth."""
    detected = sample.get("landmarks16_detected")
    if detected is not None and np.isfinite(detected).all() and rng.random() < detected_fraction:
        return detected
    return sample["landmarks16"]


def training_mask(sample: dict) -> np.ndarray:
    """The detector's mask when the sample has one (what inference sees), else the rendered mask."""
    mask = sample.get("mask_detected")
    return mask if mask is not None else sample["mask"]


def augment_sample(rgb, mask, landmarks, volume, aug: Augment, rng: np.random.Generator):
    """Colour scaling, integer translation (in volume voxels, so image and volume stay aligned) and flip."""
    h_in, w_in = rgb.shape[:2]
    _, h, w = volume.shape
    sy, sx = h_in // h, w_in // w
    if aug.colour > 0:
        scale = rng.uniform(1 - aug.colour, 1 + aug.colour, size=3)
        rgb = np.clip(rgb.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if aug.shift > 0:
        dy = int(rng.integers(-int(aug.shift * h), int(aug.shift * h) + 1))
        dx = int(rng.integers(-int(aug.shift * w), int(aug.shift * w) + 1))
        rgb = _shift(rgb, dy * sy, dx * sx)
        mask = _shift(mask, dy * sy, dx * sx)
        volume = _shift(volume, dy, dx, axes=(1, 2))
        landmarks = landmarks.copy()
        landmarks[:, 0] += dx * sx
        landmarks[:, 1] += dy * sy
    if rng.random() < aug.flip:
        rgb, mask, volume = rgb[:, ::-1], mask[:, ::-1], volume[:, :, ::-1]
        landmarks = flip_landmarks(landmarks, w_in)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(mask), landmarks, np.ascontiguousarray(volume)


def _shift(a: np.ndarray, dy: int, dx: int, axes=(0, 1)) -> np.ndarray:
    """Translate by whole pixels, filling with zeros (no wrap-around)."""
    out = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    for axis, d in zip(axes, (dy, dx)):
        n = a.shape[axis]
        src[axis] = slice(max(0, -d), n - max(0, d))
        dst[axis] = slice(max(0, d), n - max(0, -d))
    out[tuple(dst)] = a[tuple(src)]
    return out


class VolumeDataset(torch.utils.data.Dataset):
    """(input, occupancy) pairs for one split of one or more dataset folders (shards)."""

    def __init__(self, data_dirs, split: str | None, inputs, volume_shape=None, augment: Augment = NO_AUGMENT,
                 detected_landmarks: float = 0.5, seed: int = 0, depth_anchor: str = "vertex-mean",
                 fit_noise: str = "", least_noise: float = 1.0):
        dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
        rows = [row for d in dirs for row in read_manifest(d)]
        self.rows = [r for r in rows if split is None or r.get("split") == split]
        if not self.rows:
            raise DataError(f"No {split or ''} samples in {', '.join(map(str, dirs))}.",
                            "Generate more samples, or check the split names in the dataset card.")
        first = read_sample(self.rows[0]["path"], volume=False)
        self.volume_shape = tuple(int(v) for v in first["volume_shape"])
        self.input_size = tuple(first["rgb"].shape[:2])
        self.target_shape = tuple(volume_shape) if volume_shape is not None else self.volume_shape
        pooling_factor(self.volume_shape, self.target_shape)  # fails early with a clear message
        self.inputs = tuple(inputs)
        self.augment = augment
        self.detected_landmarks = detected_landmarks
        self.seed = seed
        self.depth_anchor = depth_anchor
        self.epoch = 0
        # body-guided networks: each sample's true body made as wrong as the fit (train.body_guides)
        self.guides = None
        if "body" in self.inputs:
            from train.body_guides import GuideMaker

            self.guides = GuideMaker(self.rows, fit_noise or None, least_noise)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation is a function of (seed, epoch, index): resuming repeats exactly the same batches."""
        self.epoch = epoch

    def __getitem__(self, index: int):
        sample = read_sample(self.rows[index]["path"], keys=INPUT_KEYS)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        landmarks = np.array(training_landmarks(sample, rng, self.detected_landmarks), dtype=np.float32)
        volume = target_volume(sample["volume"], self.target_shape, self.depth_anchor)
        mask = training_mask(sample)
        guide = None
        if self.guides is not None:  # the guide moves with the image: it rides in the mask's extra planes
            guide = self.guides.draw(self.rows[index]["path"], rng, self.volume_shape, sample["rgb"].shape[:2])
            mask = np.dstack([_unit(mask), guide.transpose(1, 2, 0)])
        rgb, mask, landmarks, volume = augment_sample(sample["rgb"], mask, landmarks, volume, self.augment, rng)
        if guide is not None:
            mask, guide = mask[..., 0], mask[..., 1:].transpose(2, 0, 1)
        x = encode(rgb, landmarks, mask, self.inputs, body=guide)
        return torch.from_numpy(x), torch.from_numpy(volume.astype(np.float32))


def _unit(mask: np.ndarray) -> np.ndarray:
    """A mask as float32 in [0, 1] (uint8 masks are 0..255)."""
    m = np.asarray(mask)
    return m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
