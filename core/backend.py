"""The backend process the Blender add-on talks to: `python -m core.backend`.

Blender's own Python usually has no torch or mediapipe, so the add-on starts this module with a Python
environment that has them (the project's `.venv`). The protocol is deliberately small:

* stdin: one JSON request::

      {"photo": "/path/person.jpg", "model": "default" | name | path, "method": "vrn",
       "device": "auto" | "gpu" | "cpu", "subject_height": 1.70, "smoothing": 10,
       "face_budget": null | int, "output": "/path/result.npz",
       "rig": false, "rig_model": "default",          # optional: rig a VRN surface with this HMNet model
       "body_parts": true,                            # optional: a VRN surface's hands, feet from the fitted body
       "match_mask": true,                            # optional: a VRN volume keeps to the person mask
       "init": {...fitted parameters...},              # optional, method "fit": refit from these (a result's
       "init_pose": {"names": [...], "parents": [...], #   "fit_params"), re-posed by an armature's pose
                     "pose": [J x 4 x 4]},            #   (rest -> posed per bone, as "armature_pose")
       "keep_pose": 0.5,                              # optional: how closely the refit keeps that pose
       "model_dirs": ["/extra/models", ...]}          # optional: searched before the default dirs

* stdout: JSON lines ``{"stage": "detect", "fraction": 0.15}`` while it works, then exactly one final
  line, ``{"done": "/path/result.npz"}`` or ``{"error": "message", "kind": "NoPersonError",
  "problem": ..., "fix": ...}``. Anything a library prints goes to stderr, never into the protocol.
* exit status 0 on success, the error's ``exit_code`` (2 input, 3 no person, 4 model, ...) otherwise.

``python -m core.backend --serve [--idle-timeout S]`` is the **warm** backend the add-on keeps running: one
process serves many requests, with torch, mediapipe and the models kept loaded between them. It sends
``{"ready": true, "pid": ..., "core": "/path/of/this/core"}`` first, then reads JSON lines on stdin:

* ``{"op": "reconstruct", "id": "j1", "request": {...}}``: the request above; every line it answers carries
  ``"id": "j1"`` (progress lines, then one final ``done`` / ``error`` / ``cancelled`` line);
* ``{"op": "cancel", "id": "j1"}``: stop that request (at once when it has not started, else between
  stages); its final line is ``{"id": "j1", "cancelled": true, "kind": "Cancelled"}``;
* ``{"op": "warmup", "id": "w1", "request": {"method": ..., "model": ..., "device": ...}}``: import the
  heavy libraries and load the model now (the add-on's *Start Backend*); answered ``{"id": "w1", "done": ""}``;
* ``{"op": "shutdown"}`` or the end of stdin (Blender exited): stop after the running request.

It exits by itself after ``--idle-timeout`` seconds without a request (``{"bye": "idle"}``).

The photo is read (``core.image_io``, no torch) before anything heavy is imported, so a file that is not
an image is reported in well under a second even by a cold backend.

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
FIT_PARAMS = "fit_params"  # str (JSON), the fitted body only: its parameters, what a refit's "init" sends back
# Present only when the result has a rig (HumanMeshNet; VRN with "rig": true): names (J,) str, heads/tails
# (J, 3) float32, parents (J,) int32 (-1 = root), weights (N, J) float32; and "armature_axes" (J, 3, 3) float32
# (bone x, y, z as columns: the roll; a reader may do without). The fitted body adds POSE_KEYS: "armature_pose"
# (J, 4, 4) float32, rest -> posed per bone in the metric frame, and "rest_vertices" (N, 3): the armature and
# the weights are then the REST pose's, and the pose puts the body as in the photo ("vertices" is the posed
# body, for a result built without the armature). The add-on reads these names from here (paths.protocol).
ARMATURE_KEYS = ("armature_names", "armature_heads", "armature_tails", "armature_parents", "armature_weights")
ARMATURE_AXES = "armature_axes"
POSE_KEYS = ("armature_pose", "rest_vertices")

LANDMARK_IMAGE_MAX_HEIGHT = 1024

Progress = Callable[[str, float], None]


def _cancelled_error():
    from core.errors import Cancelled

    return Cancelled("Reconstruction cancelled.", "")


# Methods whose "model" is one checkpoint of that same method: the warm backend keeps those loaded. Other
# methods get the model argument exactly as the request gives it.
CACHED_METHODS = ("vrn", "hmnet", "fit")  # "fit" keeps its HumanMeshNet initialiser loaded
MODEL_CACHE_SIZE = 4
_models: dict[tuple, object] = {}  # (json path, weights mtime_ns, size, device) -> core.checkpoint.LoadedModel
_models_lock = threading.Lock()


def loaded_model(model, method: str, extra_dirs, device: str):
    """The model to hand to core.reconstruct: a LoadedModel kept from an earlier request of this process when
    the same files (same mtime and size) were loaded for the same device, else loaded now and kept. A bare name
    (or "default") is searched in `extra_dirs` first, then core's own search dirs (core.models.find_model).
    For a method outside CACHED_METHODS, or a model that does not resolve, the spec itself (core reports it)."""
    if method not in CACHED_METHODS:
        return model
    from core.checkpoint import load_model
    from core.errors import ModelError
    from core.models import default_search_dirs, find_model
    from core.reconstruct import pick_device

    try:
        files = find_model(model, [Path(d) for d in extra_dirs] + default_search_dirs(), method=method)
        st = files.weights.stat()
    except (ModelError, OSError):
        return model
    dev = str(pick_device(device))
    key = (str(files.json.resolve()), st.st_mtime_ns, st.st_size, dev)
    with _models_lock:
        if key not in _models:
            _models[key] = load_model(files.json, device=dev)
            while len(_models) > MODEL_CACHE_SIZE:
                _models.pop(next(iter(_models)))
        return _models[key]


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
    if result.fit_params is not None:
        out[FIT_PARAMS] = np.array(json.dumps(result.fit_params))
    rig = getattr(result, "rig", None)
    if rig is not None:
        out.update({
            "armature_names": np.asarray([str(n) for n in rig.names]),
            "armature_heads": np.asarray(rig.heads, np.float32),
            "armature_tails": np.asarray(rig.tails, np.float32),
            "armature_parents": np.asarray(rig.parents, np.int32),
            "armature_weights": np.asarray(rig.dense_weights(), np.float32),
            ARMATURE_AXES: np.asarray(rig.axes, np.float32),
        })
        if getattr(rig, "pose", None) is not None:  # the fit: the armature is the rest pose, this poses it
            out.update(zip(POSE_KEYS, (np.asarray(rig.pose, np.float32),
                                       np.asarray(result.rest_mesh.vertices, np.float32))))
    return out


def _write_npz(path: Path, arrays: dict) -> None:
    """The result file, complete or absent (core.files.write_atomic)."""
    import io

    from core.files import write_atomic

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def run_request(request: dict, progress: Progress | None = None,
                cancel: threading.Event | None = None) -> Path:
    """Reconstruct as the request asks and write the result files; returns the .npz path.

    Raises core.errors.MonohumanError subclasses (Cancelled when `cancel` is set)."""
    from core.image_io import load_image, save_png
    from core.validate import validate_request

    req = validate_request(request)  # every field checked, a wrong one named (issue 16)
    out = Path(req["output"])
    t0 = time.perf_counter()
    rgb = load_image(req["photo"])  # cheap (PIL): a file that is not a photo fails before torch is imported
    t_read = time.perf_counter() - t0
    if cancel is not None and cancel.is_set():
        raise _cancelled_error()
    from core.preview import render_preview
    from core.reconstruct import reconstruct

    init = None
    if req["init"] is not None:  # a refit: the fitted parameters, re-posed as the animator left the rig
        from core.bodyfit import FitParams, params_from_armature_pose

        init = FitParams.from_json(req["init"])
        if req["init_pose"] is not None:
            arm = req["init_pose"]
            init = params_from_armature_pose(init, arm.get("names", []), arm.get("parents", []), arm.get("pose", []))
    dirs = req.get("model_dirs") or []
    model = loaded_model(req["model"], req["method"], dirs, req["device"])
    rig_model = loaded_model(req["rig_model"], "hmnet", dirs, req["device"]) if req["rig"] else "default"
    result = reconstruct(rgb, model=model, method=req["method"], device=req["device"],
                         subject_height=req["subject_height"], smoothing=req["smoothing"],
                         face_budget=req["face_budget"], rig=req["rig"], rig_model=rig_model,
                         body_parts=req["body_parts"], match_mask=req["match_mask"],
                         init=init, keep_pose=req["keep_pose"], progress=progress, cancel=cancel)
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
    timings["read"] = t_read
    timings["backend_total"] = time.perf_counter() - t0
    arrays["timings"] = np.array(json.dumps(timings))
    _write_npz(out, arrays)
    return out


def load_result(path) -> dict:
    """Read a result .npz back into a dict of arrays/strings (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        res = {k: data[k] for k in data.files}
    for key in ("photo", "texture", "landmarks_image", "model_name", FIT_PARAMS):
        if key in res:
            res[key] = str(res[key])
    res["warnings"] = json.loads(str(res.get("warnings", "[]")))
    res["timings"] = json.loads(str(res.get("timings", "{}")))
    return res


# --------------------------------------------------------------------------------------------------
# The process entry


def _models_found() -> list[str]:
    from core.models import list_models

    return [e.name for e in list_models(deep=False)]


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


def final_message(exc: BaseException) -> tuple[dict, int]:
    """The protocol's final line for a failure, and the exit status the one-shot backend ends with."""
    from core.errors import Cancelled, MonohumanError

    if isinstance(exc, Cancelled):
        return {"cancelled": True, "kind": "Cancelled"}, 1
    if isinstance(exc, MonohumanError):
        return ({"error": str(exc), "kind": type(exc).__name__, "problem": exc.problem, "fix": exc.fix},
                int(getattr(exc, "exit_code", 1) or 1))
    traceback.print_exc()  # an unexpected failure still ends the protocol cleanly; the log has the rest
    kind = type(exc).__name__
    return ({"error": f"The backend failed: {kind}: {exc}", "kind": kind, "problem": f"The backend failed: {exc}",
             "fix": "See the backend log for the traceback."}, 1)


def warm_up(request: dict) -> None:
    """Import the heavy libraries, start the person detector and load the request's model (the warm
    backend's "warmup" op), so the first reconstruction costs what every later one does."""
    from core.detect import detect_person
    from core.validate import validate_request

    req = validate_request({"photo": "-", "output": "-", **request})
    loaded_model(req["model"], req["method"], req.get("model_dirs") or [], req["device"])
    try:
        detect_person(np.full((64, 64, 3), 127, np.uint8))
    except Exception:  # noqa: BLE001 - "no person" is expected; the detector is loaded now
        pass


class Server:
    """The warm backend's loop (`--serve`): requests run one at a time on the calling thread; a reader
    thread takes stdin lines, so cancel reaches a running request and a queued one is dropped at once."""

    def __init__(self, send: Callable[[dict], None], stdin, idle_timeout: float):
        import queue

        self.send, self.stdin, self.idle_timeout = send, stdin, idle_timeout
        self.queue: "queue.Queue[dict | None]" = queue.Queue()
        self.events: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def _read(self) -> None:
        for line in self.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                print(f"backend: ignored a line that is not JSON: {line[:80]!r}", file=sys.stderr)
                continue
            if not isinstance(msg, dict):
                continue
            op, job_id = msg.get("op"), str(msg.get("id", ""))
            if op == "cancel":
                with self.lock:
                    event = self.events.get(job_id)
                if event is not None:
                    event.set()
            elif op in ("reconstruct", "warmup"):
                with self.lock:
                    self.events[job_id] = threading.Event()
                self.queue.put(msg)
            elif op == "shutdown":
                break
        with self.lock:  # stdin closed (Blender is gone) or shutdown: stop what runs, then leave
            for event in self.events.values():
                event.set()
        self.queue.put(None)

    def run(self) -> int:
        import queue

        threading.Thread(target=self._read, name="backend-stdin", daemon=True).start()
        self.send({"ready": True, "pid": os.getpid(), "python": sys.executable,
                   "core": str(Path(__file__).resolve().parent)})
        while True:
            try:
                msg = self.queue.get(timeout=self.idle_timeout if self.idle_timeout > 0 else None)
            except queue.Empty:
                self.send({"bye": "idle"})
                return 0
            if msg is None:
                return 0
            self._handle(msg)

    def _handle(self, msg: dict) -> None:
        job_id = str(msg.get("id", ""))
        with self.lock:
            event = self.events[job_id]
        send = lambda obj: self.send({"id": job_id, **obj})  # noqa: E731
        try:
            if event.is_set():
                raise _cancelled_error()
            request = msg.get("request") or {}
            if msg.get("op") == "warmup":
                warm_up(request)
                send({"done": ""})
            else:
                path = run_request(request, progress=lambda s, f: send({"stage": s, "fraction": float(f)}),
                                   cancel=event)
                send({"done": str(path)})
        except Exception as exc:  # noqa: BLE001 - every failure is one final line; the process lives on
            send(final_message(exc)[0])
        finally:
            with self.lock:
                self.events.pop(job_id, None)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Keep the protocol clean: our lines go to the real stdout, everything else printed (by torch,
    # mediapipe, absl, ...) lands on stderr, at the file-descriptor level so C libraries obey too.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    send_lock = threading.Lock()

    def send(obj: dict) -> None:
        with send_lock:
            try:
                proto.write(json.dumps(obj) + "\n")
                proto.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the reader (Blender) is gone: nothing left to tell

    if argv and argv[0] == "--check":
        info = check()
        send(info)
        return 0 if info["ok"] else 1
    if argv and argv[0] == "--serve" and len(argv) in (1, 3) and argv[1:2] in ([], ["--idle-timeout"]):
        try:
            idle = float(argv[2]) if len(argv) == 3 else 0.0
        except ValueError:
            idle = -1.0
        if idle >= 0:
            return Server(send, sys.stdin, idle).run()
    if argv:
        send({"error": f"Unknown arguments {argv}.", "kind": "InputError"})
        return 2

    try:
        from core.errors import InputError
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
    except Exception as exc:  # noqa: BLE001 - every failure ends the protocol with one line
        msg, status = final_message(exc)
        send(msg)
        return status


if __name__ == "__main__":
    sys.exit(main())
