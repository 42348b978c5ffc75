"""The backend process the Blender add-on talks to: `python -m core.backend`.

Blender's own Python usually has no torch or mediapipe, so the add-on starts this module with a Python
environment that has them (the project's `.venv`). The protocol is deliberately small:

* stdin: one JSON request::

      {"photo": "/path/person.jpg", "model": "default" | name | path, "method": "vrn",
       "device": "auto" | "gpu" | "cpu", "subject_height": 1.70, "smoothing": 10,
       "face_budget": null | int, "output": "/path/result.npz",
       "rig": false, "rig_model": "default",          # optional: rig a VRN surface with this HMNet model
       "model_dirs": ["/extra/models", ...]}          # optional: searched before the default dirs

* stdout: JSON lines ``{"stage": "detect", "fraction": 0.15}`` while it works, then exactly one final
  line, ``{"done": "/path/result.npz"}`` or ``{"error": "message", "kind": "NoPersonError",
  "problem": ..., "fix": ...}``. Anything a library prints goes to stderr, never into the protocol.
* exit status 0 on success, the error's ``exit_code`` (2 input, 3 no person, 4 model, ...) otherwise.

The result file is an ``.npz`` (load with ``allow_pickle=False``) with the arrays listed in
:data:`RESULT_KEYS`; next to it the photo as the mesh's texture (``*_texture.png``) and the photo with the
detected landmarks drawn (``*_landmarks.png``).

The add-on's in-process path (when torch imports inside Blender) calls :func:`run_request` in a worker
thread, so both paths write exactly the same file from the same code.

``python -m core.backend --check`` prints (as JSON) which Python this is, whether torch/mediapipe import,
whether a GPU is visible and which models it finds: the one command to run when pointing the add-on at an
environment.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

# What the .npz holds (all plain arrays; strings as numpy unicode arrays, JSON where nested).
RESULT_KEYS = (
    "vertices",        # float32 (N, 3) metric frame: metres, Z up, facing -Y, feet on z = 0
    "faces",           # int32 (F, 3)
    "normals",         # float32 (N, 3) vertex normals
    "uv",              # float32 (N, 2) front projection into the photo, u right, v up
    "landmarks16",     # float32 (16, 3) source pixels + visibility, MPII order
    "crop_box",        # float64 (4,) x0, y0, width, height in source pixels
    "image_size",      # int32 (2,) height, width of the photo as loaded (EXIF-rotated)
    "person_colour",   # float32 (3,) mean sRGB colour of the person in [0, 1]: fill for the unseen back
    "photo",           # str: the photo's path as given
    "texture",         # str: PNG of the photo the uv map into
    "landmarks_image", # str: PNG of the photo with the landmarks drawn
    "model_name",      # str
    "warnings",        # str (JSON list)
    "timings",         # str (JSON dict, seconds per stage)
)
# Present only when the result has a rig (HumanMeshNet; VRN with "rig": true): names (J,) str, heads/tails
# (J, 3) float32, parents (J,) int32 (-1 = root), weights (N, J) float32, axes (J, 3, 3) float32 (bone x, y,
# z as columns: the roll).
ARMATURE_KEYS = ("armature_names", "armature_heads", "armature_tails", "armature_parents",
                 "armature_weights", "armature_axes")

DEVICES = {"auto": "auto", "gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}
LANDMARK_IMAGE_MAX_HEIGHT = 1024

Progress = Callable[[str, float], None]


def _cancelled_error():
    from core.errors import Cancelled

    return Cancelled("Reconstruction cancelled.", "")


def _check_request(request: dict) -> dict:
    from core.errors import InputError

    if not isinstance(request, dict):
        raise InputError("The backend request is not a JSON object.", "Send one JSON object on stdin.")
    for key in ("photo", "output"):
        if not request.get(key):
            raise InputError(f"The backend request has no '{key}'.", "Name the photo and the output file.")
    req = {"model": "default", "method": "vrn", "device": "auto", "subject_height": 1.70, "smoothing": 10,
           "face_budget": None, "rig": False, "rig_model": "default", **request}
    device = str(req["device"]).lower()
    if device not in DEVICES:
        raise InputError(f"Unknown device {req['device']!r}.", "Use auto, gpu or cpu.")
    req["device"] = DEVICES[device]
    req["subject_height"] = float(req["subject_height"])
    req["smoothing"] = int(req["smoothing"])
    fb = req.get("face_budget")
    req["face_budget"] = int(fb) if fb else None
    req["rig"] = bool(req["rig"])
    return req


def _resolve_model(model, method: str, extra_dirs) -> str:
    """A bare model name (or "default") searched in `extra_dirs` first, then core's own search dirs.
    Paths, and names not found in the extra dirs, are passed on unchanged (core reports what is missing)."""
    if not extra_dirs:
        return model
    from core.checkpoint import default_search_dirs, resolve_model
    from core.errors import ModelError
    from core.reconstruct import DEFAULT_MODELS

    name = DEFAULT_MODELS.get(method, model) if model in (None, "", "default") else str(model)
    if os.sep in name or "/" in name:
        return name
    try:
        js, _ = resolve_model(name, search_dirs=[Path(d) for d in extra_dirs] + default_search_dirs())
    except ModelError:
        return model
    return str(js.with_suffix(""))


def person_colour(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Mean colour (float32 RGB in [0, 1]) of the photo where the mesh projects: the person's own colours."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    if len(uv) == 0:
        return np.full(3, 0.5, np.float32)
    x = np.clip((uv[:, 0] * w).astype(np.int64), 0, w - 1)
    y = np.clip(((1.0 - uv[:, 1]) * h).astype(np.int64), 0, h - 1)
    return (img[y, x, :3].astype(np.float64).mean(axis=0) / 255.0).astype(np.float32)


def result_arrays(result, photo: str, texture: str, landmarks_image: str) -> dict[str, np.ndarray]:
    """A core.reconstruct.Result as the plain arrays of the .npz (see RESULT_KEYS)."""
    mesh = result.mesh
    uv = np.asarray(result.uv, np.float32)
    box = result.crop_box
    if all(hasattr(box, k) for k in ("x0", "y0", "width", "height")):
        box = (box.x0, box.y0, box.width, box.height)
    out = {
        "vertices": np.asarray(mesh.vertices, np.float32),
        "faces": np.asarray(mesh.faces, np.int32),
        "normals": np.asarray(mesh.vertex_normals, np.float32),
        "uv": uv,
        "landmarks16": np.asarray(result.landmarks16, np.float32),
        "crop_box": np.asarray(box, np.float64),
        "image_size": np.asarray(result.image.shape[:2], np.int32),
        "person_colour": person_colour(result.image, uv),
        "photo": np.array(str(photo)),
        "texture": np.array(str(texture)),
        "landmarks_image": np.array(str(landmarks_image)),
        "model_name": np.array(str(result.model_name)),
        "warnings": np.array(json.dumps(list(result.warnings))),
        "timings": np.array(json.dumps({k: float(v) for k, v in result.timings.items()})),
    }
    rig = getattr(result, "rig", None)
    if rig is not None:
        out.update({
            "armature_names": np.asarray([str(n) for n in rig.names]),
            "armature_heads": np.asarray(rig.heads, np.float32),
            "armature_tails": np.asarray(rig.tails, np.float32),
            "armature_parents": np.asarray(rig.parents, np.int32),
            "armature_weights": np.asarray(rig.dense_weights(), np.float32),
            "armature_axes": np.asarray(rig.axes, np.float32),
        })
    return out


def _atomic_savez(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run_request(request: dict, progress: Progress | None = None,
                cancel: threading.Event | None = None) -> Path:
    """Reconstruct as the request asks and write the result files; returns the .npz path.

    Raises core.errors.MonohumanError subclasses (Cancelled when `cancel` is set)."""
    from core.image_io import save_png
    from core.preview import render_preview
    from core.reconstruct import reconstruct

    req = _check_request(request)
    out = Path(req["output"])
    t0 = time.perf_counter()
    model = _resolve_model(req["model"], req["method"], req.get("model_dirs") or [])
    result = reconstruct(req["photo"], model=model, method=req["method"], device=req["device"],
                         subject_height=req["subject_height"], smoothing=req["smoothing"],
                         face_budget=req["face_budget"], rig=req["rig"],
                         rig_model=_resolve_model(req["rig_model"], "hmnet", req.get("model_dirs") or [])
                         if req["rig"] else "default",
                         progress=progress, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise _cancelled_error()

    stem = out.with_suffix("")
    texture = stem.with_name(stem.name + "_texture.png")
    landmarks_png = stem.with_name(stem.name + "_landmarks.png")
    tex = getattr(result.mesh.visual, "material", None)
    tex_img = getattr(tex, "image", None)
    save_png(texture, np.asarray(tex_img.convert("RGB")) if tex_img is not None else result.image)
    height = min(LANDMARK_IMAGE_MAX_HEIGHT, int(result.image.shape[0]))
    save_png(landmarks_png, render_preview(result.image, landmarks16=result.landmarks16, mask=result.mask,
                                           crop_box=result.crop_box, height=height))
    arrays = result_arrays(result, req["photo"], str(texture), str(landmarks_png))
    timings = json.loads(str(arrays["timings"]))
    timings["backend_total"] = time.perf_counter() - t0
    arrays["timings"] = np.array(json.dumps(timings))
    _atomic_savez(out, arrays)
    return out


def load_result(path) -> dict:
    """Read a result .npz back into a dict of arrays/strings (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        res = {k: data[k] for k in data.files}
    for key in ("photo", "texture", "landmarks_image", "model_name"):
        if key in res:
            res[key] = str(res[key])
    res["warnings"] = json.loads(str(res.get("warnings", "[]")))
    res["timings"] = json.loads(str(res.get("timings", "{}")))
    return res


# --------------------------------------------------------------------------------------------------
# The process entry


def _models_found() -> list[str]:
    models = Path(__file__).resolve().parent.parent / "models"
    return sorted(p.stem for p in models.glob("*.json")) if models.is_dir() else []


def check() -> dict:
    """What this environment can do (for `--check`)."""
    info = {"python": sys.executable, "core": str(Path(__file__).resolve().parent),
            "models": _models_found(), "ok": True}
    for name in ("numpy", "torch", "mediapipe", "cv2", "skimage", "trimesh"):
        try:
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - report anything that stops an import
            info[name] = None
            info["ok"] = False
            info.setdefault("problems", []).append(f"{name}: {exc}")
    if info.get("torch"):
        import torch

        info["cuda"] = bool(torch.cuda.is_available())
        info["gpu"] = torch.cuda.get_device_name(0) if info["cuda"] else None
    return info


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Keep the protocol clean: our lines go to the real stdout, everything else printed (by torch,
    # mediapipe, absl, ...) lands on stderr, at the file-descriptor level so C libraries obey too.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    if argv and argv[0] == "--check":
        info = check()
        send(info)
        return 0 if info["ok"] else 1
    if argv:
        send({"error": f"Unknown arguments {argv}.", "kind": "InputError"})
        return 2

    try:
        from core.errors import InputError, MonohumanError
    except Exception as exc:  # noqa: BLE001
        send({"error": f"The backend cannot import core: {exc}", "kind": type(exc).__name__})
        return 1
    try:
        try:
            request = json.loads(sys.stdin.readline() or "null")
        except json.JSONDecodeError as exc:
            raise InputError(f"The backend request is not valid JSON ({exc}).",
                             "Send one JSON object on stdin.") from exc
        path = run_request(request, progress=lambda s, f: send({"stage": s, "fraction": float(f)}))
        send({"done": str(path)})
        return 0
    except MonohumanError as err:
        send({"error": str(err), "kind": type(err).__name__, "problem": err.problem, "fix": err.fix})
        return int(getattr(err, "exit_code", 1) or 1)
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still ends the protocol cleanly
        traceback.print_exc()
        send({"error": f"The backend failed: {type(exc).__name__}: {exc}", "kind": type(exc).__name__,
              "problem": f"The backend failed: {exc}", "fix": "See the backend log for the traceback."})
        return 1


if __name__ == "__main__":
    sys.exit(main())
