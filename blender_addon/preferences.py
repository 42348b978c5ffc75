"""Add-on preferences: where the backend environment is, the user's models folder, the device."""

from __future__ import annotations

import json
import subprocess
import time

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import paths, server

ADDON_ID = __package__

DEVICE_ITEMS = (
    ("AUTO", "Auto", "The GPU when the backend has a CUDA GPU, else the CPU"),
    ("GPU", "GPU", "CUDA GPU (an error when there is none)"),
    ("CPU", "CPU", "CPU only (slower, always available)"),
)
EXECUTION_ITEMS = (
    ("AUTO", "Auto", "In Blender's Python when torch imports there, else the backend process"),
    ("IN_PROCESS", "In Blender", "Run in a worker thread of Blender's own Python (needs torch in Blender)"),
    ("BACKEND", "Backend process", "Run the warm backend (`python -m core.backend --serve`) with the "
                                   "Backend Python below"),
)


class MonohumanPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_python: StringProperty(
        name="Backend Python",
        description="Python executable of the environment with torch and the Monohuman requirements "
                    "(e.g. the project's .venv/bin/python). Empty: auto-detected from the checkout",
        subtype="FILE_PATH",
        default="",
    )
    models_dir: StringProperty(
        name="Models Folder",
        description="Extra folder with your own models (NAME.json + NAME.safetensors)",
        subtype="DIR_PATH",
        default="",
    )
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="AUTO",
                         description="Where the network runs")
    execution: EnumProperty(name="Execution", items=EXECUTION_ITEMS, default="AUTO",
                            description="Run the reconstruction inside Blender or in a backend process")
    idle_minutes: IntProperty(name="Stop Backend After (min)", default=10, min=1, max=24 * 60,
                              description="The backend process keeps torch and the models loaded between "
                                          "reconstructions; it stops after this many minutes without one")
    check_report: StringProperty(name="Backend Check", default="", options={"SKIP_SAVE"})

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "execution")
        col = layout.column()
        col.prop(self, "backend_python")
        if not self.backend_python:
            detected = paths.detect_backend_python()
            col.label(text=f"Auto-detected: {detected}" if detected else
                      "Not set: run `python -m core.backend --check` in the backend environment "
                      "and paste its python path here", icon="INFO")
        row = col.row()
        row.operator("monohuman.check_backend", icon="CHECKMARK")
        row.operator("monohuman.start_backend", icon="PLAY")
        row.operator("monohuman.stop_backend", icon="PAUSE")
        col.prop(self, "idle_minutes")
        running = server.current()
        col.label(text=f"Backend running (pid {running.process.pid}, {running.requests} requests)" if running
                  else "Backend not running (starts with the first reconstruction)", icon="INFO")
        if self.check_report:
            for line in self.check_report.split("\n")[:6]:
                col.label(text=line)
        layout.prop(self, "models_dir")
        layout.prop(self, "device")
        layout.label(text=f"Results and caches: {paths.user_dir()}", icon="FILE_FOLDER")


class _Defaults:
    """Stand-in with the default values when the add-on is registered without being enabled."""

    backend_python = ""
    models_dir = ""
    device = "AUTO"
    execution = "AUTO"
    idle_minutes = 10
    check_report = ""


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None and addon.preferences is not None else _Defaults()


def backend_python(prefs) -> str:
    return bpy.path.abspath(prefs.backend_python) if prefs.backend_python else paths.detect_backend_python()


def idle_seconds(prefs) -> float:
    return 60.0 * prefs.idle_minutes


class MONOHUMAN_OT_start_backend(bpy.types.Operator):
    """Start the backend process now and load torch, the detector and the model, so the first
    reconstruction is as fast as the next ones"""

    bl_idname = "monohuman.start_backend"
    bl_label = "Start Backend"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        from . import jobs

        prefs = get_prefs(context)
        props = getattr(context.scene, "monohuman", None)
        try:
            backend = jobs.backend(backend_python(prefs), idle_seconds(prefs))
        except jobs.JobError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        warm = {"device": prefs.device.lower()}
        if props is not None:
            warm.update(method=props.method, model=props.model.strip() or "default",
                        model_dirs=[str(d) for d in paths.model_dirs(prefs.models_dir, backend.python)])
        backend.submit("warmup", warm, lambda msg: None)
        self.report({"INFO"}, f"Monohuman backend started (pid {backend.process.pid}).")
        return {"FINISHED"}


class MONOHUMAN_OT_stop_backend(bpy.types.Operator):
    """Stop the backend process (it frees its memory; the next reconstruction starts it again)"""

    bl_idname = "monohuman.stop_backend"
    bl_label = "Stop Backend"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        from . import jobs

        jobs.shutdown()
        server.shutdown()
        return {"FINISHED"}


class MONOHUMAN_OT_check_backend(bpy.types.Operator):
    """Run `python -m core.backend --check` with the backend Python and show what it finds"""

    bl_idname = "monohuman.check_backend"
    bl_label = "Check Backend"
    bl_options = {"INTERNAL"}

    wait: bpy.props.BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    def execute(self, context):
        prefs = get_prefs(context)
        python = backend_python(prefs)
        cwd = paths.backend_cwd(python) if python else None
        if not python or cwd is None:
            self.report({"ERROR"}, "No backend Python set: set Backend Python to the environment's python.")
            return {"CANCELLED"}
        try:
            proc = subprocess.Popen([python, "-c", server.BOOT, str(cwd), "--check"], cwd=str(cwd),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            self.report({"ERROR"}, f"Cannot start {python}: {exc.strerror or exc}. Fix the Backend Python path.")
            return {"CANCELLED"}
        _set_report(prefs, "Checking ...")
        started = time.monotonic()

        def poll():
            if proc.poll() is None:
                if time.monotonic() - started > 120:
                    proc.kill()
                return 0.25
            _set_report(prefs, _summarise(proc.stdout.read(), proc.returncode))
            return None

        if self.wait:
            proc.wait(timeout=120)
            poll()
        else:
            bpy.app.timers.register(poll, first_interval=0.25)
        return {"FINISHED"}


def _set_report(prefs, text: str) -> None:
    try:
        prefs.check_report = text
    except (AttributeError, ReferenceError):
        pass
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            area.tag_redraw()


def _summarise(out: str, rc: int) -> str:
    try:
        info = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"The backend check failed (exit status {rc}): the Python cannot run `core.backend`."
    lines = [f"Python: {info.get('python')}",
             f"torch {info.get('torch')}, mediapipe {info.get('mediapipe')}, "
             f"GPU: {info.get('gpu') or 'none (CPU)'}",
             f"Models: {', '.join(info.get('models') or []) or 'none found'}"]
    lines += [f"Problem: {p}" for p in info.get("problems", [])]
    lines.insert(0, "OK" if info.get("ok") else "NOT READY")
    return "\n".join(lines)


classes = (MonohumanPreferences, MONOHUMAN_OT_check_backend, MONOHUMAN_OT_start_backend, MONOHUMAN_OT_stop_backend)
