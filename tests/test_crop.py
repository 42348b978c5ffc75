import numpy as np
import pytest

from core.crop import CropBox, crop_box_from_mask, crop_box_from_points, crop_image
from core.errors import NoPersonError


def test_round_trip_and_extra_columns():
    box = CropBox(-12.3, 40.7, 210.5, 421.0)
    pts = np.c_[np.random.default_rng(0).uniform(-50, 500, (20, 2)), np.arange(20), np.ones(20)]
    crop = box.to_crop(pts, (256, 128))
    np.testing.assert_allclose(box.to_source(crop, (256, 128)), pts, atol=1e-9)
    np.testing.assert_array_equal(crop[:, 2:], pts[:, 2:])
    corners = box.to_crop([[box.x0, box.y0], [box.x0 + box.width, box.y0 + box.height]], (256, 128))
    np.testing.assert_allclose(corners, [[0, 0], [128, 256]], atol=1e-9)


def test_dict_round_trip_and_validation():
    box = CropBox(1.5, 2.0, 3.0, 4.0)
    assert CropBox.from_dict(box.as_dict()) == box
    with pytest.raises(ValueError):
        CropBox(0, 0, 0, 10)


def person_mask(x0=50, y0=20, w=30, h=100, shape=(200, 300)):
    m = np.zeros(shape, np.float32)
    m[y0:y0 + h, x0:x0 + w] = 1.0
    return m


def test_box_from_mask_tall_person():
    box = crop_box_from_mask(person_mask())
    assert box.height == pytest.approx(100 / 0.85) and box.width == pytest.approx(box.height)
    assert box.x0 + box.width / 2 == pytest.approx(65) and box.y0 + box.height / 2 == pytest.approx(70)


def test_box_from_mask_wide_person_and_aspect():
    box = crop_box_from_mask(person_mask(w=200, h=50))
    assert box.width == pytest.approx(200 / 0.85) and box.height == pytest.approx(box.width)
    tall = crop_box_from_mask(person_mask(), aspect_wh=0.5)
    assert tall.height == pytest.approx(100 / 0.85) and tall.width == pytest.approx(tall.height / 2)
    # 80 px wide needs a box 160 / 0.85 tall at 1:2 even though the person is only 100 px tall.
    assert crop_box_from_mask(person_mask(w=80), aspect_wh=0.5).height == pytest.approx(160 / 0.85)


def test_box_jitter():
    base = crop_box_from_mask(person_mask())
    box = crop_box_from_mask(person_mask(), scale_jitter=1.2, shift_jitter=(0.1, -0.05))
    assert box.height == pytest.approx(base.height * 1.2)
    assert box.x0 + box.width / 2 == pytest.approx(65 + 0.1 * box.width)
    assert box.y0 + box.height / 2 == pytest.approx(70 - 0.05 * box.height)


def test_box_from_points():
    pts = np.array([[60, 30, 1], [70, 110, 0.5], [np.nan, np.nan, 0]])
    box = crop_box_from_points(pts, pad=0.1)
    assert box.height == pytest.approx(80 * 1.1 / 0.85)
    assert box.x0 + box.width / 2 == pytest.approx(65) and box.y0 + box.height / 2 == pytest.approx(70)


def test_empty_mask_is_no_person():
    with pytest.raises(NoPersonError):
        crop_box_from_mask(np.zeros((10, 10)))
    with pytest.raises(NoPersonError):
        crop_box_from_points(np.full((16, 3), np.nan))


def centroid(img):
    ys, xs = np.mgrid[:img.shape[0], :img.shape[1]] + 0.5
    return np.array([(img * xs).sum(), (img * ys).sum()]) / img.sum()


def test_marker_pixel_nearest():
    img = np.zeros((200, 300), np.uint8)
    img[77, 123] = 255  # pixel centre (123.5, 77.5)
    box = CropBox(100.0, 50.0, 64.0, 64.0)
    out = crop_image(img, box, (128, 128), interpolation="nearest")  # 2x up: a 2x2 block
    assert out.dtype == np.uint8 and np.count_nonzero(out) == 4
    np.testing.assert_allclose(centroid(out), box.to_crop([[123.5, 77.5]], (128, 128))[0], atol=1e-9)


@pytest.mark.parametrize("box,out_hw", [(CropBox(101.3, 49.6, 37.0, 37.0), (64, 64)),  # up, odd scale
                                        (CropBox(-40.2, -10.7, 400.0, 200.0), (50, 100))])  # 4x down, off edge
def test_marker_linear_lands_where_to_crop_says(box, out_hw):
    img = np.zeros((200, 300, 3), np.float32)
    img[72:80, 120:128] = 1.0  # 8x8 block centred on (124, 76)
    out = crop_image(img, box, out_hw)
    assert out.shape == out_hw + (3,) and out.dtype == np.float32
    want = box.to_crop([[124.0, 76.0]], out_hw)[0]
    np.testing.assert_allclose(centroid(out[:, :, 0]), want, atol=0.1)
    sx = out_hw[1] / box.width
    assert out.sum() / 3 == pytest.approx(64 * sx * sx, rel=0.02)  # energy kept: no aliasing loss


@pytest.mark.parametrize("box,out_hw", [(CropBox(40.3, 30.6, 37.0, 37.0), (64, 64)),
                                        (CropBox(20.2, 10.7, 160.0, 80.0), (20, 40))])
def test_ramp_maps_exactly(box, out_hw):
    """An image whose value is its own x coordinate: each crop pixel must read its to_source x."""
    ramp = np.tile(np.arange(300, dtype=np.float32) + 0.5, (200, 1))
    out = crop_image(ramp, box, out_hw)
    u = np.arange(out_hw[1]) + 0.5
    want = box.to_source(np.c_[u, np.zeros_like(u)], out_hw)[:, 0]
    np.testing.assert_allclose(out[out_hw[0] // 2], want, atol=1 / 32)  # cv2 resolves 1/32 pixel


def test_box_outside_photo_pads_zero():
    img = np.full((10, 10, 3), 200, np.uint8)
    out = crop_image(img, CropBox(5.0, 5.0, 10.0, 10.0), (10, 10))
    assert out.dtype == np.uint8 and out[:4, :4].min() == 200 and out[6:, 6:].max() == 0
    assert crop_image(img, CropBox(50.0, 50.0, 4.0, 4.0), (8, 8)).max() == 0
    assert crop_image(img, CropBox(50.0, 50.0, 40.0, 40.0), (8, 8)).max() == 0


def test_bool_mask_and_channel_axis():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    out = crop_image(m, CropBox(0.0, 0.0, 20.0, 20.0), (10, 10), interpolation="nearest")
    assert out.dtype == bool and out.sum() == 25
    soft = crop_image(m, CropBox(0.0, 0.0, 20.0, 20.0), (10, 10))
    assert soft.dtype == np.float32 and 0 <= soft.min() and soft.max() <= 1
    assert crop_image(np.zeros((20, 20, 1), np.uint8), CropBox(0.0, 0.0, 20.0, 20.0), (5, 5)).shape == (5, 5, 1)
    with pytest.raises(ValueError):
        crop_image(m, CropBox(0.0, 0.0, 20.0, 20.0), (10, 10), interpolation="cubic")
