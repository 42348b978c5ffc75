"""Render a reconstruction as the add-on builds it, from the front and from the back (pictures for the docs).

    python scripts/render_views.py examples/person.png --out docs/figures/example [--model NAME] [--size 480]

Runs the add-on's own code path: `core.backend.run_request` (what the backend process does), then
`blender_addon.build_mesh.build_result` in a fresh headless Blender scene, then Cycles renders from -Y
(front) and +Y (back). Writes OUT_front.png and OUT_back.png.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def render_views(photo: Path, out_stem: Path, model: str = "default", size: int = 480, samples: int = 32):
    import bpy

    from blender_addon.build_mesh import build_result, load_result
    from core.backend import run_request

    with tempfile.TemporaryDirectory() as tmp:
        request = {"photo": str(photo), "output": str(Path(tmp) / "result.npz"), "model": model}
        result = load_result(run_request(request))
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        built = build_result(result, scene=scene, view_layer=bpy.context.view_layer, location=(0, 0, 0))
        obj = built["object"]
        height = max(v.co.z for v in obj.data.vertices)

        scene.render.engine = "CYCLES"
        scene.cycles.samples = samples
        scene.cycles.device = "CPU"
        scene.render.resolution_x, scene.render.resolution_y = size * 2 // 3, size
        scene.render.film_transparent = False
        world = bpy.data.worlds.new("world")
        scene.world = world
        world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.8, 0.8, 0.82, 1)
        world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.8
        sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
        sun.data.energy = 3.0
        sun.rotation_euler = (math.radians(50), 0, math.radians(20))
        scene.collection.objects.link(sun)
        cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
        cam.data.lens = 50
        scene.collection.objects.link(cam)
        scene.camera = cam
        distance = 2.6 * height
        written = []
        for view, y, yaw in (("front", -distance, 0.0), ("back", distance, math.pi)):
            cam.location = (0.0, y, height / 2)
            cam.rotation_euler = (math.radians(90), 0.0, yaw)
            scene.render.filepath = str(out_stem.with_name(f"{out_stem.name}_{view}.png"))
            bpy.ops.render.render(write_still=True)
            written.append(scene.render.filepath)
        return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "example")
    ap.add_argument("--model", default="default")
    ap.add_argument("--size", type=int, default=480)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path in render_views(args.photo, args.out, args.model, args.size):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
