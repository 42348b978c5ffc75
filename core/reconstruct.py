"""The public pipeline: photo -> detect -> crop -> encode -> network -> surface -> metric frame.

Everything here is glue: each stage is a function of its own module, so training, the CLI and the Blender
add-on all run exactly the same code. Stages report progress and honour a cancel event between stages.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh

from core.checkpoint import LoadedModel, load_model
from core.crop import CropBox, crop_box_from_mask, crop_image
from core.detect import detect_person
from core.encode import encode
from core.errors import Cancelled, MonohumanError
from core.image_io import load_image
from core.surface import extract_surface, surface_to_metric

DEFAULT_MODELS = {"vrn": "vrn-default"}
MAX_TEXTURE_SIDE = 2048

# (stage, fraction of the work done when the stage starts): used for progress bars.
STAGES = (("load", 0.0), ("model", 0.05), ("detect", 0.15), ("crop", 0.35), ("encode", 0.4),
          ("network", 0.45), ("surface", 0.8), ("frame", 0.95))

Progress = Callable[[str, float], None]


@dataclass
class Result:
    """A reconstruction: the mesh in the metric frame and everything needed to check it against the photo."""

    mesh: trimesh.Trimesh  # metres, Z up, facing -Y, feet on z = 0, centred on x = y = 0
    uv: np.ndarray  # (N, 2) front projection into the photo, u right, v up, in [0, 1]
    image: np.ndarray  # the photo, uint8 RGB
    volume: np.ndarray  # (D, H, W) float32 occupancy probability
    landmarks16: np.ndarray  # (16, 3) source pixels + visibility, MPII order
    landmarks33: np.ndarray  # (33, 4) mediapipe landmarks, source pixels
    mask: np.ndarray  # (H, W) float32 person probability in the photo
    crop_box: CropBox
    vox_to_metric: np.ndarray  # 4x4: volume frame -> metric frame
    model_name: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    armature: dict | None = None


def pick_device(device: str = "auto") -> torch.device:
    """auto: CUDA when there is one, else CPU. Asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise MonohumanError("No CUDA GPU is available on this machine.", "Use --device cpu or auto.")
        return torch.device("cuda")
    if device == "cpu":
        return torch.device("cpu")
    raise MonohumanError(f"Unknown device {device!r}.", "Use auto, cuda or cpu.")


class _Stages:
    """Times each stage, reports progress and stops between stages when cancel is set."""

    def __init__(self, progress: Progress | None, cancel: threading.Event | None):
        self.progress, self.cancel = progress, cancel
        self.timings: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def __call__(self, name: str) -> None:
        self._close()
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Reconstruction cancelled.", "")
        self._name, self._t0 = name, time.perf_counter()
        if self.progress is not None:
            self.progress(name, dict(STAGES)[name])

    def _close(self) -> None:
        if self._name is not None:
            self.timings[self._name] = time.perf_counter() - self._t0
            self._name = None

    def finish(self) -> dict[str, float]:
        self._close()
        self.timings["total"] = sum(self.timings.values())
        if self.progress is not None:
            self.progress("done", 1.0)
        return self.timings


def _resolve_model(model, method: str, device: torch.device) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if model in (None, "default"):
        if method not in DEFAULT_MODELS:
            raise MonohumanError(f"Unknown method {method!r}.", f"Use one of: {', '.join(DEFAULT_MODELS)}.")
        model = DEFAULT_MODELS[method]
    return load_model(model, device=str(device))


def _front_uv(points_vox: np.ndarray, box: CropBox, volume_hw: tuple[int, int], image_hw: tuple[int, int]):
    """Texture coordinates that project the photo onto the mesh from the camera (the front)."""
    src = box.to_source(points_vox[:, :2], volume_hw)
    u = src[:, 0] / image_hw[1]
    v = 1.0 - src[:, 1] / image_hw[0]
    return np.clip(np.stack([u, v], axis=1), 0.0, 1.0).astype(np.float32)


def _texture_image(rgb: np.ndarray):
    from PIL import Image

    img = Image.fromarray(rgb)
    scale = MAX_TEXTURE_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return img


def surface_level(loaded: LoadedModel) -> float:
    """The iso-level a model's surface is extracted at: chosen on its validation data (`train.calibrate`),
    else the conventional 0.5."""
    return float((loaded.meta.get("inference") or {}).get("iso_level", 0.5))


def predict_volume(loaded: LoadedModel, inputs: np.ndarray, device: torch.device) -> np.ndarray:
    """Network forward pass on one encoded input: occupancy probabilities (D, H, W), float32."""
    x = torch.from_numpy(inputs)[None].to(device)
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = loaded.network(x)[-1]
        else:
            logits = loaded.network(x)[-1]
        return torch.sigmoid(logits.float())[0].cpu().numpy()


def reconstruct(image, model="default", method: str = "vrn", device: str = "auto",
                subject_height: float = 1.70, smoothing: int = 10, face_budget: int | None = None,
                progress: Progress | None = None, cancel: threading.Event | None = None) -> Result:
    """Reconstruct the person in `image` (a path or a uint8 RGB array) as a mesh in the metric frame."""
    if not 0.3 <= subject_height <= 3.0:
        raise MonohumanError(f"Subject height {subject_height} m is not a human height.",
                             "Give the height in metres, e.g. 1.70.")
    stage = _Stages(progress, cancel)

    stage("load")
    rgb = load_image(image)
    torch_device = pick_device(device)

    stage("model")
    loaded = _resolve_model(model, method, torch_device)
    cfg = loaded.config
    d, h, w = cfg.volume_shape
    in_hw = tuple(cfg.input_size)

    stage("detect")
    det = detect_person(rgb)

    stage("crop")
    box = crop_box_from_mask(det.mask, aspect_wh=w / h)
    crop_rgb = crop_image(rgb, box, in_hw)
    crop_mask = crop_image(det.mask, box, in_hw)
    crop_landmarks = box.to_crop(det.landmarks16, in_hw)

    stage("encode")
    inputs = encode(crop_rgb, crop_landmarks, crop_mask, cfg.inputs)

    stage("network")
    volume = predict_volume(loaded, inputs, torch_device)

    stage("surface")
    mesh_vox = extract_surface(volume, level=surface_level(loaded), smooth_iterations=smoothing,
                               face_budget=face_budget)

    stage("frame")
    mesh, vox_to_metric = surface_to_metric(mesh_vox, subject_height)
    uv = _front_uv(np.asarray(mesh_vox.vertices), box, (h, w), rgb.shape[:2])
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=_texture_image(rgb))

    return Result(mesh=mesh, uv=uv, image=rgb, volume=volume, landmarks16=det.landmarks16,
                  landmarks33=det.landmarks33, mask=det.mask, crop_box=box, vox_to_metric=vox_to_metric,
                  model_name=loaded.name, timings=stage.finish(), warnings=list(det.warnings))


def default_output_path(photo: str | Path, suffix: str = ".glb") -> Path:
    photo = Path(photo)
    return photo.with_name(photo.stem + suffix)
