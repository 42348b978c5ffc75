import os

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import InputError
from core.image_io import load_image, save_png


def test_rgb_png_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    save_png(tmp_path / "sub" / "a.png", rgb)
    assert os.listdir(tmp_path / "sub") == ["a.png"]  # no temp file left behind
    out = load_image(str(tmp_path / "sub" / "a.png"))
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)


def test_grey(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3)
    assert all(np.array_equal(out[:, :, c], grey) for c in range(3))


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = (200, 10, 40)
    rgba[0, :, 3] = (0, 255, 128)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png").astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 10, 40]
    expect = np.array([200, 10, 40]) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(out[0, 2] - expect).max() <= 1


def test_16bit_grey_png(tmp_path):
    grey = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_16bit_rgb_png(tmp_path):
    rgb = np.array([[[0, 257 * 100, 65535]]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[:, :, ::-1])  # cv2 writes BGR
    assert load_image(tmp_path / "c16.png")[0, 0].tolist() == [0, 100, 255]


def test_exif_rotation_honoured(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # landscape as stored: left red, right blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # upright portrait
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50  # stored left (red) is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50


def test_arrays():
    assert load_image(np.full((2, 2), 65535, np.uint16)).tolist() == np.full((2, 2, 3), 255).tolist()
    assert load_image(np.full((2, 2, 3), 0.5, np.float32))[0, 0].tolist() == [128, 128, 128]
    rgb = np.zeros((2, 3, 3), np.uint8)
    assert load_image(rgb).shape == (2, 3, 3)
    with pytest.raises(InputError):
        load_image(np.zeros((2, 2, 2), np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "nope.jpg")
    assert "Photo not found" in e.value.problem and "nope.jpg" in e.value.problem and e.value.fix


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo")
    with pytest.raises(InputError) as e:
        load_image(p)
    assert "notes.jpg" in e.value.problem and e.value.fix


def test_truncated_png(tmp_path):
    p = tmp_path / "cut.png"
    save_png(p, np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError):
        load_image(p)
