"""core.silhouette: the volume keeps to the person mask, using only what the network saw."""

import numpy as np

from core.silhouette import agree_with_mask, mask_at


def _volume():
    """8 x 6 x 6: a solid column at (2, 2), a faint one at (2, 3) (the network unsure), nothing at (2, 4), and a
    confident voxel at (4, 4) off the mask."""
    v = np.zeros((8, 6, 6), np.float32)
    v[2:6, 2, 2] = 0.9
    v[3:5, 2, 3] = 0.1
    v[4, 4, 4] = 0.8
    mask = np.zeros((6, 6), np.float32)
    mask[2, 2:5] = 1.0
    return v, mask


def test_faint_columns_on_the_mask_join_the_surface_and_nothing_stays_off_it():
    v, mask = _volume()
    out = agree_with_mask(v, mask, level=0.5)
    front = (out > 0.5).any(0)
    assert front[2, 2] and front[2, 3]  # the faint column is raised where the network put it
    assert np.array_equal(np.flatnonzero(out[:, 2, 3] > 0.5), [3, 4])
    assert not front[2, 4]  # no belief at all: not invented
    assert not front[4, 4]  # off the mask
    assert np.array_equal(out[:, 2, 2], v[:, 2, 2])  # a column already on the surface is left alone
    assert v[4, 4, 4] == np.float32(0.8)  # the input is not changed


def test_the_level_is_the_models_own():
    v, mask = _volume()
    out = agree_with_mask(v, mask, level=0.3)  # 0.1 is a third of it: found at the first fraction (0.3)
    assert (out[:, 2, 3] > 0.3).sum() == 2 and out[4, 4, 4] < 0.3


def test_mask_at_resamples_any_size_to_the_volume():
    big = np.zeros((60, 40), np.float32)
    big[:30] = 1.0
    small = mask_at(big, (6, 4))
    assert small.shape == (6, 4) and small[:3].all() and not small[3:].any()
