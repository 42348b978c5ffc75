from itertools import combinations

import numpy as np
import pytest

from core.encode import INPUT_CHANNELS, channel_count, encode
from core.landmarks import gaussian_heatmaps

ALL = ["image", "landmarks", "mask"]
COMBOS = [list(c) for n in (1, 2, 3) for c in combinations(ALL, n)]


def sample(h=32, w=24):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lm = np.c_[rng.uniform(0, w, 16), rng.uniform(0, h, 16), np.ones(16)]
    mask = rng.uniform(0, 1, (h, w)).astype(np.float32)
    return rgb, lm, mask


def test_channel_counts():
    assert INPUT_CHANNELS == {"image": 3, "landmarks": 16, "mask": 1, "body": 3}
    for combo in COMBOS:
        assert channel_count(combo) == sum(INPUT_CHANNELS[n] for n in combo)
    assert channel_count(["mask", "image"]) == 4


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(c))
def test_encode_order_and_values(combo):
    rgb, lm, mask = sample()
    x = encode(rgb, lm, mask, combo)
    assert x.dtype == np.float32 and x.shape == (channel_count(combo), 32, 24) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, encode(rgb, lm, mask, list(reversed(combo))))  # order fixed by encode
    c = 0
    if "image" in combo:
        np.testing.assert_allclose(x[c:c + 3], (rgb.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, atol=1e-6)
        c += 3
    if "landmarks" in combo:
        np.testing.assert_array_equal(x[c:c + 16], gaussian_heatmaps(lm, (32, 24)))
        c += 16
    if "mask" in combo:
        np.testing.assert_array_equal(x[c], mask)
        c += 1
    assert c == x.shape[0]


def test_image_normalisation_extremes_and_mask_forms():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = 255
    x = encode(rgb, None, None, ["image"])
    assert x[:, 0, 0].tolist() == [2.0, 2.0, 2.0] and x[:, 1, 1].tolist() == [-2.0, -2.0, -2.0]
    m8 = np.zeros((4, 4), np.uint8)
    m8[1, 2] = 255
    np.testing.assert_array_equal(encode(None, None, m8, ["mask"])[0], m8 / 255.0)
    np.testing.assert_array_equal(encode(None, None, m8 > 0, ["mask"])[0], m8 / 255.0)


def test_landmark_heatmap_in_crop_pixels():
    rgb, lm, mask = sample(64, 64)
    lm[7, :2] = [20.5, 40.5]
    hm = encode(rgb, lm, mask, ["landmarks"])
    assert np.unravel_index(np.argmax(hm[7]), (64, 64)) == (40, 20)


def test_errors():
    rgb, lm, mask = sample()
    with pytest.raises(ValueError, match="unknown"):
        encode(rgb, lm, mask, ["image", "depth"])
    with pytest.raises(ValueError, match="unknown"):
        channel_count(["rgb"])
    with pytest.raises(ValueError):
        encode(rgb, lm, mask, [])
    with pytest.raises(ValueError):
        encode(rgb, None, mask, ["landmarks"])
    with pytest.raises(ValueError):
        encode(rgb, lm, mask[:10], ["mask"])
    with pytest.raises(ValueError):
        encode(rgb.astype(np.float32), lm, mask, ["image"])
    with pytest.raises(ValueError):
        encode(None, lm, None, ["landmarks"])


def test_body_guide_planes_come_last_and_are_required():
    rgb, lm, mask = sample()
    h, w = mask.shape
    body = np.random.default_rng(3).uniform(0, 1, (3, h, w)).astype(np.float32)
    x = encode(rgb, lm, mask, ("body", "image", "mask"), body=body)
    assert x.shape == (7, h, w) and np.array_equal(x[4:], body)
    with pytest.raises(ValueError, match="body must be"):
        encode(rgb, lm, mask, ("image", "body"))
