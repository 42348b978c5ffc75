"""VRN family: every variant built from the shared blocks, chosen by name (`config_for("multistack")`)."""

from core.networks.blocks import BLOCKS, NORMS, make_block
from core.networks.hourglass import Hourglass, max_hourglass_depth
from core.networks.vrn import (HEADS, VARIANTS, VRN, VRNConfig, build_vrn, config_for, count_parameters, flops,
                               matched_volume_features, vrn_loss)

__all__ = [
    "BLOCKS", "HEADS", "NORMS", "VARIANTS", "VRN", "VRNConfig", "Hourglass", "build_vrn", "config_for",
    "count_parameters", "flops", "make_block", "matched_volume_features", "max_hourglass_depth", "vrn_loss",
]
