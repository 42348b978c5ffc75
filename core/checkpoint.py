"""A model on disk: `NAME.safetensors` (weights) + `NAME.json` (format tag, method, config, sha256, metrics).

    save_model("models/vrn-multistack-w64", network, {"training": {...}, "metrics": {...}})
    loaded = load_model("vrn-multistack-w64")          # or a path to the .json, .safetensors or the stem
    loaded.network(x)                                    # eval mode, float32, on `device`

Loading validates in this order, each failure a `ModelError` naming the file and the fix: both files present,
JSON parseable, format tag and version, known method, config (known variant, no unknown keys), weights
sha256 ("truncated or altered"), safetensors header readable, tensor names and shapes. Weights are read with
`safetensors.torch.load_file` (never pickle) and cast to float32.

Finding the files and the checks that need no weights are `core.models` (torch-free, shared with the add-on
and the listing); which network kinds exist and how each is built is `core.registry.NETWORKS`. A network
saved here must carry `.config` (with `to_dict()` or a dataclass) and `.method` (its kind).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from core import registry
from core.errors import ModelError
from core.files import write_files
from core.models import FORMAT, FORMAT_VERSION, RESAVE, find_model, model_files, read_model_doc, sha256_file

RESERVED_KEYS = ("format", "format_version", "method", "config", "weights_sha256", "weights_dtype")

@dataclass
class LoadedModel:
    network: nn.Module
    config: Any
    meta: dict  # the whole JSON document
    name: str
    path: Path  # the .json file
    weights_path: Path




# ---------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------

def _config_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise TypeError(f"cannot serialise a config of type {type(config).__name__}")


def save_model(stem_path, network: nn.Module, meta: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write STEM.safetensors and STEM.json all or nothing (core.files.write_files); returns the .json path.

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
    if method not in registry.NETWORKS:
        raise ValueError(f"network has method {method!r}; known: {list(registry.NETWORKS)}")
    js, wt = model_files(stem_path)
    tensors = {}
    for key, t in network.state_dict().items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(dtype)
        tensors[key] = t.contiguous().clone()
    weights = save(tensors, metadata={"format": "pt", "method": method})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": meta.pop("name", js.stem),
           "method": method, "config": _config_dict(network.config),
           "weights_sha256": hashlib.sha256(weights).hexdigest(), "weights_dtype": str(dtype).replace("torch.", ""),
           "training": meta.pop("training", {}), "metrics": meta.pop("metrics", {}), **meta}
    # All or nothing, the weights renamed into place before the JSON that vouches for them.
    write_files({wt: weights, js: json.dumps(doc, indent=2) + "\n"})
    return js


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

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
    js, wt = find_model(name_or_path, search_dirs)
    doc, config = read_model_doc(model_files(js))

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

    network = registry.NETWORKS[doc["method"]].build(config)
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
