"""Finding and listing models on disk, without torch: the one lookup the CLI, the backend and the add-on use.

A model is `NAME.json` (format tag, method, config, weights sha256, training, metrics) + `NAME.safetensors`.

    files = find_model("vrn-default")                 # or a path to the .json, .safetensors or the stem
    files = find_model("default", method="fit")        # the method's default model (core.registry)
    for entry in list_models(): print(entry.name, entry.summary)

`core.checkpoint.load_model` builds on `find_model` + `read_model_doc` and adds the weights. Everything here
reads JSON and file sizes only, so the Blender add-on's main thread can list models (`deep=False` skips the
config check, which imports the network's module and so torch).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from core import registry
from core.errors import ModelError

FORMAT = "monohuman-model"
FORMAT_VERSION = 1
BODY_MODEL_FORMAT = "monohuman-body-model"  # core.body_model's data files: JSON + safetensors, not networks
DATA_FORMATS = (BODY_MODEL_FORMAT, "monohuman-fit-noise")  # data beside the models (train.fit_noise's too)
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
ENV_MODELS_DIR = "MONOHUMAN_MODELS_DIR"
RESAVE = "Re-export the model with core.checkpoint.save_model (or copy both files again from where it was trained)."


class ModelFiles(NamedTuple):
    """Where a model's two files are (neither need exist: loading reports what is missing)."""

    json: Path
    weights: Path

    @property
    def name(self) -> str:
        return self.json.stem


@dataclass(frozen=True)
class ModelEntry:
    """One model in a listing. Broken ones are listed (ok False, problem says why), not skipped."""

    name: str  # the file stem: what find_model / load_model take
    files: ModelFiles
    method: str | None = None  # the network kind (core.registry.NETWORKS)
    variant: str | None = None
    metrics: dict = field(default_factory=dict)
    summary: str = ""  # the headline metric training wrote, e.g. "validation IoU 0.54"
    ok: bool = True
    problem: str | None = None
    shadowed: bool = False  # an earlier search dir has a model of the same name


def default_search_dirs() -> list[Path]:
    """$MONOHUMAN_MODELS_DIR (os.pathsep-separated, searched first), then the repository's models/."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_MODELS_DIR, "").split(os.pathsep) if p]
    return dirs + [MODELS_DIR]


def model_files(stem_or_path) -> ModelFiles:
    """The pair for a stem or for either file's path."""
    p = Path(stem_or_path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return ModelFiles(stem.parent / (stem.name + ".json"), stem.parent / (stem.name + ".safetensors"))


def _is_path(name_or_path) -> bool:
    text = str(name_or_path)
    return (isinstance(name_or_path, Path) or os.sep in text or (bool(os.altsep) and os.altsep in text)
            or Path(text).suffix in (".json", ".safetensors"))


def find_model(name_or_path=None, search_dirs=None, method: str | None = None) -> ModelFiles:
    """The files of a model given by path, or by bare name searched in the model dirs (first wins).

    None, "" or "default" with a `method` mean that method's default model (core.registry.METHODS).
    """
    if name_or_path in (None, "", "default"):
        if method not in registry.METHODS:
            raise ModelError(f"No model given and no method {method!r} to take the default of.",
                             f"Name a model, or a method: {', '.join(registry.METHODS)}.")
        name_or_path = registry.METHODS[method].default_model
    p = Path(str(name_or_path)).expanduser()
    if p.is_dir():
        raise ModelError(f"Model {p} is a folder.", "Give the model's NAME.json (or its bare name).")
    if _is_path(name_or_path):
        return model_files(p)
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else default_search_dirs()
    for d in dirs:
        files = model_files(d / str(name_or_path))
        if files.json.exists() or files.weights.exists():
            return files
    known = sorted({e.name for e in list_models(dirs, deep=False)})
    raise ModelError(f"No model named {str(name_or_path)!r} in {', '.join(str(d) for d in dirs)}.",
                     f"Pass a path to its .json, put NAME.json + NAME.safetensors in one of those folders "
                     f"(or set {ENV_MODELS_DIR}); available: {', '.join(known) if known else 'none'}.")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_present(files: ModelFiles) -> None:
    js, wt = files.json, files.weights
    for f in (js, wt):
        if f.is_dir():
            raise ModelError(f"Model file {f} is a folder.", f"Point at the model's .json. {RESAVE}")
    if not js.exists():
        raise ModelError(f"Model config {js} is missing" + (f" (weights {wt.name} are there)." if wt.exists() else "."),
                         f"A model is NAME.json + NAME.safetensors side by side. {RESAVE}")
    if not wt.exists():
        raise ModelError(f"Model weights {wt} are missing (the config {js.name} is there).",
                         f"Copy {wt.name} next to {js.name}. {RESAVE}")


def _read_json(js: Path) -> dict:
    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"Model config {js} is not valid JSON ({e}).", f"Restore or re-save the file. {RESAVE}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelError(f"{js} is not a Monohuman model (format {got!r}, expected {FORMAT!r}).",
                         "Point at a model's .json, written by core.checkpoint.save_model.")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{js} has format_version {version!r}; this Monohuman reads version {FORMAT_VERSION}.",
                         "Update Monohuman, or re-save the model with this version.")
    return doc


def read_model_doc(files: ModelFiles, parse_config: bool = True) -> tuple[dict, object]:
    """Checks that need no weights: both files, JSON, format, method, config, inference block.

    Returns (the JSON document, the parsed config); the config is None when parse_config is False (parsing
    imports the network's module, and so torch)."""
    _check_present(files)
    js = files.json
    doc = _read_json(js)
    kind = doc.get("method")
    if kind not in registry.NETWORKS:
        raise ModelError(f"{js} uses unknown method {kind!r}; known: {', '.join(registry.NETWORKS)}.",
                         "Update Monohuman to a version that has this method, or fix the 'method' field.")
    config = None
    if parse_config:
        try:
            config = registry.NETWORKS[kind].config_from_dict(doc.get("config"))
        except (ValueError, TypeError) as e:
            raise ModelError(f"{js}: bad {kind} config: {e}.",
                             "Fix the 'config' field (the variant and keys must be ones this version knows) "
                             "or update Monohuman.")
    if not isinstance(doc.get("weights_sha256"), str):
        raise ModelError(f"{js} has no weights_sha256, so {files.weights.name} cannot be checked.", RESAVE)
    _check_inference(js, doc.get("inference", {}))
    return doc, config


def _check_inference(js: Path, inference) -> None:
    """The optional "inference" block (train.calibrate writes it): an object whose iso_level is in (0, 1)."""
    level = inference.get("iso_level", 0.5) if isinstance(inference, dict) else None
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        got = f"inference.iso_level {level!r}" if isinstance(inference, dict) else f"inference {inference!r}"
        raise ModelError(f"{js} has a bad {got}: it must be an object whose iso_level is a number in (0, 1).",
                         "Fix the 'inference' field or recalibrate with python -m train.calibrate.")


def check_weights_size(wt: Path) -> None:
    """Truncation found without reading the weights: a safetensors file is an 8-byte header length, the JSON
    header, then the tensors up to the largest end offset the header names; the file must be that long."""
    try:
        with open(wt, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100_000_000 else None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        expected = 8 + n + end
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
        raise ModelError(f"Weights {wt} have an unreadable safetensors header.", RESAVE) from None
    if wt.stat().st_size != expected:
        raise ModelError(f"Weights {wt} are truncated or altered ({wt.stat().st_size} bytes, the header "
                         f"says {expected}).", f"Copy {wt.name} again from the source. {RESAVE}")


def _is_data_file(js: Path) -> bool:
    """A file that is data, not a network (the fit's body model, core.body_model; the fit's noise model)."""
    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # unreadable: list_models reports it as a broken model
    return isinstance(doc, dict) and (doc.get("format") in DATA_FORMATS or
                                      (doc.get("noise") or {}).get("format") in DATA_FORMATS)


def _entry(files: ModelFiles, shadowed: bool, deep: bool, verify: bool) -> ModelEntry:
    try:
        doc, config = read_model_doc(files, parse_config=deep)
        raw = doc.get("config")
        variant = getattr(config, "variant", None) if deep else (raw.get("variant") if isinstance(raw, dict) else None)
        metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
        check_weights_size(files.weights)
        if verify and sha256_file(files.weights) != doc["weights_sha256"]:
            raise ModelError(f"Weights {files.weights} are truncated or altered (sha256 mismatch).", RESAVE)
    except ModelError as e:
        return ModelEntry(files.name, files, ok=False, problem=str(e), shadowed=shadowed)
    return ModelEntry(files.name, files, method=doc["method"], variant=variant, metrics=metrics,
                      summary=registry.NETWORKS[doc["method"]].summary(metrics), shadowed=shadowed)


def list_models(search_dirs=None, verify: bool = False, deep: bool = True, method: str | None = None
                ) -> list[ModelEntry]:
    """Every model in the search dirs (default: `default_search_dirs()`), in search order.

    The cheap checks (JSON, format, method, truncation by the size the safetensors header promises) run always;
    deep=True also parses the config (imports torch); verify=True also checks the sha256 (reads every weights
    file). `method` keeps only models that can serve that reconstruction method (its network kind; broken
    ones are kept, so a user sees why a model is missing).
    """
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else default_search_dirs()
    kind = registry.METHODS[method].network if method is not None else None
    out, seen = [], set()
    for d in dirs:
        if not d.is_dir():
            continue
        stems = sorted({p.with_suffix("") for p in d.iterdir() if p.suffix in (".json", ".safetensors")
                        and not p.name.startswith(".")})
        for stem in stems:
            files = model_files(stem)
            if _is_data_file(files.json):
                continue
            entry = _entry(files, stem.name in seen, deep, verify)
            seen.add(stem.name)
            if kind is None or not entry.ok or entry.method == kind:
                out.append(entry)
    return out
