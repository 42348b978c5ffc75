"""core.export (OBJ / PLY / GLB) and core.preview (the at-a-glance PNG)."""

import json
import struct
import time

import cv2
import numpy as np
import pytest
import trimesh
from PIL import Image

from core.errors import MonohumanError
from core.export import YUP_TO_ZUP, ZUP_TO_YUP, save_mesh
from core.geometry import barycentrics, rasterise
from core.preview import render_preview, write_preview
from core.surface import extract_surface, surface_to_metric


@pytest.fixture(scope="module")
def body():
    """A small metric-frame 'person': ellipsoid body + nose toward the camera, 1.70 m tall."""
    shape = (24, 64, 32)
    d, h, w = np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij")
    vol = ((w - 16) / 6) ** 2 + ((h - 34) / 26) ** 2 + ((d - 12) / 5) ** 2 <= 1
    vol |= (w - 16) ** 2 + (h - 14) ** 2 + (d - 6.5) ** 2 <= 2.5**2
    mesh, _ = surface_to_metric(extract_surface(vol), 1.70)
    return mesh


def _textured(mesh):
    m = mesh.copy()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    m.visual = trimesh.visual.TextureVisuals(uv=rng.random((len(m.vertices), 2)), image=img)
    return m


def _glb_json(path):
    data = path.read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20:20 + length])


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_round_trip(tmp_path, body, suffix):
    path = save_mesh(body, tmp_path / f"body{suffix}")
    assert path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.vertices) == len(body.vertices)
    assert len(back.faces) == len(body.faces)
    if suffix == ".glb":
        # glTF is Y-up: the height is along +Y and the face (-Y in ours) looks along +Z
        assert back.vertices[:, 1].max() == pytest.approx(1.70, abs=1e-5)
        nose = back.vertices[np.argmax(back.vertices[:, 2])]
        assert nose[1] > 1.2
        back.apply_transform(YUP_TO_ZUP)
    np.testing.assert_allclose(back.vertices, body.vertices, atol=1e-5)
    np.testing.assert_array_equal(back.faces, body.faces)


def test_normals_are_written(tmp_path, body):
    save_mesh(body, tmp_path / "b.obj")
    lines = (tmp_path / "b.obj").read_text().splitlines()
    assert sum(line.startswith("vn ") for line in lines) == len(body.vertices)
    save_mesh(body, tmp_path / "b.ply")
    header = (tmp_path / "b.ply").read_bytes().split(b"end_header")[0]
    assert b"property float nx" in header
    save_mesh(body, tmp_path / "b.glb")
    attrs = _glb_json(tmp_path / "b.glb")["meshes"][0]["primitives"][0]["attributes"]
    assert "NORMAL" in attrs


def test_texture_obj_and_glb(tmp_path, body):
    tex = _textured(body)
    save_mesh(tex, tmp_path / "person.obj")
    assert (tmp_path / "person.obj.mtl").exists() and (tmp_path / "person.obj.png").exists()
    assert "mtllib person.obj.mtl" in (tmp_path / "person.obj").read_text()
    back = trimesh.load(tmp_path / "person.obj", force="mesh", process=False)
    assert len(back.vertices) == len(body.vertices)
    np.testing.assert_allclose(back.visual.uv, tex.visual.uv, atol=1e-6)
    assert back.visual.material.image.size == (16, 16)

    save_mesh(tex, tmp_path / "person.glb")
    g = _glb_json(tmp_path / "person.glb")
    assert g["images"] and "bufferView" in g["images"][0]  # embedded, not a side file
    back = trimesh.load(tmp_path / "person.glb", force="mesh", process=False)
    np.testing.assert_allclose(back.visual.uv, tex.visual.uv, atol=1e-6)
    assert len(back.vertices) == len(body.vertices)


def test_bad_suffix_and_empty(tmp_path, body):
    with pytest.raises(MonohumanError, match=r"\.obj, \.ply or \.glb"):
        save_mesh(body, tmp_path / "body.stl")
    with pytest.raises(MonohumanError):
        save_mesh(body, tmp_path / "body")
    with pytest.raises(MonohumanError):
        save_mesh(trimesh.Trimesh(), tmp_path / "empty.obj")
    assert list(tmp_path.iterdir()) == []


def test_axis_matrices():
    np.testing.assert_allclose(ZUP_TO_YUP @ YUP_TO_ZUP, np.eye(4))
    assert np.linalg.det(ZUP_TO_YUP[:3, :3]) == pytest.approx(1.0)
    # Blender's glTF import: (x, y, z)_blender = (x, -z, y)_gltf
    p = np.array([0.1, -0.2, 1.5, 1.0])
    g = ZUP_TO_YUP @ p
    np.testing.assert_allclose([g[0], -g[2], g[1]], p[:3])


# --- preview -------------------------------------------------------------------------------------

def test_rasterise_square():
    uv = np.array([[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face_id, zbuf = rasterise(uv, np.zeros(4), faces, (40, 40))
    bary = barycentrics(uv, faces, face_id)
    covered = face_id >= 0
    assert covered.sum() == 400  # pixel centres 10.5..29.5 in both directions
    assert covered[10:30, 10:30].all()
    np.testing.assert_allclose(bary[covered].sum(1), 1.0, atol=1e-5)
    assert (bary[covered] >= -1e-6).all() and np.isinf(zbuf[~covered]).all() and (zbuf[covered] == 0).all()


def test_render_preview(tmp_path, body):
    rgb = np.full((300, 200, 3), 128, np.uint8)
    lm = np.column_stack([np.linspace(60, 140, 16), np.linspace(20, 280, 16), np.ones(16)])
    lm[3, 2] = 0.0  # invisible: not drawn
    mask = np.zeros((300, 200), np.uint8)
    mask[20:280, 60:140] = 255
    img = render_preview(rgb, body, landmarks16=lm, mask=mask, crop_box=(40, 10, 140, 280))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] == 512
    assert img.shape[1] > 512 * 200 / 300 + 200  # photo + two views
    photo_w = int(round(200 * 512 / 300))
    front = img[:, photo_w + 4:]
    assert len(np.unique(front.reshape(-1, 3), axis=0)) > 20  # shaded, not flat

    path = write_preview(tmp_path / "p.png", rgb, body, landmarks16=lm, mask=mask)
    back = cv2.imread(str(path))
    assert back is not None and back.shape[0] == 512

    vol_img = render_preview(rgb, None, volume=np.ones((8, 16, 8)))  # volume fallback
    assert vol_img.shape[0] == 512 and vol_img.shape[1] > photo_w
    from core.crop import CropBox

    boxed = render_preview(rgb, body, crop_box=CropBox(40.0, 10.0, 140.0, 280.0))
    assert boxed.shape == img.shape
    only_photo = render_preview(rgb)
    assert only_photo.shape == (512, photo_w, 3)


def test_preview_speed_50k_faces():
    mesh = trimesh.creation.icosphere(subdivisions=6)  # 81,920 faces
    mesh.apply_scale([0.25, 0.15, 0.85])
    mesh.apply_translation([0, 0, 0.85])
    rgb = np.zeros((64, 64, 3), np.uint8)
    render_preview(rgb, mesh)  # warm-up
    t = time.perf_counter()
    img = render_preview(rgb, mesh)
    elapsed = time.perf_counter() - t
    assert img.shape[0] == 512
    assert elapsed < 3.0  # about 0.1 s here; generous for shared CI cores
