import numpy as np
import pytest

from core.landmarks import (FLIP_16, HEAD_TOP_FRACTION, MPII16_NAMES, UPPER_NECK_FRACTION, flip_landmarks,
                            gaussian_heatmaps, mpii16_from_coco17, mpii16_from_mediapipe)

# mediapipe's own left/right pairs: the labels a detector gives a mirrored photo.
MP_FLIP_33 = np.arange(33)
for a, b in [(1, 4), (2, 5), (3, 6), (7, 8), (9, 10)] + [(i, i + 1) for i in range(11, 33, 2)]:
    MP_FLIP_33[a], MP_FLIP_33[b] = b, a


def fake_mediapipe(seed=0, width=200, height=300):
    rng = np.random.default_rng(seed)
    lm = np.zeros((33, 4))
    lm[:, 0] = rng.uniform(0, width, 33)
    lm[:, 1] = rng.uniform(0, height, 33)
    lm[:, 2] = rng.normal(size=33)
    lm[:, 3] = rng.uniform(0.2, 1, 33)
    return lm


def test_names_in_mpii_order():
    assert MPII16_NAMES == ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
                            "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
                            "l_elbow", "l_wrist")


def test_from_mediapipe():
    lm = fake_mediapipe()
    out = mpii16_from_mediapipe(lm)
    assert out.shape == (16, 3) and out.dtype == np.float32
    j = {n: out[i] for i, n in enumerate(MPII16_NAMES)}
    np.testing.assert_allclose(j["r_wrist"], lm[16, [0, 1, 3]], rtol=1e-6)
    np.testing.assert_allclose(j["l_ankle"], lm[27, [0, 1, 3]], rtol=1e-6)
    np.testing.assert_allclose(j["r_shoulder"], lm[12, [0, 1, 3]], rtol=1e-6)
    np.testing.assert_allclose(j["pelvis"][:2], (lm[23, :2] + lm[24, :2]) / 2, rtol=1e-6)
    assert j["pelvis"][2] == pytest.approx(min(lm[23, 3], lm[24, 3]))
    thorax, head = (lm[11, :2] + lm[12, :2]) / 2, (lm[7, :2] + lm[8, :2]) / 2
    np.testing.assert_allclose(j["thorax"][:2], thorax, rtol=1e-6)
    np.testing.assert_allclose(j["upper_neck"][:2], thorax + UPPER_NECK_FRACTION * (head - thorax), rtol=1e-5)
    np.testing.assert_allclose(j["head_top"][:2], head + HEAD_TOP_FRACTION * (head - thorax), rtol=1e-5)
    assert j["head_top"][2] == pytest.approx(lm[[7, 8, 11, 12], 3].min())


def test_upright_person_head_order():
    lm = np.zeros((33, 4))
    lm[:, 3] = 1
    lm[[11, 12], :2] = [[120, 100], [80, 100]]  # shoulders
    lm[[7, 8], :2] = [[110, 60], [90, 60]]  # ears
    j = dict(zip(MPII16_NAMES, mpii16_from_mediapipe(lm)))
    assert j["head_top"][1] < 60 < j["upper_neck"][1] < j["thorax"][1] == 100


def test_coco17_matches_mediapipe():
    lm = fake_mediapipe(3)
    coco = lm[[0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]][:, [0, 1, 3]]
    np.testing.assert_allclose(mpii16_from_coco17(coco), mpii16_from_mediapipe(lm), rtol=1e-6)
    assert mpii16_from_coco17(coco[:, :2])[:, 2].tolist() == [1.0] * 16


def test_flip_matches_mirrored_detection():
    """A mirrored photo: mediapipe gives x -> W - x and swapped labels; FLIP_16 must agree with that."""
    width = 200
    lm = fake_mediapipe(1, width)
    mirrored = lm[MP_FLIP_33].copy()
    mirrored[:, 0] = width - mirrored[:, 0]
    flipped = flip_landmarks(mpii16_from_mediapipe(lm), width)
    np.testing.assert_allclose(flipped, mpii16_from_mediapipe(mirrored), rtol=1e-5, atol=1e-4)
    orig = mpii16_from_mediapipe(lm)
    ix = MPII16_NAMES.index
    assert flipped[ix("r_wrist"), 0] == pytest.approx(width - orig[ix("l_wrist"), 0])
    assert flipped[ix("r_wrist"), 1] == pytest.approx(orig[ix("l_wrist"), 1])
    np.testing.assert_allclose(flip_landmarks(flipped, width), orig, rtol=1e-6)
    assert sorted(FLIP_16.tolist()) == list(range(16)) and (FLIP_16[FLIP_16] == np.arange(16)).all()


def test_flip_matches_fliplr_of_heatmaps():
    lm = np.c_[np.random.default_rng(2).uniform(0, 64, (16, 2)), np.ones(16)]
    hm = gaussian_heatmaps(lm, (64, 64))
    hm_flipped = gaussian_heatmaps(flip_landmarks(lm, 64), (64, 64))
    np.testing.assert_allclose(hm_flipped, hm[FLIP_16][:, :, ::-1], atol=1e-5)


def measured_fwhm(profile):
    d = np.arange(len(profile)) - np.argmax(profile)
    sigma = np.sqrt((d**2 * profile).sum() / profile.sum())
    return sigma * 2 * np.sqrt(2 * np.log(2))


@pytest.mark.parametrize("height,fwhm", [(128, 6.0), (256, 12.0)])
def test_heatmap_peak_and_fwhm(height, fwhm):
    lm = np.full((16, 3), 1.0)
    lm[:, :2] = [40.5, 60.5]  # a pixel centre: pixel (row 60, column 40)
    hm = gaussian_heatmaps(lm, (height, height))
    assert hm.shape == (16, height, height) and hm.dtype == np.float32
    assert np.unravel_index(np.argmax(hm[0]), hm[0].shape) == (60, 40)
    assert hm[0, 60, 40] == pytest.approx(1.0)
    assert measured_fwhm(hm[0, 60]) == pytest.approx(fwhm, rel=0.01)
    assert measured_fwhm(hm[0, :, 40]) == pytest.approx(fwhm, rel=0.01)
    assert measured_fwhm(gaussian_heatmaps(lm, (height, height), fwhm=4.0)[0, 60]) == pytest.approx(4.0, rel=0.01)


def test_heatmap_subpixel():
    lm = np.zeros((16, 2))
    lm[:] = [10.0, 20.25]  # on the border between columns 9 and 10
    hm = gaussian_heatmaps(lm, (32, 32), fwhm=6.0)[0]
    assert hm[20, 9] == pytest.approx(hm[20, 10])
    sigma = 6.0 / (2 * np.sqrt(2 * np.log(2)))
    assert hm[20, 10] == pytest.approx(np.exp(-(0.5**2 + 0.25**2) / (2 * sigma**2)), rel=1e-5)
    ys = np.arange(32) + 0.5
    assert (hm[:, 10] * ys).sum() / hm[:, 10].sum() == pytest.approx(20.25, abs=1e-3)


def test_heatmap_outside_and_nan_empty():
    lm = np.full((16, 3), 16.5)
    lm[0, :2] = [-3, 10]
    lm[1, :2] = [10, 33]
    lm[2, :2] = np.nan
    lm[3, 2] = np.nan  # visibility NaN is ignored
    hm = gaussian_heatmaps(lm, (32, 32))
    assert np.isfinite(hm).all()
    assert hm[:3].max() == 0.0
    assert hm[3].max() == pytest.approx(1.0)
