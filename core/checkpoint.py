"""A model on disk: `NAME.safetensors` (weights) + `NAME.json` (format tag, method, config, sha256, metrics).

    save_model("models/vrn-multistack-w64", network, {"training": {...}, "metrics": {...}})
    loaded = load_model("vrn-multistack-w64")          # or a path to the .json, .safetensors or the stem
    loaded.network(x)                                    # eval mode, float32, on `device`

Loading validates in this order, each failure a `ModelError` naming the file and the fix: both files present,
JSON parseable, format tag and version, known method, config (known variant, no unknown keys), weights
sha256 ("truncated or altered"), safetensors header readable, tensor names and shapes. Weights are read with
`safetensors.torch.load_file` (never pickle) and cast to float32.

Methods: `METHODS["vrn"]` says how to parse a config and build the network. Another method (e.g. "hmnet")
plugs in with `register_method(name, config_from_dict, build)`; its network must carry `.config` (with
`to_dict()` or a dataclass) and `.method`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import ModelError
from core.networks.vrn import VRNConfig, build_vrn

FORMAT = "monohuman-model"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
ENV_MODELS_DIR = "MONOHUMAN_MODELS_DIR"
RESERVED_KEYS = ("format", "format_version", "method", "config", "weights_sha256", "weights_dtype")


@dataclass(frozen=True)
class Method:
    config_from_dict: Callable[[dict], Any]  # raises ValueError on a bad config
    build: Callable[[Any], nn.Module]


METHODS: dict[str, Method] = {"vrn": Method(VRNConfig.from_dict, build_vrn)}


def register_method(name: str, config_from_dict: Callable[[dict], Any], build: Callable[[Any], nn.Module]) -> None:
    METHODS[name] = Method(config_from_dict, build)


@dataclass
class LoadedModel:
    network: nn.Module
    config: Any
    meta: dict  # the whole JSON document
    name: str
    path: Path  # the .json file
    weights_path: Path


# ---------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------

def default_search_dirs() -> list[Path]:
    """$MONOHUMAN_MODELS_DIR (os.pathsep-separated, searched first), then the repository's models/."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_MODELS_DIR, "").split(os.pathsep) if p]
    return dirs + [MODELS_DIR]


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def _pair(stem: Path) -> tuple[Path, Path]:
    return stem.parent / (stem.name + ".json"), stem.parent / (stem.name + ".safetensors")


def resolve_model(name_or_path, search_dirs=None) -> tuple[Path, Path]:
    """(json_path, weights_path) for a bare model name (searched in the models dirs) or a path."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.is_dir():
        raise ModelError(f"Model {p} is a folder.", "Give the model's NAME.json (or its bare name).")
    is_path = (isinstance(name_or_path, Path) or os.sep in text or p.suffix in (".json", ".safetensors")
               or (os.altsep and os.altsep in text))
    if is_path:
        return _pair(_stem(p))
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else default_search_dirs()
    for d in dirs:
        js, wt = _pair(d / text)
        if js.exists() or wt.exists():
            return js, wt
    known = sorted({e["name"] for e in list_models(dirs)})
    raise ModelError(f"No model named {text!r} in {', '.join(str(d) for d in dirs)}.",
                     f"Pass a path to its .json, put NAME.json + NAME.safetensors in one of those folders "
                     f"(or set {ENV_MODELS_DIR}); available: {', '.join(known) if known else 'none'}.")


# ---------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------

def _config_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise TypeError(f"cannot serialise a config of type {type(config).__name__}")


def _tmp_path(path: Path) -> str:
    from core.files import temp_beside

    return temp_beside(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_model(stem_path, network: nn.Module, meta: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write STEM.safetensors and STEM.json atomically (temporary files + os.replace); returns the .json path.

    network: has `.config` and `.method` (a VRN does). meta: extra JSON fields, e.g. "name" (default: the
    file stem), "training", "metrics"; it may not set the reserved keys. dtype: float16 (half the size) or
    float32 for floating tensors; integer buffers (BatchNorm's counters) are kept as they are.
    """
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"meta may not set {clash}; they come from the network")
    if dtype not in (torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.float16 or torch.float32; got {dtype}")
    method = getattr(network, "method", None)
    if method not in METHODS:
        raise ValueError(f"network has method {method!r}; known: {list(METHODS)}")
    stem = _stem(Path(stem_path))
    stem.parent.mkdir(parents=True, exist_ok=True)
    js, wt = _pair(stem)

    tensors = {}
    for key, t in network.state_dict().items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(dtype)
        tensors[key] = t.contiguous().clone()

    # Both files are written to temporary names first; only when both are complete are they renamed into
    # place (weights, then the JSON that vouches for them), so a crash never leaves a half-written file.
    tmp_wt, tmp_js = _tmp_path(wt), _tmp_path(js)
    try:
        save_file(tensors, tmp_wt, metadata={"format": "pt", "method": method})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": meta.pop("name", stem.name),
               "method": method, "config": _config_dict(network.config), "weights_sha256": sha256_file(tmp_wt),
               "weights_dtype": str(dtype).replace("torch.", ""),
               "training": meta.pop("training", {}), "metrics": meta.pop("metrics", {}), **meta}
        with open(tmp_js, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp_wt, wt)
        os.replace(tmp_js, js)
    finally:
        for tmp in (tmp_wt, tmp_js):
            if os.path.exists(tmp):
                os.unlink(tmp)
    return js


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

RESAVE = "Re-export the model with core.checkpoint.save_model (or copy both files again from where it was trained)."


def _read_doc(js: Path, wt: Path) -> dict:
    """Checks that need no weights: both files, JSON, format, method, config. Returns the document."""
    for f in (js, wt):
        if f.is_dir():
            raise ModelError(f"Model file {f} is a folder.", f"Point at the model's .json. {RESAVE}")
    if not js.exists():
        raise ModelError(f"Model config {js} is missing" + (f" (weights {wt.name} are there)." if wt.exists() else "."),
                         f"A model is NAME.json + NAME.safetensors side by side. {RESAVE}")
    if not wt.exists():
        raise ModelError(f"Model weights {wt} are missing (the config {js.name} is there).",
                         f"Copy {wt.name} next to {js.name}. {RESAVE}")
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
    method = doc.get("method")
    if method not in METHODS:
        raise ModelError(f"{js} uses unknown method {method!r}; known: {', '.join(METHODS)}.",
                         "Update Monohuman to a version that has this method, or fix the 'method' field.")
    try:
        doc["_config"] = METHODS[method].config_from_dict(doc.get("config"))
    except (ValueError, TypeError) as e:
        raise ModelError(f"{js}: bad {method} config: {e}.",
                         "Fix the 'config' field (the variant and keys must be ones this version knows) "
                         "or update Monohuman.")
    if not isinstance(doc.get("weights_sha256"), str):
        raise ModelError(f"{js} has no weights_sha256, so {wt.name} cannot be checked.", RESAVE)
    _check_inference(js, doc.get("inference", {}))
    return doc


def _check_inference(js: Path, inference) -> None:
    """The optional "inference" block (train.calibrate writes it): an object whose iso_level is in (0, 1)."""
    level = inference.get("iso_level", 0.5) if isinstance(inference, dict) else None
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        got = f"inference.iso_level {level!r}" if isinstance(inference, dict) else f"inference {inference!r}"
        raise ModelError(f"{js} has a bad {got}: it must be an object whose iso_level is a number in (0, 1).",
                         "Fix the 'inference' field or recalibrate with python -m train.calibrate.")


def _check_weights_size(wt: Path) -> None:
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


def _few(keys, n: int = 5) -> str:
    """A few key names, grouped by their first two components: 'heads.2.* (14 keys), stacks.2.* (680 keys)'."""
    groups: dict[str, list[str]] = {}
    for k in sorted(keys):
        parts = k.split(".")
        groups.setdefault(".".join(parts[:2]) + ".*" if len(parts) > 2 else k, []).append(k)
    shown = [f"{g} ({len(ks)} keys)" if len(ks) > 1 else ks[0] for g, ks in groups.items()]
    return ", ".join(shown[:n]) + (f" (+{len(shown) - n} more groups)" if len(shown) > n else "")


def load_model(name_or_path, device: str | torch.device = "cpu", search_dirs=None) -> LoadedModel:
    """Load and validate a model (see module docstring); the network is in eval mode, float32, on `device`."""
    js, wt = resolve_model(name_or_path, search_dirs)
    doc = _read_doc(js, wt)
    config = doc.pop("_config")

    digest = sha256_file(wt)
    if digest != doc["weights_sha256"]:
        raise ModelError(f"Weights {wt} do not match the sha256 in {js.name}: the file is truncated or altered "
                         f"(got {digest[:12]}..., expected {doc['weights_sha256'][:12]}...).",
                         f"Copy {wt.name} again from the source. {RESAVE}")
    try:
        state = load_file(str(wt), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"Weights {wt} are not a readable safetensors file (header unreadable: {e}).",
                         f"Re-export the weights. {RESAVE}")

    network = METHODS[doc["method"]].build(config)
    expected = network.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (file vs config): {'; '.join(wrong[:5])}")
        raise ModelError(f"Weights {wt} do not match the config in {js.name}: {'; '.join(parts)}.",
                         "The .json and .safetensors come from different models; save them together again "
                         "with core.checkpoint.save_model.")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ModelError(f"Weights {wt} hold NaN or infinite values in {len(broken)} tensor(s): {_few(broken)}.",
                         "The training diverged or the file was damaged; use an earlier or re-trained model.")
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    return LoadedModel(network=network, config=config, meta=doc, name=str(doc.get("name", js.stem)), path=js,
                       weights_path=wt)


def _is_data_file(js: Path) -> bool:
    """A JSON + safetensors pair that is data, not a network (the fit's body model, core.body_model)."""
    from core.body_model import FORMAT as BODY_MODEL_FORMAT

    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # unreadable: list_models reports it as a broken model
    return isinstance(doc, dict) and doc.get("format") == BODY_MODEL_FORMAT


def list_models(search_dirs=None, verify: bool = False) -> list[dict]:
    """Every model in the search dirs: name (the file stem, what load_model takes), path, method, variant,
    metrics, ok, problem, shadowed (an earlier dir has the same name).

    Broken ones are listed with ok=False and the problem (a ModelError message), not skipped silently. The
    cheap checks (truncation by the file size the safetensors header promises among them) run always; verify=True also checks the sha256 (reads every weights file).
    """
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else default_search_dirs()
    out, seen = [], set()
    for d in dirs:
        if not d.is_dir():
            continue
        stems = sorted({p.with_suffix("") for p in d.iterdir() if p.suffix in (".json", ".safetensors")
                        and not p.name.startswith(".")})
        for stem in stems:
            js, wt = _pair(stem)
            if _is_data_file(js):
                continue
            entry = {"name": stem.name, "path": str(js), "method": None, "variant": None, "metrics": {},
                     "ok": True, "problem": None, "shadowed": stem.name in seen}
            seen.add(stem.name)
            try:
                doc = _read_doc(js, wt)
                config = doc.pop("_config")
                entry.update(method=doc["method"],
                             variant=getattr(config, "variant", None), metrics=doc.get("metrics") or {})
                _check_weights_size(wt)
                if verify and sha256_file(wt) != doc["weights_sha256"]:
                    raise ModelError(f"Weights {wt} are truncated or altered (sha256 mismatch).", RESAVE)
            except ModelError as e:
                entry.update(ok=False, problem=str(e))
            out.append(entry)
    return out

# The second method registers itself on import; it must come after register_method exists.
import core.networks.hmnet  # noqa: E402,F401

