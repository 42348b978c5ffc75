"""The JSON contract every network config keeps (VRN, HumanMeshNet): lists for tuples, strict reading
(unknown keys raise; absent keys take the named variant's defaults, so older files keep loading)."""

from __future__ import annotations

import dataclasses


def config_to_dict(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def variant_defaults(cls, data, label: str, variants: dict) -> dict:
    """Check `data` against `cls`'s fields and the known variants; return the named variant's fields."""
    if not isinstance(data, dict):
        raise ValueError(f"a {label} config must be a JSON object; got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {label} config keys {unknown}; known: {sorted(known)}")
    if data.get("variant") not in variants:
        raise ValueError(f"unknown {label} variant {data.get('variant')!r}; known: {list(variants)}")
    return variants[data["variant"]].to_dict()


def pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
