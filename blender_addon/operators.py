"""Operators: thin. The work is in jobs.py (background) and build_mesh.py (Blender data).

`monohuman.reconstruct` captures the request (photo, options, 3D cursor) and starts a job. From a UI it
returns RUNNING_MODAL with a window-manager timer: every tick calls `job.poll()` and passes all events
through, so Blender stays responsive. When the job is done the result is built in one go inside the
operator, so it is one undo step. In background mode (`blender -b`, the bpy module: `bpy.app.background`)
and with `wait=True` the operator polls the same job in a loop and returns only when the result is built,
so a plain script gets its mesh from `bpy.ops.monohuman.reconstruct()`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import bpy

from . import build_mesh, jobs, paths
from .preferences import backend_python, get_prefs, idle_seconds

TIMER_INTERVAL = 0.1


def photo_for(props, out_dir: Path) -> str:
    """The photo to reconstruct, as a file path core can read. Raises jobs.JobError."""
    if props.photo_source == "IMAGE":
        if props.photo_image is None:
            raise jobs.JobError("No image is chosen.", "Pick an image in the Monohuman panel, or choose File.",
                                kind="InputError")
        try:
            return build_mesh.image_file_for(props.photo_image, out_dir)
        except (OSError, RuntimeError) as exc:
            raise jobs.JobError(f"Cannot read the image '{props.photo_image.name}': {exc}.",
                                "Save the image to a file and pick that file.", kind="InputError") from exc
    if not props.photo_path.strip():
        raise jobs.JobError("No photo is chosen.", "Pick a photo file in the Monohuman panel.", kind="InputError")
    path = os.path.normpath(bpy.path.abspath(props.photo_path))
    if not os.path.isfile(path):
        raise jobs.JobError(f"Photo not found: {path}.", "Check the path and that the file exists.",
                            kind="InputError")
    return path


def _request_for(context, photo: str) -> dict:
    """The fields every request takes from the panel and the preferences: the photo, device, size, output."""
    props = context.scene.monohuman
    prefs = get_prefs(context)
    return {
        "photo": photo,
        "device": prefs.device.lower(),
        "subject_height": float(props.subject_height),
        "smoothing": int(props.smoothing),
        "face_budget": int(props.face_budget) or None,
        "output": str(jobs.new_output_path(photo)),
        "model_dirs": [str(d) for d in paths.model_dirs(prefs.models_dir, backend_python(prefs))],
    }


def make_request(context) -> dict:
    """What core runs, from the panel as it is now."""
    props = context.scene.monohuman
    return {
        **_request_for(context, photo_for(props, paths.results_dir())),
        "model": props.model.strip() or "default",  # a name is searched in model_dirs by the backend
        "method": props.method,
        "rig": bool(props.add_armature) and props.method == "vrn",  # the other methods always rig
        "body_parts": bool(props.body_parts),  # VRN only: hands and feet from the fitted body
        "match_mask": bool(props.match_mask),  # VRN only: the volume keeps to the person mask
    }


def make_refit_request(context) -> dict:
    """The panel's request, made a refit of the active fitted body: its photo, its parameters, and its rig's pose
    as the animator has left it (the photo then settles what it shows; the rig what it cannot, such as depth)."""
    rig = build_mesh.fitted_rig(context.active_object)
    if rig is None:
        raise jobs.JobError("The active object is not a fitted body's rig.",
                            "Select a body made with the Fitted body method (its mesh or its armature).")
    photo = os.path.normpath(bpy.path.abspath(str(rig.get("monohuman_photo", ""))))
    if not os.path.isfile(photo):
        raise jobs.JobError(f"The photo this body was fitted to is gone: {photo}.",
                            "Put the photo back at that path, or reconstruct from the photo again.", kind="InputError")
    context.view_layer.update()  # the pose bones' matrices as shown
    return {**_request_for(context, photo), "model": "default", "method": "fit",
            "init": json.loads(rig[build_mesh.FIT_PARAMS_PROP]), "init_pose": build_mesh.armature_pose(rig),
            "keep_pose": float(context.scene.monohuman.keep_pose)}


def make_options(context, photo: str) -> dict:
    """How the result will be built in Blender, from the panel and the 3D cursor as they are now: a change
    while the job runs applies to the next reconstruction, not to this one."""
    props = context.scene.monohuman
    image = props.photo_image.name if props.photo_source == "IMAGE" and props.photo_image else ""
    return {"name": build_mesh.object_name_for(photo if props.photo_source == "FILE" else image),
            "location": tuple(context.scene.cursor.location), "project_texture": bool(props.project_texture),
            "add_armature": bool(props.add_armature), "show_landmarks": bool(props.show_landmarks)}


def start_job(context, refit: bool = False) -> jobs.Job:
    """Start the reconstruction the panel describes, or (refit) the refit of the active fitted body (used by the
    operator and by tests). A refit builds a new body beside the old one, named after it."""
    prefs = get_prefs(context)
    request = make_refit_request(context) if refit else make_request(context)
    options = make_options(context, request["photo"])
    if refit:
        rig = build_mesh.fitted_rig(context.active_object)
        options.update(name=f"{rig.name.removesuffix(' rig')} refit", add_armature=True,
                       location=tuple(rig.matrix_world.translation))
    return jobs.start(request, execution=prefs.execution, python=backend_python(prefs),
                      options=options, idle_timeout=idle_seconds(prefs))


def finish_job(op, context, job: jobs.Job) -> set:
    """Turn a finished job into Blender data (or a report). Returns the operator's return set."""
    if job.state == jobs.CANCELLED:
        op.report({"WARNING"}, "Reconstruction cancelled; nothing was added.")
        return {"CANCELLED"}
    if job.state == jobs.ERROR:
        op.report({"ERROR"}, job.error or "The reconstruction failed.")
        return {"CANCELLED"}
    t0 = time.perf_counter()
    try:
        result = build_mesh.load_result(job.result_path)
        built = build_mesh.build_result(result, scene=context.scene, view_layer=context.view_layer,
                                        **job.options)
    except Exception as exc:  # noqa: BLE001 - build_result has already removed what it made
        op.report({"ERROR"}, f"Could not build the result in Blender: {exc}. Try again; if it persists, "
                             f"report it with the backend log in {paths.results_dir()}.")
        return {"CANCELLED"}
    obj = built["object"]
    if built["landmarks"] is not None:
        build_mesh.show_image_in_editors(built["landmarks"], getattr(context, "screen", None))
    for w in result.get("warnings", []):
        op.report({"WARNING"}, w)
    secs = job.elapsed + (time.perf_counter() - t0)
    op.report({"INFO"}, f"Monohuman: '{obj.name}' ({len(obj.data.vertices)} vertices, "
                        f"{len(obj.data.polygons)} faces) in {secs:.1f} s ({job.mode}).")
    return {"FINISHED"}


def _redraw(context) -> None:
    wm = context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class MONOHUMAN_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a 3D body from the photo (runs in the background; Blender stays usable)"""

    bl_idname = "monohuman.reconstruct"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER", "UNDO"}

    wait: bpy.props.BoolProperty(name="Wait", description="Block until done (scripts, tests)",
                                 default=False, options={"HIDDEN", "SKIP_SAVE"})
    refit: bpy.props.BoolProperty(name="Refit", description="Refit the active fitted body from its rig's pose",
                                  default=False, options={"HIDDEN", "SKIP_SAVE"})
    timeout: bpy.props.FloatProperty(default=600.0, options={"HIDDEN", "SKIP_SAVE"})

    _timer = None
    _job = None

    @classmethod
    def description(cls, context, properties):
        if properties.refit:
            return ("Fit the body to its photo again, starting from its rig's pose as you left it: the photo "
                    "settles what it shows, your pose what it cannot (which limb is nearer). A new body is added")
        return cls.__doc__

    @classmethod
    def poll(cls, context):
        job = jobs.current()
        if job is not None and not job.finished:
            job.poll()  # cheap; a job whose work has ended never keeps the button locked
        return context.scene is not None and (job is None or job.finished)

    def invoke(self, context, event):
        return self.execute(context)

    def execute(self, context):
        try:
            self._job = start_job(context, refit=self.refit)
        except jobs.JobError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        if self.wait or bpy.app.background or context.window is None:  # nothing would fire a modal timer
            self._job.wait(timeout=self.timeout)
            if not self._job.finished:
                self._job.cancel()
                self._job.wait(timeout=jobs.CANCEL_WAIT_S)
                self.report({"ERROR"}, f"The reconstruction took longer than {self.timeout:.0f} s and was "
                                       "stopped. Use a GPU or a smaller model.")
                return {"CANCELLED"}
            return finish_job(self, context, self._job)
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        _redraw(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":  # (bpy wrappers are new objects on each access: no identity test)
            return {"PASS_THROUGH"}
        self._job.poll()
        _redraw(context)
        if not self._job.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return finish_job(self, context, self._job)

    def cancel(self, context):  # Blender calls this when the modal is aborted (e.g. file load)
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if self._job is not None:
            self._job.cancel()


class MONOHUMAN_OT_cancel(bpy.types.Operator):
    """Stop the running reconstruction"""

    bl_idname = "monohuman.cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        job = jobs.current()
        return job is not None and not job.finished

    def execute(self, context):
        job = jobs.current()
        jobs.cancel_current()
        if bpy.app.background:  # no modal timer polls it: wait here until the work has really stopped
            job.wait(timeout=jobs.CANCEL_WAIT_S)
        _redraw(context)
        return {"FINISHED"}


class MONOHUMAN_OT_show_landmarks(bpy.types.Operator):
    """Show the photo with the detected landmarks of the active Monohuman object in the Image Editors"""

    bl_idname = "monohuman.show_landmarks"
    bl_label = "Show Landmarks"

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and "monohuman_landmarks_image" in obj

    def execute(self, context):
        image = bpy.data.images.get(context.active_object["monohuman_landmarks_image"])
        if image is None:
            self.report({"ERROR"}, "The landmarks image is gone. Reconstruct again with Show Landmarks on.")
            return {"CANCELLED"}
        if build_mesh.show_image_in_editors(image, context.screen) == 0:
            self.report({"INFO"}, f"Open an Image Editor and pick '{image.name}' to see the landmarks.")
        return {"FINISHED"}


classes = (MONOHUMAN_OT_reconstruct, MONOHUMAN_OT_cancel, MONOHUMAN_OT_show_landmarks)
