"""3D Viewport > Sidebar > Monohuman."""

from __future__ import annotations

import os

import bpy

from . import build_mesh, jobs
from .preferences import get_prefs

_previews = None  # bpy.utils.previews collection for the photo thumbnail


def _thumbnail_icon(path: str) -> int:
    global _previews
    if _previews is None:
        import bpy.utils.previews

        _previews = bpy.utils.previews.new()
    key = f"{path}:{os.path.getmtime(path)}"
    if key not in _previews:
        _previews.load(key, path, "IMAGE")
    return _previews[key].icon_id


class MONOHUMAN_PT_main(bpy.types.Panel):
    bl_label = "Monohuman"
    bl_idname = "MONOHUMAN_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Monohuman"

    def draw(self, context):
        layout = self.layout
        props = context.scene.monohuman
        prefs = get_prefs(context)

        col = layout.column()
        col.row().prop(props, "photo_source", expand=True)
        if props.photo_source == "FILE":
            col.prop(props, "photo_path", text="")
            path = bpy.path.abspath(props.photo_path) if props.photo_path else ""
            if path and os.path.isfile(path):
                try:
                    col.template_icon(icon_value=_thumbnail_icon(path), scale=6.0)
                except (OSError, RuntimeError, KeyError):
                    pass
            elif path:
                col.label(text="File not found", icon="ERROR")
        else:
            col.template_ID(props, "photo_image", open="image.open")
            if props.photo_image is not None and props.photo_image.preview is not None:
                col.template_icon(icon_value=props.photo_image.preview.icon_id, scale=6.0)

        box = layout.box()
        box.prop(props, "method")
        box.prop(props, "model")
        box.prop(props, "subject_height")
        box.prop(props, "smoothing")
        box.prop(props, "face_budget")
        box.prop(props, "project_texture")
        box.prop(props, "add_armature")
        if props.method == "vrn":
            box.prop(props, "body_parts")
            box.prop(props, "match_mask")
        box.prop(props, "show_landmarks")
        if hasattr(prefs, "bl_rna"):  # the real preferences (not the defaults stand-in)
            box.prop(prefs, "device")

        job = jobs.current()
        if job is not None and not job.finished:
            text = f"{job.stage} ({job.mode}, {job.elapsed:.0f} s)"
            layout.progress(factor=job.fraction, type="BAR", text=text)
            layout.operator("monohuman.cancel", icon="CANCEL")
        else:
            layout.operator("monohuman.reconstruct", icon="OUTLINER_OB_ARMATURE")
            if job is not None and job.state == jobs.ERROR and job.error:
                err = layout.box()
                for i, line in enumerate(_wrap(job.error, 42)):
                    err.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        obj = context.active_object
        if (job is None or job.finished) and build_mesh.fitted_rig(obj) is not None:
            refit = layout.box()
            refit.label(text="Posed the rig where the photo is unclear?")
            refit.prop(props, "keep_pose")
            refit.operator("monohuman.reconstruct", text="Refit to Photo", icon="ARMATURE_DATA").refit = True
        if obj is not None and "monohuman_landmarks_image" in obj:
            layout.operator("monohuman.show_landmarks", icon="IMAGE_DATA")


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return lines[:6]


def unregister_previews() -> None:
    global _previews
    if _previews is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(_previews)
        _previews = None


classes = (MONOHUMAN_PT_main,)
