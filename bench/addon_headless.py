"""A plain headless Blender script, as a dataset or batch user writes one: install the extension zip into a
fresh Blender user folder, point it at the backend, and call `bpy.ops.monohuman.reconstruct()` (no extra
arguments) once per run. Prints one line `RESULT {json}`: per run the seconds the call took, its return
value and mode, and at the end what is in the "Monohuman" collection.

    python bench/addon_headless.py --zip dist/monohuman-0.1.0.zip --photo examples/person.png \
        --runs BACKEND,BACKEND [--python .venv/bin/python] [--decoy DIR] [--user-dir DIR]

`--runs` lists the Execution preference of each call (BACKEND, IN_PROCESS, AUTO). `--decoy DIR` first
makes DIR/core, a stranger package named `core`, importable and imported in Blender and on PYTHONPATH, as
another add-on or environment might. Used by `make bench` (bench/bench_addon.py, the timing) and by
tests/test_addon_headless.py (the meshes). Run it with the Python that has the bpy module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

EXT = "bl_ext.user_default.monohuman"


def make_decoy(folder: Path) -> None:
    pkg = folder / "core"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""A stranger package that happens to be called core."""\nDECOY = True\n')
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    import core  # noqa: F401  - imported first, the worst case for the add-on

    assert getattr(sys.modules["core"], "DECOY", False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zip", required=True)
    ap.add_argument("--photo", required=True)
    ap.add_argument("--runs", default="BACKEND,BACKEND")
    ap.add_argument("--python", default="", help="Backend Python (default: the add-on's auto-detection)")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--method", default="vrn", help="the panel's method (docs/ADDON.md times VRN + armature)")
    ap.add_argument("--decoy", default="")
    ap.add_argument("--user-dir", default="", help="Blender user folder (default: a fresh temp folder)")
    args = ap.parse_args(argv)

    os.environ["BLENDER_USER_RESOURCES"] = args.user_dir or tempfile.mkdtemp(prefix="monohuman-blender-")
    os.environ.pop("MONOHUMAN_USER_DIR", None)
    if args.decoy:
        make_decoy(Path(args.decoy))
    import bpy  # after BLENDER_USER_RESOURCES: Blender reads it when it starts

    r = bpy.ops.extensions.package_install_files(filepath=str(Path(args.zip).resolve()), repo="user_default",
                                                 enable_on_install=True)
    assert r == {"FINISHED"} and EXT in bpy.context.preferences.addons, r
    prefs = bpy.context.preferences.addons[EXT].preferences
    prefs.device, prefs.backend_python = args.device, args.python
    bpy.context.scene.monohuman.photo_path = str(Path(args.photo).resolve())
    bpy.context.scene.monohuman.method = args.method
    server, paths = sys.modules[EXT + ".server"], sys.modules[EXT + ".paths"]
    out: dict = {"background": bpy.app.background, "runs": []}
    for execution in args.runs.split(","):
        prefs.execution = execution
        t0 = time.perf_counter()
        ret = bpy.ops.monohuman.reconstruct()
        seconds = time.perf_counter() - t0
        backend = server.current()
        newest = max(paths.results_dir().glob("*.npz"), key=lambda p: p.stat().st_mtime, default=None)
        timings = paths.protocol().load_result(newest)["timings"] if newest else {}
        out["runs"].append({"execution": execution, "seconds": seconds, "return": sorted(ret),
                            "backend_pid": backend.process.pid if backend else None,
                            "reconstruct_s": timings.get("total"), "backend_s": timings.get("backend_total")})
    coll = bpy.data.collections.get("Monohuman")
    out["objects"] = sorted((o.name, o.type) for o in coll.objects) if coll else []
    out["core_module"] = getattr(sys.modules.get("core"), "__file__", None)
    out["core_is_decoy"] = bool(getattr(sys.modules.get("core"), "DECOY", False))
    out["vendored_modules"] = sorted(m for m in sys.modules if m.startswith(EXT + ".vendor.core"))[:5]
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
