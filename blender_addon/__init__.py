"""Monohuman for Blender: one photo of a person in, a 3D body mesh out.

3D Viewport > Sidebar > Monohuman. The reconstruction runs in the background (a worker thread when torch
imports in Blender's Python, else a warm backend process started from the environment set in the add-on's
preferences and kept for the session), so Blender stays responsive. See docs/ADDON.md.

No torch and no `core` at import time: they are imported lazily by the job that needs them.
"""

from __future__ import annotations

import bpy

from . import jobs, operators, panel, preferences, properties, server

# Legacy add-on metadata; as an extension, blender_manifest.toml is what counts.
bl_info = {
    "name": "Monohuman",
    "author": "Monohuman project",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "3D Viewport > Sidebar > Monohuman",
    "description": "Reconstruct a 3D body mesh from one photo of a person",
    "category": "Mesh",
}

_classes = (*preferences.classes, *operators.classes, *panel.classes)


@bpy.app.handlers.persistent
def _on_load_pre(*_args):
    jobs.shutdown(timeout=0.0)


def register():
    properties.register()
    for cls in _classes:
        bpy.utils.register_class(cls)
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister():
    jobs.shutdown()
    server.shutdown()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    panel.unregister_previews()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
    properties.unregister()
