"""Where things are: the `core` library, the backend Python, models, the user data folder.

Plain functions, no bpy data access at import time. Two ways the add-on can be laid out:

* **From a checkout** (development, tests, or the add-on folder symlinked into Blender): this package is
  ``REPO/blender_addon`` and the library is ``REPO/core``; the backend Python is auto-detected as
  ``REPO/.venv/bin/python`` (``Scripts\\python.exe`` on Windows) and the models as ``REPO/models``.
* **Installed from the extension zip**: the zip vendors the library as ``vendor/core`` inside this package,
  its imports made relative, so in Blender it is ``<this package>.vendor.core`` and no top-level `core` is
  ever put on Blender's sys.path (the shipped models, when small enough, as ``vendor/models``); see
  docs/ADDON.md.

Blender's main thread needs only the result reader of ``core/backend.py`` (stdlib and numpy at module
level): :func:`protocol` loads that file under this add-on's own name, whatever else is called `core`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent
USER_DIR_ENV = "MONOHUMAN_USER_DIR"


def _has_core(root: Path) -> bool:
    return (root / "core" / "backend.py").is_file() and (root / "core" / "reconstruct.py").is_file()


def checkout_root() -> Path | None:
    """The repository this add-on runs from, when it runs from a checkout."""
    root = ADDON_DIR.parent
    return root if _has_core(root) else None


def vendor_root() -> Path | None:
    """The folder holding the vendored `core` package (extension zip install)."""
    root = ADDON_DIR / "vendor"
    return root if _has_core(root) else None


def core_root() -> Path | None:
    """The folder to put on sys.path (or use as cwd) so that `import core` finds the library."""
    return checkout_root() or vendor_root()


def venv_python(root: Path) -> Path | None:
    for rel in (".venv/bin/python", ".venv/bin/python3", ".venv/Scripts/python.exe", "venv/bin/python"):
        p = root / rel
        if p.is_file():
            return p
    return None


def detect_backend_python() -> str:
    """The backend Python to use when the preference is empty: the checkout's .venv, if there is one."""
    root = checkout_root()
    if root is not None and (p := venv_python(root)) is not None:
        return str(p)
    return ""


def checkout_for_python(python: str | os.PathLike) -> Path | None:
    """The checkout a Python belongs to (REPO/.venv/bin/python -> REPO), if any. Symlinks are not resolved:
    a venv's python is usually a link to the system interpreter."""
    p = Path(os.path.abspath(os.path.expanduser(str(python))))
    for parent in list(p.parents)[:4]:
        if _has_core(parent):
            return parent
    return None


def backend_cwd(python: str) -> Path | None:
    """Where to start `python -m core.backend`: the python's own checkout, else the library we carry."""
    return checkout_for_python(python) or core_root()


def user_dir() -> Path:
    """Blender's extension user folder for this add-on (results, caches, user models).

    Falls back to $MONOHUMAN_USER_DIR, then to a folder in the temp dir, when the add-on runs as a plain
    module (tests, a legacy add-on folder) rather than as an installed extension."""
    env = os.environ.get(USER_DIR_ENV)
    if env:
        path = Path(env)
    else:
        path = None
        try:
            import bpy

            path = Path(bpy.utils.extension_path_user(__package__, create=True))
        except Exception:  # noqa: BLE001 - "does not name an extension" when run as a plain module
            path = None
        if path is None:
            user = os.environ.get("USER") or os.environ.get("USERNAME") or "user"
            path = Path(tempfile.gettempdir()) / f"monohuman-{user}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    path = user_dir() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# Models


def model_dirs(user_models: str = "", python: str = "") -> list[Path]:
    """Folders searched for models, first wins: the user's folder, the extension user folder, the shipped
    models (checkout or vendored), the backend checkout's models."""
    dirs: list[Path] = []
    if user_models:
        dirs.append(Path(os.path.expanduser(user_models)))
    try:
        dirs.append(user_dir() / "models")
    except OSError:
        pass
    for root in (checkout_root(), vendor_root(), checkout_for_python(python) if python else None):
        if root is not None:
            dirs.append(root / "models")
    seen, out = set(), []
    for d in dirs:
        key = os.path.abspath(d)
        if key not in seen and d.is_dir():
            seen.add(key)
            out.append(d)
    return out


def list_models(user_models: str = "", python: str = "", method: str | None = None) -> list:
    """The models in `model_dirs` that can serve `method` (all when None), as core lists them
    (`core.models.ModelEntry`: name, method, summary of the metrics training wrote, ok, problem), first of a
    name only. Reads JSON only (no torch), so it runs on Blender's main thread. Empty when the library cannot
    be imported here (another package named `core` shadows it)."""
    try:
        models = core_module("models")
    except ImportError:
        return []
    entries = models.list_models(model_dirs(user_models, python), deep=False, method=method)
    return [e for e in entries if e.ok and not e.shadowed]


def model_description(entry) -> str:
    """One line for the model search list: the kind, the folder and the headline metric."""
    where = f"{entry.method} model in {entry.files.json.parent}"
    return f"{where} ({entry.summary})" if entry.summary else where


def _checkout_core_ok(root: Path) -> bool:
    """Whether top-level `core` in Blender's Python is (or, put first on sys.path, will be) the checkout's."""
    want = (root / "core").resolve()
    mod = sys.modules.get("core")
    if mod is not None:
        return Path(getattr(mod, "__file__", None) or "/").resolve().parent == want
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.find_spec("core")
    return spec is not None and Path(spec.origin or "/").resolve().parent == want


def in_process_available() -> bool:
    """True when the library and its dependencies (torch, ...) can be imported here (checked without
    importing them): the vendored copy, or a checkout's `core` that no stranger package shadows."""
    for dep in ("torch", "mediapipe", "cv2", "skimage", "trimesh", "safetensors", "PIL", "scipy"):
        if importlib.util.find_spec(dep) is None:
            return False
    root = checkout_root()
    return _checkout_core_ok(root) if root is not None else vendor_root() is not None


def core_module(name: str):
    """The library's module `core.<name>`: ``<this package>.vendor.core.<name>`` when installed from the zip,
    the checkout's `core.<name>` when run from a checkout. Only torch-free modules (models, registry) may be
    imported on Blender's main thread; `backend` imports torch lazily (callers run it in a worker thread)."""
    root = checkout_root()
    if root is None and vendor_root() is not None:
        return importlib.import_module(f"{__package__}.vendor.core.{name}")
    if root is None or not _checkout_core_ok(root):
        raise ImportError("another package named core shadows the Monohuman library in Blender's Python")
    return importlib.import_module(f"core.{name}")


def backend_module():
    """`core.backend` for the in-process path (see `core_module`)."""
    return core_module("backend")


_core_files: dict = {}


def core_file(name: str):
    """The library's self-contained module core/<name>.py (stdlib, numpy and bpy only) loaded by path as
    ``<this package>.core_<name>``, without importing any package named `core`: safe on Blender's main
    thread whatever else is installed. Used for "backend" (the result reader) and "blender_mesh"."""
    if name not in _core_files:
        root = core_root()
        if root is None:
            raise ImportError(f"the Monohuman library (core/{name}.py) is not next to the add-on")
        qualified = f"{__package__}.core_{name}"
        spec = importlib.util.spec_from_file_location(qualified, root / "core" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
        _core_files[name] = module
    return _core_files[name]


def protocol():
    """core/backend.py loaded by path (`core_file`): the result reader (`load_result`) and the result keys
    for Blender's main thread."""
    return core_file("backend")
