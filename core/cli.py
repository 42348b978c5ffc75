"""Command line: `python -m core reconstruct PHOTO -o body.glb` and `python -m core info`.

Progress goes to stderr, results to stdout; failures print one line naming the problem and the fix and exit
with the error's code (2 input or argument, 3 no person, 4 model, 6 output, 130 cancelled; README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from core.errors import ArgumentError, run_command
from core.validate import Parser

SUFFIXES = (".glb", ".obj", ".ply")
DEFAULT_METHOD = "fit"  # the best measured on photos (docs/RESULTS.md)


def params_path(out: Path) -> Path:
    """Where a fit's parameters go: beside the mesh, named from its whole name (body.glb -> body.glb.fit.json)."""
    return out.with_name(out.name + ".fit.json")


def _progress_bar():
    """A bar on a terminal; one line per stage when stderr is a file or a pipe (logs, the Blender backend)."""
    from tqdm import tqdm

    if not sys.stderr.isatty():
        def report(stage: str, fraction: float) -> None:
            print(f"[{fraction * 100:3.0f}%] {stage}", file=sys.stderr, flush=True)

        return report
    bar = tqdm(total=100, file=sys.stderr, bar_format="{desc:<10} {bar} {percentage:3.0f}% {elapsed}")
    state = {"last": 0}

    def report(stage: str, fraction: float) -> None:
        step = round(fraction * 100) - state["last"]
        state["last"] += step
        bar.set_description_str(stage)
        bar.update(step)
        if stage == "done":
            bar.close()

    return report


def _outputs(args, default_output_path) -> tuple[Path, Path | None]:
    """The mesh and preview paths, checked before any work: known suffixes, writable folders, not the photo."""
    from core.image_io import IMAGE_SUFFIXES
    from core.validate import number, outputs_apart, reconstruct_options, writable_folder

    reconstruct_options(args.height, args.smoothing, args.faces)
    out = Path(args.output) if args.output else default_output_path(args.photo)
    if out.suffix.lower() not in SUFFIXES:
        raise ArgumentError(f"Cannot write {out.name}: unknown mesh format.", f"Use one of {', '.join(SUFFIXES)}.")
    preview = None
    if args.preview:
        preview = Path(args.preview) if args.preview != "auto" else default_output_path(args.photo, "_preview.png")
        if preview.suffix.lower() not in IMAGE_SUFFIXES:
            raise ArgumentError(f"Cannot write the preview {preview.name}: unknown image format.",
                                f"Use one of {', '.join(IMAGE_SUFFIXES)}.")
    if args.no_refine and not args.init:
        raise ArgumentError("--no-refine needs --init PARAMS.json.", "Give the parameters to take as they are.")
    if args.keep_pose is not None and not args.init:
        raise ArgumentError("--keep-pose needs --init PARAMS.json.", "Give the parameters whose pose to keep.")
    number("--keep-pose", args.keep_pose, lo=0.0, optional=True)
    if args.init and args.method != "fit":
        raise ArgumentError(f"--init is for --method fit, not {args.method}.", "Add --method fit.")
    outs = [out] + ([preview] if preview else []) + ([params_path(out)] if args.method == "fit" else [])
    outputs_apart(outs, [args.photo])
    for path in outs:
        writable_folder(path.parent)
    return out, preview


def cmd_reconstruct(args) -> int:
    from core.export import mesh_files
    from core.files import write_files
    from core.reconstruct import default_output_path, reconstruct
    from core.validate import outputs_apart

    out, preview = _outputs(args, default_output_path)
    result = reconstruct(args.photo, model=args.model, method=args.method, device=args.device,
                         subject_height=args.height, smoothing=args.smoothing, face_budget=args.faces,
                         rig=args.rig, rig_model=args.rig_model, init=args.init, refine=not args.no_refine,
                         keep_pose=args.keep_pose,
                         body_parts=not args.raw_surface, match_mask=not args.raw_surface,
                         progress=None if args.quiet else _progress_bar())
    if result.rig is not None and out.suffix.lower() != ".glb":
        result.warnings.append(f"{out.suffix} files cannot carry the rig; write a .glb to keep it.")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # a posed rig (the fit) skins the rest mesh: the GLB shows the photo's pose, Blender keeps Anny's rest pose
    posed_rig = result.rig is not None and result.rig.pose is not None and out.suffix.lower() == ".glb"
    files = mesh_files(result.rest_mesh if posed_rig else result.mesh, out, skin=result.rig)
    written = {"mesh": str(out)}
    if preview is not None:
        from core.image_io import image_bytes
        from core.preview import render_preview

        picture = render_preview(result.image, mesh_metric=result.mesh, landmarks16=result.landmarks16,
                                 mask=result.mask, crop_box=result.crop_box, volume=result.volume)
        files[preview] = image_bytes(picture, preview.suffix)
        written["preview"] = str(preview)
    if result.fit_params is not None:
        files[params_path(out)] = json.dumps(result.fit_params, indent=1)
        written["params"] = str(params_path(out))
    outputs_apart(files, [args.photo] + ([args.init] if args.init else []))
    write_files(files)  # the mesh, its side files and the preview: all or nothing
    extent = result.mesh.bounds[1] - result.mesh.bounds[0]
    summary = {**written, "model": result.model_name, "vertices": len(result.mesh.vertices),
               "faces": len(result.mesh.faces), "height_m": round(float(extent[2]), 4),
               "watertight": bool(result.mesh.is_watertight), "method": result.method,
               "bones": 0 if result.rig is None else len(result.rig.names),
               "timings_s": {k: round(v, 3) for k, v in result.timings.items()}, "warnings": result.warnings}
    if args.json:
        print(json.dumps(summary))
    else:
        for key in ("mesh", "preview", "params"):
            if key in summary:
                print(f"{key}: {summary[key]}")
        print(f"model: {summary['model']}  vertices: {summary['vertices']}  faces: {summary['faces']}  "
              f"height: {summary['height_m']} m  watertight: {summary['watertight']}")
        print("timings: " + "  ".join(f"{k} {v:.2f}s" for k, v in summary["timings_s"].items()))
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args) -> int:
    import torch

    from core.models import list_models

    print(f"python      {platform.python_version()} ({platform.machine()})")
    for package in ("torch", "mediapipe", "opencv-contrib-python", "scikit-image", "trimesh", "bpy", "anny"):
        print(f"{package:<11} {_version(package)}")
    if torch.cuda.is_available():
        print(f"device      cuda: {torch.cuda.get_device_name(0)}")
    else:
        print(f"device      cpu ({torch.get_num_threads()} threads); no CUDA GPU")
    models = list_models()
    if not models:
        print("models      none installed: no trained model yet (see docs/RESULTS.md)")
    for m in models:
        metrics = {k: v for k, v in m.metrics.items() if not isinstance(v, (list, dict))}
        status = f"broken: {m.problem}" if not m.ok else json.dumps(metrics)
        print(f"model       {m.name} [{m.method}/{m.variant}] {status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="reconstruct the person in a photo as a mesh file")
    rec.add_argument("photo", help="JPEG/PNG/WebP photo of one person, whole body visible")
    rec.add_argument("-o", "--output", help="OUT.glb | OUT.obj | OUT.ply (default: beside the photo, .glb)")
    rec.add_argument("--model", default="default", help="model name in models/ or a path (default: shipped)")
    rec.add_argument("--method", default=DEFAULT_METHOD, choices=["fit", "vrn", "hmnet"],
                     help="fit (default): Anny's body fitted to the photo's landmarks and mask, rigged; "
                          "vrn: detailed surface (volumetric regression); hmnet: Anny's body as the network "
                          "regresses it, rigged")
    rec.add_argument("--init", metavar="PARAMS.json", default=None,
                     help="fit: start from these fitted parameters (written as OUT.fit.json by a fit)")
    rec.add_argument("--keep-pose", type=float, default=None, metavar="W",
                     help="fit with --init: how closely the refit keeps the given pose (0.5 for a pose corrected by "
                          "hand, as the add-on's refit; default: the plain fit's weak pull, 0.0002)")
    rec.add_argument("--no-refine", action="store_true",
                     help="fit with --init: take the parameters as they are (no optimisation)")
    rec.add_argument("--rig", action="store_true",
                     help="vrn: rig the surface from the fitted body (fit and hmnet are always rigged); "
                          "the .glb then carries the armature and skin weights")
    rec.add_argument("--raw-surface", action="store_true",
                     help="vrn: the network's own surface: its own hands and feet (by default a fitted body, made "
                          "for a body-guided model or --rig, gives them) and its own outline (by default the "
                          "volume keeps to the person mask, core.silhouette)")
    rec.add_argument("--rig-model", default="default",
                     help="HumanMeshNet model that starts the fit for --rig (default: shipped)")
    rec.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    rec.add_argument("--height", type=float, default=1.70, help="subject height in metres (default 1.70)")
    rec.add_argument("--smoothing", type=int, default=10, help="surface smoothing iterations (0 = none)")
    rec.add_argument("--faces", type=int, default=None, help="decimate to at most this many faces")
    rec.add_argument("--preview", nargs="?", const="auto", default=None,
                     help="write a PNG of the result (default path: beside the photo)")
    rec.add_argument("--json", action="store_true", help="print the result summary as JSON")
    rec.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rec.set_defaults(func=cmd_reconstruct)

    info = sub.add_parser("info", help="versions, device and installed models")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with _native_logs_hidden():
        return run_command(lambda: args.func(args))  # one line and the exit code for every expected failure


@contextlib.contextmanager
def _native_logs_hidden():
    """What C++ libraries write straight to file descriptor 2 (mediapipe's glog/absl, TensorFlow Lite) goes to
    a temporary file; Python's sys.stderr (our progress, warnings and the one error line) keeps the real
    stderr. MONOHUMAN_DEBUG=1 keeps everything."""
    if os.environ.get("MONOHUMAN_DEBUG", "") not in ("", "0"):
        yield
        return
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        try:
            yield
        finally:
            sys.stderr.close()
            sys.stderr = saved_stream
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
