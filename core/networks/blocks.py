"""Building blocks shared by every VRN variant (timm style: variants differ by config, not by code).

All residual blocks are pre-activation (norm -> ReLU -> conv), take `(in_channels, out_channels)` and add a
skip branch (identity, or a 1x1 convolution when the channel count changes). Three blocks, by name:

- ``"old-residual"``: the bottleneck of Newell et al.'s stacked hourglass (the block of VRN - Guided):
  1x1 (c -> c/2), 3x3 (c/2 -> c/2), 1x1 (c/2 -> c).
- ``"multiscale"``: the hierarchical, parallel and multi-scale block of Bulat & Tzimiropoulos 2017
  (paper ref. [32]): three chained 3x3 convolutions c -> c/2 -> c/4 -> c/4 whose outputs are concatenated
  back to c channels (receptive fields 3, 5 and 7 in one block).
- ``"flat3d"``: the paper's "flat" volumetric block (fig. 3) on 5-D (N, C, D, H, W) tensors: the same
  hierarchical scheme with kernels 3x1x1 (c -> c/2, along depth), 1x3x1 (c/2 -> c/4, along H) and
  1x1x3 (c/4 -> c/4, along W).

`make_block(name, cin, cout, norm)` builds one; `block_dims(name)` says whether it works on 2-D or 3-D maps.
"""

from __future__ import annotations

from torch import nn
import torch

NORMS = ("batch", "group")


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups for `channels`: about 4+ channels a group, at most 32 groups, dividing evenly."""
    g = max(1, min(max_groups, channels // 4))
    while channels % g:
        g -= 1
    return g


def norm_layer(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """"batch" (BatchNorm, the paper's) or "group" (GroupNorm: batch-size independent, for tiny batches)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown norm {kind!r}; known: {list(NORMS)}")


def conv(dims: int, cin: int, cout: int, kernel, stride=1, bias: bool = True) -> nn.Module:
    """A 'same'-padded convolution in 2-D or 3-D; `kernel` an int or a per-axis tuple (odd sizes)."""
    if isinstance(kernel, int):
        kernel = (kernel,) * dims
    padding = tuple(k // 2 for k in kernel)
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, stride=stride, padding=padding, bias=bias)


class PreAct(nn.Sequential):
    """norm -> ReLU -> conv."""

    def __init__(self, dims: int, cin: int, cout: int, kernel, norm: str):
        super().__init__(norm_layer(norm, cin, dims), nn.ReLU(inplace=True), conv(dims, cin, cout, kernel))


class ConvNormReLU(nn.Sequential):
    """conv -> norm -> ReLU (post-activation; used in the stem, after hourglasses and in heads)."""

    def __init__(self, dims: int, cin: int, cout: int, kernel, norm: str, stride=1):
        super().__init__(conv(dims, cin, cout, kernel, stride=stride, bias=False), norm_layer(norm, cout, dims),
                         nn.ReLU(inplace=True))


def _skip(dims: int, cin: int, cout: int) -> nn.Module:
    return nn.Identity() if cin == cout else conv(dims, cin, cout, 1)


class OldResidual(nn.Module):
    """Newell's bottleneck residual: 1x1 (c/2), 3x3 (c/2), 1x1 (c), plus skip."""

    dims = 2

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(PreAct(2, cin, mid, 1, norm), PreAct(2, mid, mid, 3, norm),
                                  PreAct(2, mid, cout, 1, norm))
        self.skip = _skip(2, cin, cout)

    def forward(self, x):
        return self.body(x) + self.skip(x)


class HierarchicalResidual(nn.Module):
    """Three chained convs with c/2, c/4, c/4 outputs, concatenated to c, plus skip (Bulat & Tzimiropoulos)."""

    dims = 2
    kernels = (3, 3, 3)

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        if cout % 4:
            raise ValueError(f"{type(self).__name__} needs out channels divisible by 4; got {cout}")
        widths = (cout // 2, cout // 4, cout // 4)
        ins = (cin,) + widths[:2]
        self.branches = nn.ModuleList(PreAct(self.dims, i, o, k, norm) for i, o, k in zip(ins, widths, self.kernels))
        self.skip = _skip(self.dims, cin, cout)

    def forward(self, x):
        outs, h = [], x
        for branch in self.branches:
            h = branch(h)
            outs.append(h)
        return torch.cat(outs, dim=1) + self.skip(x)


class MultiScaleResidual(HierarchicalResidual):
    """Bulat & Tzimiropoulos 2017 multi-scale block: 3x3 convs c -> c/2 -> c/4 -> c/4, concatenated."""


class FlatResidual3d(HierarchicalResidual):
    """The paper's flat volumetric block (fig. 3): 3x1x1 (c/2), 1x3x1 (c/4), 1x1x3 (c/4), concatenated."""

    dims = 3
    kernels = ((3, 1, 1), (1, 3, 1), (1, 1, 3))


BLOCKS: dict[str, type[nn.Module]] = {
    "old-residual": OldResidual,
    "multiscale": MultiScaleResidual,
    "flat3d": FlatResidual3d,
}


def block_dims(name: str) -> int:
    """2 for blocks on (N, C, H, W) maps, 3 for blocks on (N, C, D, H, W) volumes."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; known: {list(BLOCKS)}")
    return BLOCKS[name].dims


def make_block(name: str, cin: int, cout: int, norm: str = "batch") -> nn.Module:
    block_dims(name)
    return BLOCKS[name](cin, cout, norm)


def make_blocks(name: str, channels: int, count: int, norm: str) -> nn.Sequential:
    """`count` blocks of `channels` -> `channels` in sequence (one residual 'position' of an hourglass)."""
    return nn.Sequential(*(make_block(name, channels, channels, norm) for _ in range(count)))
