"""Newell's hourglass (encoder-decoder with a skip branch at every scale), for 2-D maps or 3-D volumes.

    up1  = blocks(x)                                  # skip branch, full resolution
    low  = blocks(maxpool(x))                         # half resolution
    low  = hourglass(depth - 1)(low)  or  blocks(low) # recurse; innermost is plain blocks
    low  = blocks(low)
    out  = up1 + nearest_upsample(low)

"blocks" is `modules` residual blocks in sequence (the "residual modules" count of the paper: 4 in
VRN - Guided, 2 in Ours - Multistack). 3-D hourglasses (flat3d) pool and upsample in H and W only, so the
depth axis keeps its resolution (kernel (1, 2, 2)).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from core.networks.blocks import block_dims, make_blocks


def max_hourglass_depth(height: int, width: int) -> int:
    """How many times an (height, width) grid can be halved evenly (the deepest valid hourglass)."""
    depth = 0
    while height % 2 == 0 and width % 2 == 0 and height >= 2 and width >= 2:
        height, width, depth = height // 2, width // 2, depth + 1
    return depth


class Hourglass(nn.Module):
    def __init__(self, depth: int, channels: int, block: str, modules: int, norm: str = "batch"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"hourglass depth must be >= 1; got {depth}")
        self.dims = block_dims(block)
        self.depth = depth
        self.up1 = make_blocks(block, channels, modules, norm)
        self.low1 = make_blocks(block, channels, modules, norm)
        self.low2 = (Hourglass(depth - 1, channels, block, modules, norm) if depth > 1
                     else make_blocks(block, channels, modules, norm))
        self.low3 = make_blocks(block, channels, modules, norm)

    def forward(self, x):
        up1 = self.up1(x)
        kernel = (2, 2) if self.dims == 2 else (1, 2, 2)
        low = F.max_pool2d(x, kernel) if self.dims == 2 else F.max_pool3d(x, kernel)
        low = self.low3(self.low2(self.low1(low)))
        return up1 + F.interpolate(low, size=up1.shape[2:], mode="nearest")
