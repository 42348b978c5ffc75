"""VRN family: configs, shapes for cube and tall volumes, the loss, a training step per variant."""

import dataclasses
import json
import math

import pytest
import torch

from core.networks import (VARIANTS, VRNConfig, build_vrn, config_for, count_parameters, flops,
                           matched_volume_features, vrn_loss)

torch.set_num_threads(1)

CUBE = (16, 32, 32)  # (D, H, W)
TALL = (12, 32, 16)  # the aspect of 96 x 256 x 128
TINY = dict(features=16)


def tiny(name, volume=CUBE, **kw):
    return config_for(name, volume_shape=volume, **TINY, **kw)


def test_variants_match_the_paper():
    assert set(VARIANTS) == {"vrn-guided", "multistack", "old-residual", "image-only", "landmarks-only",
                             "mask-only", "conv3d", "body-guided", "body-residual"}  # the paper's seven and ours (#13)
    g, m = VARIANTS["vrn-guided"], VARIANTS["multistack"]
    assert (g.stacks, g.modules_per_hourglass, g.block, g.supervise_all) == (2, 4, "old-residual", False)
    assert (m.stacks, m.modules_per_hourglass, m.block, m.supervise_all) == (4, 2, "multiscale", True)
    assert m.inputs == ("image", "landmarks") and m.features == 256 and m.volume_shape == (128, 128, 128)
    assert VARIANTS["old-residual"] == dataclasses.replace(m, variant="old-residual", block="old-residual")
    for name, inputs in [("image-only", ("image",)), ("landmarks-only", ("landmarks",)), ("mask-only", ("mask",))]:
        assert VARIANTS[name] == dataclasses.replace(m, variant=name, inputs=inputs)
    assert VARIANTS["body-guided"] == dataclasses.replace(m, variant="body-guided",
                                                          inputs=("image", "landmarks", "mask", "body"))
    c3 = VARIANTS["conv3d"]
    assert c3.block == "flat3d" and c3.stacks == 4 and c3.volume_features == matched_volume_features(256, 128)


def test_config_json_round_trip_and_strictness():
    for name in VARIANTS:
        c = tiny(name, TALL)
        d = json.loads(json.dumps(c.to_dict()))
        assert VRNConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown VRN config keys"):
        VRNConfig.from_dict({**VARIANTS["multistack"].to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="unknown VRN variant"):
        VRNConfig.from_dict({**VARIANTS["multistack"].to_dict(), "variant": "nope"})
    with pytest.raises(ValueError, match="unknown VRN config keys"):
        config_for("multistack", widht=3)
    # inputs are a set; the channel order is always image, landmarks, mask
    assert config_for("multistack", inputs=["mask", "image"]).inputs == ("image", "mask")
    assert config_for("multistack", inputs=["mask", "image"]).in_channels == 4


def test_config_validation_messages():
    with pytest.raises(ValueError, match="cannot be halved"):
        config_for("multistack", volume_shape=(16, 32, 32), hourglass_depth=4)
    with pytest.raises(ValueError, match="input_size"):
        config_for("multistack", input_size=(100, 128))
    with pytest.raises(ValueError, match="multiple of 8"):
        config_for("multistack", features=20)
    with pytest.raises(ValueError, match="depth D divisible"):
        config_for("conv3d", volume_shape=(18, 32, 32))
    # the adaptations config_for makes when only volume_shape changes
    c = config_for("multistack", volume_shape=(96, 256, 128))
    assert c.input_size == (256, 128) and c.hourglass_depth == 4 and c.grid == (64, 32)
    assert config_for("multistack", volume_shape=TALL).hourglass_depth == 2
    assert config_for("multistack", input_size=(256, 256)).stem_stride == 8


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("volume", [CUBE, TALL], ids=["cube", "tall"])
def test_shapes(name, volume):
    cfg = tiny(name, volume)
    torch.manual_seed(0)
    net = build_vrn(cfg)
    x = torch.randn(2, cfg.in_channels, *cfg.input_size)
    outs = net(x)
    assert len(outs) == (cfg.stacks if cfg.supervise_all else 1)
    assert all(o.shape == (2, *volume) for o in outs)
    net.eval()
    with torch.no_grad():
        final = net(x, final_only=True)
        assert len(final) == 1 and torch.equal(final[0], net(x)[-1])
        p = net.predict(x)
    assert p.shape == (2, *volume) and 0 <= p.min() and p.max() <= 1


def test_stride8_input_and_channels_last():
    cfg = config_for("conv3d", volume_shape=CUBE, input_size=(64, 64), **TINY)
    assert cfg.stem_stride == 8
    net = build_vrn(cfg).eval()
    x = torch.randn(1, cfg.in_channels, 64, 64)
    with torch.no_grad():
        ref = net(x)[-1]
        net.to_channels_last()
        out = net(x.contiguous(memory_format=torch.channels_last))[-1]
    assert out.shape == (1, *CUBE) and torch.allclose(out, ref, atol=1e-4)
    with pytest.raises(ValueError, match="expects input"):
        net(torch.randn(1, cfg.in_channels + 1, 64, 64))


def test_loss_is_mean_bce_summed_over_stacks():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]], [[-3.0, 4.0], [1.0, -0.5]]]])  # (1, 2, 2, 2)
    target = torch.tensor([[[[1, 0], [0, 1]], [[0, 1], [1, 1]]]], dtype=torch.uint8)
    by_hand = 0.0
    for z, t in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        by_hand -= t * math.log(p) + (1 - t) * math.log(1 - p)
    by_hand /= 8
    assert vrn_loss(logits, target).item() == pytest.approx(by_hand, rel=1e-6)
    assert vrn_loss([logits, logits, logits], target.bool()).item() == pytest.approx(3 * by_hand, rel=1e-6)
    # stable for huge logits
    big = torch.full((1, 2, 2, 2), 1e4)
    assert torch.isfinite(vrn_loss(big, torch.zeros_like(big)))
    with pytest.raises(ValueError, match="shape"):
        vrn_loss(logits, target[:, :1])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_steps_lower_the_loss(name):
    cfg = tiny(name, TALL)
    torch.manual_seed(0)
    net = build_vrn(cfg).train()
    x = torch.randn(2, cfg.in_channels, *cfg.input_size)
    d, h, w = cfg.volume_shape
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    target = (((zz - d / 2) / (d / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1)
    target = target.expand(2, d, h, w)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = vrn_loss(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_group_norm_and_bilinear_head_options():
    cfg = tiny("multistack", CUBE, norm="group", head="bilinear")
    net = build_vrn(cfg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net(torch.randn(1, cfg.in_channels, *cfg.input_size))[-1].shape == (1, *CUBE)


def test_conv3d_flops_roughly_match_multistack():
    ms, c3 = config_for("multistack", features=64), config_for("conv3d", features=64)
    assert c3.volume_features == matched_volume_features(64, 128) == 20
    ratio = flops(c3) / flops(ms)
    assert 0.7 < ratio < 1.3, ratio
    assert count_parameters(build_vrn(tiny("multistack"))) > 0


def test_refinement_starts_as_identity_and_learns_at_full_resolution():
    """The refine stage adds nothing at initialisation, then corrects the final logits pixel by pixel."""
    torch.manual_seed(0)
    plain, refined = tiny("multistack", TALL, norm="group"), tiny("multistack", TALL, norm="group", refine=8)
    assert VRNConfig.from_dict(json.loads(json.dumps(refined.to_dict()))) == refined
    assert VRNConfig.from_dict({k: v for k, v in refined.to_dict().items() if k != "refine"}).refine == 0
    with pytest.raises(ValueError, match="refine"):
        tiny("multistack", refine=-1)
    a, b = build_vrn(plain), build_vrn(refined)
    b.load_state_dict(a.state_dict(), strict=False)  # same trunk; only the refine weights are new
    x = torch.randn(2, refined.in_channels, *refined.input_size)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x)[-1], b(x)[-1])
    # a one-pixel-wide target (a "limb") that the H/4 grid cannot draw: the refined net gets closer
    target = torch.zeros(2, *TALL)
    target[:, 4:8, :, 7] = 1
    for net in (a, b):
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(30):
            opt.zero_grad()
            vrn_loss(net(x), target).backward()
            opt.step()
    with torch.no_grad():
        err = [float(((net(x)[-1] > 0).float() - target).abs().sum()) for net in (a.eval(), b.eval())]
    assert err[1] < err[0], err


def test_iou_term_of_the_loss():
    """soft IoU is 1 for a perfect confident prediction and the term is 0 then; it weighs body voxels."""
    from core.networks.vrn import soft_iou

    target = torch.zeros(1, 4, 4, 4)
    target[0, 1:3, 1:3, 1:3] = 1
    assert float(soft_iou(target, target)) == pytest.approx(1.0)
    half = target.clone()
    half[0, 1] = 0  # half of the body's 8 voxels: IoU 4/8
    assert float(soft_iou(half, target)) == pytest.approx((4 + 1) / (8 + 1))
    logits = torch.where(target > 0, 20.0, -20.0)
    assert float(vrn_loss(logits, target, iou_weight=1.0)) == pytest.approx(float(vrn_loss(logits, target)), abs=1e-6)
    missed = torch.full_like(target, -20.0)  # everything empty: BCE is small (8 of 64 voxels), IoU term is ~1
    assert float(vrn_loss(missed, target, iou_weight=1.0)) - float(vrn_loss(missed, target)) == pytest.approx(
        1 - 1 / 9, abs=1e-3)


def test_body_residual_starts_from_the_body_inside_the_mask():
    """body-residual's logits are the network's plus the guide body's occupancy, minus a penalty off the person
    mask (the mask channel found in the encoded input, whatever inputs come before it)."""
    from core.networks.vrn import BodyPrior, _channel_of

    cfg = tiny("body-residual", norm="group")
    net = build_vrn(cfg)
    assert tuple(net(torch.zeros(1, cfg.in_channels, 32, 32))[-1].shape) == (1, *CUBE)
    assert _channel_of(cfg.inputs, "mask") == 19 and net.body_prior.mask_channel == 19
    assert _channel_of(cfg.inputs, "body") == 20 == net.body_prior.body_channel and _channel_of(("image",), "mask") is None
    x = torch.zeros(1, cfg.in_channels, 16, 16)  # at 16 x 16 the prior alone
    x[:, -3:, 4:12, 6:10] = torch.tensor([0.25, 0.75, 1.0]).view(1, 3, 1, 1)  # a box 8 deep, mid-volume
    x[:, 19, :, :8] = 1.0  # the mask covers the left half only
    prior = BodyPrior(16, 20, 19)(x, (16, 16))[0]
    inside, hidden, off = prior[8, 8, 7], prior[8, 8, 9], prior[8, 2, 12]
    assert inside > 3.5 and abs(hidden) < 0.5 and off < -3.5  # body and mask / body off the mask / neither
    assert prior[1, 8, 7] < 0.5 < inside  # in front of the body's front surface
