"""What network kinds and reconstruction methods exist, in one table, with no torch at import time.

A *network kind* ("vrn", "hmnet") is what a model file holds: its JSON's "method" field names the kind, and
the kind says how to parse the config and build the network (`NETWORKS`). A *method* ("vrn", "hmnet", "fit")
is what a user asks `core.reconstruct` for: it says which network kind it runs and which shipped model it
uses by default (`METHODS`; "fit" runs HumanMeshNet as its initialiser, as SPIN does, or no network at all).

The network modules are imported only when a config is parsed or a network built, so the model listing
(`core.models`) and the Blender add-on's main thread can read this table without torch, and no network
module needs to import the loader that builds it (the old import cycle checkpoint <-> networks.hmnet).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class NetworkKind:
    """One kind of network a model file can hold: where its code lives and how to describe its metrics."""

    name: str
    module: str  # the module with the config class and the builder, relative to `core` (imported lazily: torch)
    config_class: str  # its `from_dict` parses a model JSON's "config" (ValueError on a bad one)
    builder: str  # config -> nn.Module with `.config` and `.method` (= name)
    headline: tuple[str, str, str]  # (metric key training writes, label, format) shown in model listings

    def config_from_dict(self, data: dict) -> Any:
        return getattr(self._module(), self.config_class).from_dict(data)

    def build(self, config) -> Any:
        builder: Callable = getattr(self._module(), self.builder)
        return builder(config)

    def _module(self):
        # relative to this package, so the add-on's vendored copy (<add-on>.vendor.core) imports its own
        return importlib.import_module(self.module, package=__package__)

    def summary(self, metrics) -> str:
        """The headline metric as training wrote it ('validation IoU 0.54'), or '' when the model has none."""
        key, label, fmt = self.headline
        value = metrics.get(key) if isinstance(metrics, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ""
        return f"{label} {format(value, fmt)}"


@dataclass(frozen=True)
class Method:
    """A reconstruction method: the network kind it runs and the model it uses when none is named."""

    name: str
    network: str  # a key of NETWORKS
    default_model: str
    runs_without_model: bool = False  # "fit" can start from Anny's rest pose (model "none")


NETWORKS: dict[str, NetworkKind] = {
    "vrn": NetworkKind("vrn", ".networks.vrn", "VRNConfig", "build_vrn",
                       ("val_iou", "validation IoU", ".2f")),
    "hmnet": NetworkKind("hmnet", ".networks.hmnet", "HMNetConfig", "build_hmnet",
                         ("val_surface_mm", "validation surface error (mm)", ".0f")),
    "lifter": NetworkKind("lifter", ".networks.lifter", "LifterConfig", "build_lifter",
                          ("val_depth_mm", "validation depth error (mm)", ".0f")),
}

METHODS: dict[str, Method] = {
    "vrn": Method("vrn", "vrn", "vrn-body-residual"),
    "hmnet": Method("hmnet", "hmnet", "hmnet-default"),
    "fit": Method("fit", "hmnet", "hmnet-default", runs_without_model=True),
}

NO_MODEL = ("none", "rest")  # model names that mean "fit from Anny's rest pose, no network"


def network_kind(name: str) -> NetworkKind:
    """The kind named in a model file; KeyError for one this version does not know."""
    return NETWORKS[name]


def method(name: str) -> Method:
    """The method a user asked for; KeyError for an unknown one."""
    return METHODS[name]
