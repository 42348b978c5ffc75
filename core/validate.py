"""Argument checks shared by every entry point: the CLI, the backend request, the `train` commands and the
Python API.

Each checker takes the argument's user-facing name and value and returns the value (converted where that
is lossless) or raises `ArgumentError` naming the argument, what it got and what it accepts, so a bad value
is refused up front in one line instead of failing later with a traceback. `Parser` is argparse with the
same one-line error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from core.errors import ArgumentError, OutputError

FACES_MIN = 100  # fewer faces than this is no longer a body
SMOOTHING_MAX = 200  # Taubin pairs; more only shrinks the body and takes minutes
HEIGHT_RANGE = (0.3, 3.0)  # metres


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`error: ...`) and exit 2, like every other bad argument."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message}. See {self.prog} --help.", file=sys.stderr)
        sys.exit(ArgumentError.exit_code)


def _got(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def number(name: str, value, *, integer: bool = False, lo=None, hi=None, optional: bool = False,
           lo_open: bool = False):
    """A finite int (integer=True) or float in [lo, hi] (lo excluded with lo_open); None when optional.
    Strings and booleans are refused: "1.7" is not a height."""
    if value is None and optional:
        return None
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        if not integer or not (isinstance(value, float) and value.is_integer()):
            raise ArgumentError(f"{name} must be {kind}; got {_got(value)}.",
                                f"Give {name} as {kind}{' or null' if optional else ''}.")
    if not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number; got {value!r}.", f"Give a finite {name}.")
    value = int(value) if integer else float(value)
    below = value <= lo if (lo is not None and lo_open) else (lo is not None and value < lo)
    if below or (hi is not None and value > hi):
        bounds = (f"{'more than' if lo_open else 'at least'} {lo}" if hi is None else
                  f"at most {hi}" if lo is None else f"between {lo} and {hi}")
        raise ArgumentError(f"{name} is {value}; it must be {bounds}.", f"Give {name} {bounds}.")
    return value


def choice(name: str, value, choices):
    """One of `choices` (exact)."""
    if value not in choices:
        raise ArgumentError(f"Unknown {name} {value!r}.", f"Use one of: {', '.join(map(str, choices))}.")
    return value


def choices_list(name: str, text: str, choices) -> tuple[str, ...]:
    """A comma-separated list of names from `choices`, no repeats, at least one: "image,landmarks"."""
    items = tuple(t.strip() for t in str(text).split(","))
    bad = [t for t in items if t not in choices]
    if bad or not items or len(set(items)) != len(items):
        raise ArgumentError(f"{name} {text!r} is not a comma list of distinct names from "
                            f"{', '.join(choices)}.", f"E.g. {name} {','.join(choices)}.")
    return items


def shape(name: str, text: str, dims: int = 3, example: str = "128x128x128") -> tuple[int, ...]:
    """Sizes written AxBxC, each a positive whole number."""
    try:
        sizes = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) != dims or min(sizes) <= 0:
        raise ArgumentError(f"{name} {text!r} is not {dims} positive sizes.", f"Write it like {example}.")
    return sizes


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be true or false; got {_got(value)}.", f"Give {name} as a boolean.")
    return value


def text(name: str, value, optional: bool = False):
    """A non-empty string (a path or a name); None when optional."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ArgumentError(f"{name} must be a non-empty string; got {_got(value)}.", f"Give {name} as text.")
    return value


def reconstruct_options(subject_height, smoothing, face_budget) -> None:
    """The numeric options of core.reconstruct.reconstruct (the CLI, the backend and the API share them)."""
    number("subject_height", subject_height, lo=HEIGHT_RANGE[0], hi=HEIGHT_RANGE[1])
    number("smoothing", smoothing, integer=True, lo=0, hi=SMOOTHING_MAX)
    number("face_budget", face_budget, integer=True, lo=FACES_MIN, optional=True)


def existing_folder(name: str, path, fix: str = "") -> Path:
    """A folder that exists (an input such as --backgrounds or a dataset shard)."""
    p = Path(text(name, path))
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise ArgumentError(f"{name} {p} {what}.", fix or f"Give {name} an existing folder.")
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def outputs_apart(outputs, inputs=()) -> list[Path]:
    """Refuse outputs that would replace an input or each other, or that are folders; returns them as Paths.

    Compares resolved paths (and, for files that exist, inodes: hard links, case-insensitive disks)."""
    outs = [Path(p) for p in outputs]
    ins = [Path(p) for p in inputs if p is not None and isinstance(p, (str, os.PathLike))]
    seen: dict[Path, Path] = {}
    for out in outs:
        if out.is_dir():
            raise OutputError(f"Cannot write {out}: it is a folder.", "Give a file name.")
        for src in ins:
            if out.resolve() == src.resolve() or _same_file(out, src):
                raise OutputError(f"Writing {out} would replace the input {src}.",
                                  "Choose another output name or folder.")
        key = out.resolve()
        if key in seen:
            raise OutputError(f"Two outputs would be written to {out} ({seen[key].name} and {out.name}).",
                              "Give them different names.")
        seen[key] = out
    return outs


def writable_folder(path) -> Path:
    """The folder a file will be written into: created if missing; refused when it cannot be written."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create the folder {folder}: {err.strerror or err}.",
                          "Choose an output in a folder you can write to.") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write into {folder}: permission denied.",
                          "Choose an output in a folder you can write to.")
    return folder


# The backend's request: field -> (checker, default). Checkers raise ArgumentError naming the field.
_DEVICES = {"auto": "auto", "gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}


def validate_request(request) -> dict:
    """A backend request (core.backend's JSON object) with every known field checked and defaults filled in;
    the device alias "gpu" becomes "cuda". Fields not listed here pass through unchanged (for the caller)."""
    if not isinstance(request, dict):
        raise ArgumentError("The backend request is not a JSON object.", "Send one JSON object on stdin.")
    fields = {
        "photo": lambda v: text("photo", v), "output": lambda v: text("output", v),
        "model": lambda v: text("model", v), "rig_model": lambda v: text("rig_model", v),
        "method": lambda v: text("method", v),
        "device": lambda v: _DEVICES[choice("device", str(text("device", v)).lower(), tuple(_DEVICES))],
        "subject_height": lambda v: number("subject_height", v, lo=HEIGHT_RANGE[0], hi=HEIGHT_RANGE[1]),
        "smoothing": lambda v: number("smoothing", v, integer=True, lo=0, hi=SMOOTHING_MAX),
        "face_budget": lambda v: number("face_budget", v, integer=True, lo=FACES_MIN, optional=True),
        "rig": lambda v: flag("rig", v), "body_parts": lambda v: flag("body_parts", v),
        "match_mask": lambda v: flag("match_mask", v),
        "model_dirs": lambda v: [text("model_dirs[]", d) for d in _list("model_dirs", v)],
        "init": lambda v: _object("init", v), "init_pose": lambda v: _object("init_pose", v),
        "keep_pose": lambda v: number("keep_pose", v, lo=0.0, optional=True),
    }
    defaults = {"model": "default", "method": "fit", "device": "auto", "subject_height": 1.70, "smoothing": 10,
                "face_budget": None, "rig": False, "rig_model": "default", "body_parts": True, "match_mask": True,
                "model_dirs": [], "init": None, "init_pose": None, "keep_pose": None}
    for key in ("photo", "output"):
        if key not in request:
            raise ArgumentError(f"The backend request has no '{key}'.", "Name the photo and the output file.")
    req = {**defaults, **request}
    req = {**req, **{key: check(req[key]) for key, check in fields.items()}}
    if (req["init"] is not None or req["init_pose"] is not None) and req["method"] != "fit":
        raise ArgumentError(f"A refit (init) is for the method 'fit', not '{req['method']}'.", "Send method 'fit'.")
    if req["init_pose"] is not None and req["init"] is None:
        raise ArgumentError("init_pose needs init: the fitted parameters it re-poses.", "Send both.")
    return req


def _object(name: str, value) -> dict | None:
    """An optional JSON object (a refit's fitted parameters, or the armature pose that re-poses them)."""
    if value is not None and not isinstance(value, dict):
        raise ArgumentError(f"{name} must be a JSON object or null; got {_got(value)}.", f"Give {name} as an object.")
    return value


def _list(name: str, value) -> list:
    if not isinstance(value, list):
        raise ArgumentError(f"{name} must be a list; got {_got(value)}.", f"Give {name} as a JSON list.")
    return value
