"""The body guide (core/guide.py) agrees with the voxelised body it describes."""

from __future__ import annotations

import numpy as np

from core.body_model import FIT_BONES, load_body_model
from core.bodyfit import FitParams, pose_body
from core.guide import GUIDE_CHANNELS, body_guide
from core.template import load_template
from train.voxelise import voxelise

SHAPE = (64, 64, 64)


def _posed_body() -> np.ndarray:
    """An Anny body with a bent left elbow in the middle of a 64^3 volume frame, turned 30 degrees."""
    pose = np.zeros((len(FIT_BONES), 3))
    pose[FIT_BONES.index("lowerarm01.L")] = (1.2, 0.0, 0.0)
    params = FitParams(np.full(6, 0.5), pose, np.array([0.0, 0.0, np.radians(30)]), 34.0, np.array([32.0, 32.0]))
    return pose_body(params, SHAPE, load_body_model()).vertices


def test_guide_matches_the_voxelised_body():
    vertices, faces = _posed_body(), load_template().faces
    guide = body_guide(vertices, faces, SHAPE, SHAPE[1:], centre_depth=False)  # depths where the voxels are
    assert guide.shape == (len(GUIDE_CHANNELS), 64, 64) and guide.dtype == np.float32
    occupancy = voxelise(vertices, faces, SHAPE)
    seen = occupancy.any(0)
    cover = guide[2] > 0.5
    assert (cover & seen).sum() / (cover | seen).sum() > 0.9  # the silhouette is the voxels' projection
    both = cover & seen
    first = occupancy.argmax(0)
    last = SHAPE[0] - 1 - occupancy[::-1].argmax(0)
    d = SHAPE[0]
    # front and back surfaces within about a voxel of the first and last occupied voxel of each column
    assert np.median(np.abs(guide[0][both] * d - (first[both] + 0.5))) < 1.0
    assert np.median(np.abs(guide[1][both] * d - (last[both] + 0.5))) < 1.0
    assert (guide[0][cover] <= guide[1][cover] + 1e-6).all() and not guide[:, ~cover].any()


def test_guide_at_another_input_size_is_the_same_body():
    vertices, faces = _posed_body(), load_template().faces
    small, large = body_guide(vertices, faces, SHAPE, (32, 32)), body_guide(vertices, faces, SHAPE, (128, 128))
    pooled = large[2].reshape(32, 4, 32, 4).mean((1, 3)) > 0.5
    assert (pooled == (small[2] > 0.5)).mean() > 0.97


def test_body_prior_is_the_voxelised_body():
    """The body-residual VRN starts from the guide's own occupancy (core.networks.vrn.BodyPrior): at 128 px
    input and a 64^3 volume it is the voxelised body, depth for depth."""
    import torch

    from core.networks.vrn import BodyPrior

    vertices, faces = _posed_body(), load_template().faces
    guide = body_guide(vertices, faces, SHAPE, (128, 128), centre_depth=False)
    x = torch.cat([torch.zeros(1, 4, 128, 128), torch.from_numpy(guide)[None]], dim=1)
    with torch.no_grad():
        occupancy = BodyPrior(SHAPE[0], body_channel=4).occupancy(x, SHAPE[1:])[0].numpy() > 0.5
    truth = voxelise(vertices, faces, SHAPE)
    assert (occupancy & truth).sum() / (occupancy | truth).sum() > 0.85


def test_body_prior_in_a_tall_volume():
    """The paper's tall volume (96 x 256 x 128, here at half size): the guide and the body prior keep the
    body where it is when depth, height and width all differ."""
    import torch

    from core.networks.vrn import BodyPrior

    tall = (48, 128, 64)
    pose = np.zeros((len(FIT_BONES), 3))
    pose[FIT_BONES.index("upperarm01.R")] = (0.0, 0.0, -0.8)
    params = FitParams(np.full(6, 0.5), pose, np.array([0.0, 0.0, np.radians(20)]), 64.0, np.array([32.0, 64.0]))
    vertices, faces = pose_body(params, tall, load_body_model()).vertices, load_template().faces
    guide = body_guide(vertices, faces, tall, (256, 128), centre_depth=False)
    x = torch.cat([torch.zeros(1, 4, 256, 128), torch.from_numpy(guide)[None]], dim=1)
    with torch.no_grad():
        occupancy = BodyPrior(tall[0], body_channel=4).occupancy(x, tall[1:])[0].numpy() > 0.5
    truth = voxelise(vertices, faces, tall)
    assert occupancy.shape == truth.shape == tall
    assert (occupancy & truth).sum() / (occupancy | truth).sum() > 0.85
