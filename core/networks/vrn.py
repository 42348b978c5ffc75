"""VRN: volumetric regression networks (Jackson et al., human body VRN), every variant from one code path.

A network maps the encoded crop (N, C, H_in, W_in) (see `core.encode`) to occupancy logits
(N, D, H, W): the D depth slices are the output channels of a 2-D network, spatially aligned with the crop.

Architecture (Newell-style stacked hourglasses)::

    stem      7x7 stride-2 conv -> block -> [maxpool -> block]* -> block   (N, f, H/4, W/4)
    lift      (conv3d only) 1x1 conv f -> c*D' and reshape to (N, c, D', H/4, W/4), D' = D/4
    stack s   hourglass -> `modules` blocks -> 1x1 conv-norm-ReLU           = y_s
              x_{s+1} = x_s + 1x1conv(y_s)                                   (features passed on)
    head s    (supervised stacks) y_s -> logits (N, D, H, W), upsampled x4

The stem downsamples by whatever power of two puts the hourglasses at volume H/4 x W/4, so input 128 with
volume 128 (stride 4) and input 256 with volume 128 (stride 8) both work.

Heads. The final (predicting) stack uses `head` ("hybrid" by default: the bilinear head below plus a learned
full-resolution correction from the "deconv" path, two 4x4 stride-2 transposed convs f -> f/2 -> f/4 then
1x1 -> D, whose last conv starts at zero). Measured on 200 Anny renders (64^3, f = 32, 400 Adam steps): the
deconv head alone never left the all-empty prediction (held-out IoU 0.00: its f/4-channel bottleneck must
encode every depth profile), the bilinear head reached 0.33; hybrid learns like bilinear and keeps a surface
that is not limited to the H/4 grid. Earlier supervised
stacks use `aux_head` ("bilinear": 1x1 conv f -> D at H/4, bilinear x4), cheap deep supervision. The last
head conv's bias starts at -2 (about 12 % occupancy, a body in its crop), which shortens the start of
training; nothing else depends on it.

Ours - 3D Convolution ("conv3d", block "flat3d"). The paper gives only the flat block (fig. 3) and "FLOPs
matched to Multistack by reducing features". Our design: the same 2-D stem (multiscale blocks, `features`
wide), then a 1x1 conv lifts the f channels into a feature volume of c channels over D' = D/4 depth cells at
(H/4, W/4): isotropic cells of 4 voxels. The stacked hourglasses (same stacks/modules/depth as Multistack) are
made of flat3d blocks and pool/upsample only in H and W. The final (deconv) head folds the volume back to c*D'
channels of a 2-D map (depth cells become channels again), reduces them to f with a 1x1 conv and upsamples
like the 2-D head. The bilinear aux heads map each cell to its 4 depth voxels with a 1x1x1 conv and move
them into channels (depth-to-channel), then upsample H, W bilinearly. FLOP matching: a multiscale block costs 9*f^2*(1/2+1/8+1/16) MACs a pixel, a flat3d
block 3*c^2*(1/2+1/8+1/16) a cell and there are D' cells a pixel, so equal cost needs c = f*sqrt(3/D')
(rounded to a multiple of 4): c = 0.31 f for a 128-deep volume. `volume_features = 0` in a config asks for
that value; the resolved number is what is stored. Measured totals: see `flops()` (stem/lift/heads differ).

Refinement (`refine` > 0, ours, off in the paper's variants). Every head above predicts from the stack's
H/4 x W/4 grid, so limbs that are 2 to 4 output pixels wide are blurred away: the shipped CPU model's front
view agreed with the true silhouette at only 0.56 IoU although the person mask is one of its inputs. The
refinement stage is a short full-resolution residual path: the final logits, concatenated with the network
input resampled to the volume's H x W (image, landmark heatmaps, mask), pass through two 3x3 conv-norm-ReLU
layers `refine` wide and a 3x3 conv to D channels (starting at zero), which is added to the logits. It only
sees (and only corrects) the last stack's prediction, so deep supervision of earlier stacks is unchanged.

Loss (eq. 1 of the paper): per-voxel binary cross-entropy on logits, summed over the supervised stacks.
Normalisation: we take the MEAN over the N*D*H*W voxels of each stack, not eq. 1's sum. That only rescales
the gradient by a constant 1/(N*D*H*W) (a learning-rate rescale; RMSProp/Adam are nearly invariant to it),
and it keeps numbers comparable between the 128^3 cube and the 96x256x128 volume and across batch sizes.
The stacks are SUMMED (the paper's "four losses"), so a 4-stack variant's loss is about 4x a single-stack
value: compare variants on the last stack's BCE or on IoU, not on the training loss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.encode import INPUT_CHANNELS
from core.networks.blocks import (BLOCKS, NORMS, ConvNormReLU, block_dims, conv, make_block, make_blocks,
                                  norm_layer)
from core.networks.hourglass import Hourglass, max_hourglass_depth
from core.networks.config_json import config_to_dict, pos_int, variant_defaults

HEADS = ("hybrid", "deconv", "bilinear")
HEAD_SCALE = 4  # the hourglasses run at volume H/4 x W/4


@dataclass(frozen=True)
class VRNConfig:
    """Everything that defines a VRN network. JSON round trip: `to_dict()` / `VRNConfig.from_dict(d)`."""

    variant: str
    inputs: tuple = ("image", "landmarks")  # channel order is always image, landmarks, mask, body
    input_size: tuple = (128, 128)  # (H_in, W_in)
    volume_shape: tuple = (128, 128, 128)  # (D, H, W)
    features: int = 256  # width f of the 2-D network (and of the stem for conv3d)
    stacks: int = 4
    modules_per_hourglass: int = 2  # residual blocks at each position of an hourglass
    block: str = "multiscale"  # "old-residual" | "multiscale" | "flat3d"
    hourglass_depth: int = 4  # times an hourglass halves H/4 x W/4
    supervise_all: bool = True  # a loss after every hourglass (else only the last)
    norm: str = "batch"  # "batch" | "group"
    head: str = "hybrid"  # final stack's head: "hybrid" | "deconv" | "bilinear"
    aux_head: str = "bilinear"  # head of earlier supervised stacks
    volume_features: int = 0  # flat3d only: channels c of the feature volume; 0 = FLOP-matched to f
    refine: int = 0  # width of the full-resolution refinement of the final logits; 0 = none (the paper)
    body_prior: bool = False  # add the guide body's own occupancy to the logits (needs the "body" input)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("inputs", tuple(n for n in INPUT_CHANNELS if n in set(self.inputs)) if _names_ok(self.inputs)
             else tuple(self.inputs))
        set_("input_size", tuple(self.input_size))
        set_("volume_shape", tuple(self.volume_shape))
        if self.block == "flat3d" and self.volume_features == 0 and len(self.volume_shape) == 3:
            set_("volume_features", matched_volume_features(self.features, self.volume_shape[0]))
        self.validate()

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return sum(INPUT_CHANNELS[n] for n in self.inputs)

    @property
    def grid(self) -> tuple[int, int]:
        """(H/4, W/4): where the hourglasses run."""
        return self.volume_shape[1] // HEAD_SCALE, self.volume_shape[2] // HEAD_SCALE

    @property
    def stem_stride(self) -> int:
        return self.input_size[0] // self.grid[0]

    @property
    def is_3d(self) -> bool:
        return block_dims(self.block) == 3

    @property
    def supervised_stacks(self) -> tuple[int, ...]:
        return tuple(range(self.stacks)) if self.supervise_all else (self.stacks - 1,)

    # ---- validation --------------------------------------------------------------------------------
    def validate(self) -> None:
        err = lambda msg: ValueError(f"VRN config {self.variant!r}: {msg}")  # noqa: E731
        if self.variant not in VARIANT_NAMES:
            raise ValueError(f"unknown VRN variant {self.variant!r}; known: {list(VARIANT_NAMES)}")
        if not _names_ok(self.inputs):
            raise err(f"inputs must be a non-empty subset of {list(INPUT_CHANNELS)} without repeats; "
                      f"got {list(self.inputs)}")
        if len(self.input_size) != 2 or not all(pos_int(v) for v in self.input_size):
            raise err(f"input_size must be (H_in, W_in) positive ints; got {self.input_size}")
        if len(self.volume_shape) != 3 or not all(pos_int(v) for v in self.volume_shape):
            raise err(f"volume_shape must be (D, H, W) positive ints; got {self.volume_shape}")
        for name in ("features", "stacks", "modules_per_hourglass", "hourglass_depth"):
            if not pos_int(getattr(self, name)):
                raise err(f"{name} must be a positive int; got {getattr(self, name)!r}")
        if self.features % 8:
            raise err(f"features must be a multiple of 8; got {self.features}")
        if self.block not in BLOCKS:
            raise err(f"unknown block {self.block!r}; known: {list(BLOCKS)}")
        if self.norm not in NORMS:
            raise err(f"unknown norm {self.norm!r}; known: {list(NORMS)}")
        if not isinstance(self.refine, int) or isinstance(self.refine, bool) or self.refine < 0:
            raise err(f"refine must be an int >= 0 (0 = no refinement); got {self.refine!r}")
        for name in ("head", "aux_head"):
            if getattr(self, name) not in HEADS:
                raise err(f"unknown {name} {getattr(self, name)!r}; known: {list(HEADS)}")
        if not isinstance(self.body_prior, bool):
            raise err(f"body_prior must be true or false; got {self.body_prior!r}")
        if self.body_prior and "body" not in self.inputs:
            raise err("body_prior needs the body among the inputs (the guide it turns into occupancy)")
        if not isinstance(self.supervise_all, bool):
            raise err(f"supervise_all must be true or false; got {self.supervise_all!r}")
        d, h, w = self.volume_shape
        if h % HEAD_SCALE or w % HEAD_SCALE:
            raise err(f"volume H and W must be multiples of {HEAD_SCALE}; got {h}x{w}")
        gh, gw = self.grid
        if max_hourglass_depth(gh, gw) < self.hourglass_depth:
            raise err(f"volume {h}x{w} (H x W) puts the hourglasses on a {gh}x{gw} grid, which cannot be halved "
                      f"{self.hourglass_depth} times; use hourglass_depth <= {max_hourglass_depth(gh, gw)} or "
                      f"volume H and W divisible by {HEAD_SCALE * 2 ** self.hourglass_depth}")
        hin, win = self.input_size
        if hin % gh or win % gw or hin // gh != win // gw or not _pow2(hin // gh) or hin // gh < 2:
            raise err(f"input_size {hin}x{win} must be the volume's {gh}x{gw} grid times one power of two >= 2 "
                      f"(e.g. {h}x{w} or {2 * h}x{2 * w})")
        if self.is_3d:
            if d % HEAD_SCALE:
                raise err(f"conv3d needs volume depth D divisible by {HEAD_SCALE}; got {d}")
            if not pos_int(self.volume_features) or self.volume_features % 4:
                raise err(f"volume_features must be a positive multiple of 4; got {self.volume_features}")
        elif self.volume_features != 0:
            raise err(f"volume_features is only for the flat3d block; set it to 0 (got {self.volume_features})")

    # ---- JSON -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VRNConfig":
        """Strict: unknown keys raise; keys absent (older files) take the named variant's defaults."""
        base = variant_defaults(cls, data, "VRN", VARIANTS)
        if "volume_features" not in data and base["block"] == "flat3d":
            base["volume_features"] = 0
        base.update(data)
        return cls(**base)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _names_ok(inputs) -> bool:
    try:
        names = list(inputs)
    except TypeError:
        return False
    return bool(names) and len(set(names)) == len(names) and all(n in INPUT_CHANNELS for n in names)


def matched_volume_features(features: int, depth: int) -> int:
    """c such that a flat3d block on (c, D/4, h, w) costs about a multiscale block on (features, h, w)."""
    cells = max(1, depth // HEAD_SCALE)
    return max(4, int(round(features * math.sqrt(3.0 / cells) / 4.0)) * 4)


VARIANT_NAMES = ("vrn-guided", "multistack", "old-residual", "image-only", "landmarks-only", "mask-only", "conv3d",
                 "body-guided", "body-residual")
VARIANTS: dict[str, VRNConfig] = {}


def _register_variants() -> None:
    ms = dict(stacks=4, modules_per_hourglass=2, block="multiscale", supervise_all=True,
              inputs=("image", "landmarks"))
    specs = {
        # The baseline of the paper = VRN - Guided of the face paper [1]: 2 hourglasses, 4 residual modules,
        # Newell's residual, one loss on the final stack; guided by the landmark heatmaps.
        "vrn-guided": dict(stacks=2, modules_per_hourglass=4, block="old-residual", supervise_all=False,
                           inputs=("image", "landmarks")),
        "multistack": ms,
        "old-residual": {**ms, "block": "old-residual"},
        "image-only": {**ms, "inputs": ("image",)},
        "landmarks-only": {**ms, "inputs": ("landmarks",)},
        "mask-only": {**ms, "inputs": ("mask",)},
        "conv3d": {**ms, "block": "flat3d"},
        # Ours (#13): the fitted Anny body as three more input planes (core.guide), so the network corrects a
        # body instead of guessing limbs and depth from pixels (PaMIR / ICON's idea, after the paper's Guided).
        "body-guided": {**ms, "inputs": ("image", "landmarks", "mask", "body")},
        # Ours (#13): body-guided whose logits are a correction added to the guide body's own occupancy
        # (`BodyPrior`), so it starts from the fitted body instead of learning to draw it from three planes.
        "body-residual": {**ms, "inputs": ("image", "landmarks", "mask", "body"), "body_prior": True},
    }
    assert tuple(specs) == VARIANT_NAMES
    for name, spec in specs.items():
        VARIANTS[name] = VRNConfig(variant=name, **spec)


def config_for(name: str, **overrides) -> VRNConfig:
    """The named variant's config with `overrides` (features, volume_shape, input_size, norm, ...).

    When `volume_shape` is overridden and these are not, they follow it: `input_size` becomes the volume's
    (H, W), `hourglass_depth` is capped at what the new grid allows, and (flat3d) `volume_features` is
    re-matched. `volume_features` is also re-matched when only `features` changes.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown VRN variant {name!r}; known: {list(VARIANTS)}")
    base = VARIANTS[name]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(VRNConfig)})
    if unknown:
        raise ValueError(f"unknown VRN config keys {unknown}")
    if "variant" in overrides and overrides["variant"] != name:
        raise ValueError("config_for: pass the variant as the name, not as an override")
    o = dict(overrides)
    if "volume_shape" in o:
        d, h, w = tuple(o["volume_shape"])
        o.setdefault("input_size", (h, w))
        if "hourglass_depth" not in o and h % HEAD_SCALE == 0 and w % HEAD_SCALE == 0:
            o["hourglass_depth"] = max(1, min(base.hourglass_depth,
                                              max_hourglass_depth(h // HEAD_SCALE, w // HEAD_SCALE)))
    if base.block == "flat3d" and "volume_features" not in o:
        o["volume_features"] = 0  # re-match to the (possibly new) features / depth
    return dataclasses.replace(base, **o)


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------

class Stem(nn.Module):
    """(N, C, H_in, W_in) -> (N, f, H_in/stride, W_in/stride); Newell's 7x7/2 conv, residuals, max pools."""

    def __init__(self, cin: int, features: int, stride: int, block: str, norm: str):
        super().__init__()
        f = features
        layers = [ConvNormReLU(2, cin, f // 4, 7, norm, stride=2), make_block(block, f // 4, f // 2, norm)]
        for _ in range(int(math.log2(stride)) - 1):
            layers += [nn.MaxPool2d(2), make_block(block, f // 2, f // 2, norm)]
        layers.append(make_block(block, f // 2, f, norm))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Lift(nn.Module):
    """conv3d: (N, f, h, w) -> 1x1 conv -> (N, c*D', h, w) -> reshape -> (N, c, D', h, w)."""

    def __init__(self, features: int, channels: int, cells: int):
        super().__init__()
        self.channels, self.cells = channels, cells
        self.proj = nn.Conv2d(features, channels * cells, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        return self.proj(x).reshape(n, self.channels, self.cells, h, w)


class Stack(nn.Module):
    """hourglass -> blocks -> 1x1 conv-norm-ReLU (Newell's per-stack tail)."""

    def __init__(self, cfg: VRNConfig, channels: int):
        super().__init__()
        dims = block_dims(cfg.block)
        self.hourglass = Hourglass(cfg.hourglass_depth, channels, cfg.block, cfg.modules_per_hourglass, cfg.norm)
        self.post = make_blocks(cfg.block, channels, cfg.modules_per_hourglass, cfg.norm)
        self.lin = ConvNormReLU(dims, channels, channels, 1, cfg.norm)

    def forward(self, x):
        return self.lin(self.post(self.hourglass(x)))


class Head(nn.Module):
    """Stack features -> logits (N, D, H, W) at 4x the grid.

    2-D features (N, f, h, w). 3-D features (N, c, D', h, w) with `cells` = D' > 0: the bilinear head maps
    each cell to its D/D' depth voxels with a 1x1x1 conv and moves them into channels (depth-to-channel,
    voxel d = cell * D/D' + k); the deconv head folds the volume to c*D' channels and reduces them to f.
    """

    def __init__(self, kind: str, in_channels: int, features: int, depth: int, norm: str, cells: int = 0,
                 prior_bias: float = -2.0):
        super().__init__()
        self.kind, self.cells, self.depth = kind, cells, depth
        if kind == "hybrid":
            self.coarse = Head("bilinear", in_channels, features, depth, norm, cells, prior_bias)
            self.fine = Head("deconv", in_channels, features, depth, norm, cells, 0.0)
            nn.init.zeros_(self.fine.out.weight)
            return
        if kind == "bilinear":
            self.pre = nn.Identity()
            self.out = nn.Conv3d(in_channels, depth // cells, 1) if cells else nn.Conv2d(in_channels, depth, 1)
        elif kind == "deconv":
            f, cin = features, in_channels * max(cells, 1)
            reduce = [] if cin == f else [ConvNormReLU(2, cin, f, 1, norm)]
            self.pre = nn.Sequential(
                *reduce,
                nn.ConvTranspose2d(f, f // 2, 4, stride=2, padding=1, bias=False), norm_layer(norm, f // 2, 2),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(f // 2, f // 4, 4, stride=2, padding=1, bias=False), norm_layer(norm, f // 4, 2),
                nn.ReLU(inplace=True))
            self.out = nn.Conv2d(f // 4, depth, 1)
        else:
            raise ValueError(f"unknown head {kind!r}; known: {list(HEADS)}")
        nn.init.constant_(self.out.bias, prior_bias)

    def forward(self, y):
        if self.kind == "hybrid":
            return self.coarse(y) + self.fine(y)
        if self.kind == "deconv":
            if y.dim() == 5:
                y = y.flatten(1, 2)  # (N, c, D', h, w) -> (N, c*D', h, w)
            return self.out(self.pre(y))
        z = self.out(y)
        if z.dim() == 5:  # (N, D/D', D', h, w) -> (N, D', D/D', h, w) -> (N, D, h, w)
            n, _, _, h, w = z.shape
            z = z.transpose(1, 2).reshape(n, self.depth, h, w)
        return F.interpolate(z, scale_factor=HEAD_SCALE, mode="bilinear", align_corners=False)


class Refine(nn.Module):
    """Full-resolution residual correction of the final logits from the input (see the module docstring)."""

    def __init__(self, in_channels: int, depth: int, width: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(ConvNormReLU(2, in_channels + depth, width, 3, norm),
                                  ConvNormReLU(2, width, width, 3, norm), conv(2, width, depth, 3))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        size = logits.shape[-2:]
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="area" if x.shape[-1] > size[-1] else "bilinear")
        return logits + self.body(torch.cat([logits, x.to(logits.dtype)], dim=1))


class BodyPrior(nn.Module):
    """What the inputs already say about occupancy, as logits added to every head's (variant "body-residual").

    The guide body (`core.guide` planes, from input channel `body_channel`): a voxel is inside where its depth lies
    between the body's front and back surface on its pixel's ray, softened over about a voxel, times a learned
    gain. The person mask, when it is an input: a voxel whose pixel is off the mask is outside (the front
    view's visual hull), a learned penalty (gain times 1 - mask), soft because the mask is a detector's. The
    network then predicts what to change about the fitted body (clothing, hair, the fit's depth errors) rather
    than drawing the body, and does not have to learn that the photo's background is empty."""

    def __init__(self, depth: int, body_channel: int, mask_channel: int | None = None, gain: float = 4.0,
                 hull: float = 4.0):
        super().__init__()
        self.depth, self.body_channel, self.mask_channel = depth, body_channel, mask_channel
        self.gain = nn.Parameter(torch.tensor(float(gain)))
        self.hull = nn.Parameter(torch.tensor(float(hull))) if mask_channel is not None else None
        self.register_buffer("z", (torch.arange(depth, dtype=torch.float32) + 0.5).view(1, depth, 1, 1) / depth,
                             persistent=False)

    def occupancy(self, x: torch.Tensor, size) -> torch.Tensor:
        """The guide body's soft occupancy (N, D, H, W) in [0, 1] at the volume's H x W."""
        guide = x[:, self.body_channel:self.body_channel + 3].float()
        cover = guide[:, 2:3]
        depths = guide[:, :2] * cover
        if tuple(guide.shape[-2:]) != tuple(size):  # masked area mean: depths at the silhouette are not blurred
            cover = F.interpolate(cover, size=size, mode="area")
            depths = F.interpolate(depths, size=size, mode="area") / cover.clamp_min(1e-6)
        front, back = depths[:, 0:1], depths[:, 1:2]
        sharp = 2.0 * self.depth
        return cover * torch.sigmoid((self.z - front) * sharp) * torch.sigmoid((back - self.z) * sharp)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        prior = self.gain * self.occupancy(x, size)
        if self.hull is not None:
            mask = x[:, self.mask_channel:self.mask_channel + 1].float()
            if tuple(mask.shape[-2:]) != tuple(size):
                mask = F.interpolate(mask, size=size, mode="area")
            prior = prior - self.hull * (1.0 - mask)
        return prior


class VRN(nn.Module):
    """forward(x (N, C, H_in, W_in)) -> [logits (N, D, H, W)] one per supervised stack; the last predicts."""

    method = "vrn"

    def __init__(self, config: VRNConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        d = cfg.volume_shape[0]
        stem_block = "multiscale" if cfg.is_3d else cfg.block
        self.stem = Stem(cfg.in_channels, cfg.features, cfg.stem_stride, stem_block, cfg.norm)
        if cfg.is_3d:
            body, cells = cfg.volume_features, d // HEAD_SCALE
            self.lift = Lift(cfg.features, body, cells)
        else:
            body, cells = cfg.features, 0
            self.lift = nn.Identity()
        dims = block_dims(cfg.block)
        self.stacks = nn.ModuleList(Stack(cfg, body) for _ in range(cfg.stacks))
        self.merges = nn.ModuleList(conv(dims, body, body, 1) for _ in range(cfg.stacks - 1))
        last = cfg.stacks - 1
        self.heads = nn.ModuleDict({
            str(s): Head(cfg.head if s == last else cfg.aux_head, body, cfg.features, d, cfg.norm, cells)
            for s in cfg.supervised_stacks})
        self.refine = Refine(cfg.in_channels, d, cfg.refine, cfg.norm) if cfg.refine else None
        self.body_prior = (BodyPrior(d, _channel_of(cfg.inputs, "body"), _channel_of(cfg.inputs, "mask"))
                           if cfg.body_prior else None)

    def forward(self, x: torch.Tensor, final_only: bool = False) -> list[torch.Tensor]:
        """Logits of every supervised stack (or, with final_only, just the last stack's, skipping aux heads)."""
        cfg = self.config
        expect = (cfg.in_channels, *cfg.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expect:
            raise ValueError(f"VRN {cfg.variant!r} expects input (N, {expect[0]}, {expect[1]}, {expect[2]}) "
                             f"for inputs {list(cfg.inputs)}; got {tuple(x.shape)}")
        inp = x
        x = self.lift(self.stem(x))
        outs = []
        last = cfg.stacks - 1
        for s, stack in enumerate(self.stacks):
            y = stack(x)
            if str(s) in self.heads and (s == last or not final_only):
                outs.append(self.heads[str(s)](y))
            if s < last:
                x = x + self.merges[s](y)
        if self.body_prior is not None:
            prior = self.body_prior(inp, outs[-1].shape[-2:])
            outs = [o + prior.to(o.dtype) for o in outs]
        if self.refine is not None:
            outs[-1] = self.refine(outs[-1], inp)
        return outs

    def to_channels_last(self) -> "VRN":
        """channels_last for 4-D weights, channels_last_3d for 5-D (flat3d); `Module.to` only handles one."""
        def convert(t):
            if t.dim() == 4:
                return t.contiguous(memory_format=torch.channels_last)
            if t.dim() == 5:
                return t.contiguous(memory_format=torch.channels_last_3d)
            return t
        return self._apply(convert)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Occupancy probabilities (N, D, H, W) of the final stack."""
        return torch.sigmoid(self.forward(x, final_only=True)[-1])


def _channel_of(inputs, name: str) -> int | None:
    """The first input channel of `name` in the encoded input (core.encode's fixed order), or None."""
    first = 0
    for n, count in INPUT_CHANNELS.items():
        if n == name:
            return first if name in inputs else None
        first += count if n in inputs else 0
    return None


def build_vrn(config: VRNConfig) -> VRN:
    return VRN(config)


# ---------------------------------------------------------------------------------------------------------
# Loss and accounting
# ---------------------------------------------------------------------------------------------------------

def vrn_loss(logits_list, target: torch.Tensor, iou_weight: float = 0.0) -> torch.Tensor:
    """Eq. 1: binary cross-entropy per voxel, MEAN over the voxels of a stack, SUMMED over supervised stacks.

    logits_list: a tensor (N, D, H, W) or a list of them (one per supervised stack). target: occupancy of
    the same shape (bool/uint8/float in {0, 1}). Numerically stable (works on logits).

    iou_weight > 0 (ours; 0 is the paper) adds, per stack, iou_weight * (1 - soft IoU), the soft IoU being
    sum(p*t) / sum(p + t - p*t) per sample with p the sigmoid: a body fills about 1 % of the volume, so the
    mean BCE is dominated by empty space and leaves thin parts under-confident; the IoU term weighs the
    body's own voxels the way the evaluation does.
    """
    if isinstance(logits_list, torch.Tensor):
        logits_list = [logits_list]
    if not logits_list:
        raise ValueError("vrn_loss needs at least one logits tensor")
    total = None
    for logits in logits_list:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        t = target.to(dtype=logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="mean")
        if iou_weight > 0:
            loss = loss + iou_weight * (1.0 - soft_iou(torch.sigmoid(logits), t).mean())
        total = loss if total is None else total + loss
    return total


def soft_iou(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Differentiable IoU per sample of (N, D, H, W) probabilities against 0/1 targets (1 when both are empty)."""
    inter = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1)
    return (inter + 1.0) / (union + 1.0)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flops(config: VRNConfig, batch: int = 1, final_only: bool = False) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass, counted by torch's FlopCounterMode on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = VRN(config).eval()
        x = torch.empty(batch, config.in_channels, *config.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, final_only=final_only)
    return int(counter.get_total_flops())


_register_variants()
