"""A Blender mesh from numpy arrays: the one place that turns (vertices, faces) into a `bpy.types.Mesh`, for
the add-on's results (blender_addon.build_mesh) and the training renders (train.scene).

The only module of `core` that touches bpy, and only inside the function (core never imports bpy at module
level): it needs nothing else from core, so the add-on loads this file by path (blender_addon.paths.
core_file) and training imports it as `core.blender_mesh`.
"""

from __future__ import annotations

import numpy as np


def mesh_from_arrays(name: str, vertices, faces, uv=None, material_index=None):
    """A smooth-shaded triangle mesh from (N, 3) vertices, (F, 3) faces, optional per-vertex (N, 2) UVs (layer
    "Photo") and optional per-face material slots (F,). Nothing is left behind when it fails.

    Raises ValueError for an empty mesh or faces that index vertices that do not exist."""
    import bpy

    verts = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    tris = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
    if len(verts) == 0 or len(tris) == 0:
        raise ValueError("The mesh has no vertices or no faces.")
    if tris.min() < 0 or tris.max() >= len(verts):
        raise ValueError("The mesh's faces index vertices that do not exist.")
    me = bpy.data.meshes.new(name)
    try:
        me.vertices.add(len(verts))
        me.vertices.foreach_set("co", verts.ravel())
        me.loops.add(tris.size)
        me.loops.foreach_set("vertex_index", tris.ravel())
        me.polygons.add(len(tris))
        me.polygons.foreach_set("loop_start", np.arange(0, tris.size, 3, dtype=np.int32))
        if material_index is not None:
            me.polygons.foreach_set("material_index", np.asarray(material_index, np.int32).ravel())
        if uv is not None:
            uvs = np.ascontiguousarray(uv, dtype=np.float32).reshape(-1, 2)
            me.uv_layers.new(name="Photo").data.foreach_set("uv", uvs[tris.ravel()].ravel())
        me.update(calc_edges=True)
        me.validate(clean_customdata=False)
        me.shade_smooth()
    except BaseException:
        bpy.data.meshes.remove(me)
        raise
    return me
