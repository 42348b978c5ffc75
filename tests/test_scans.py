"""train.scans: loading and normalising scanned bodies, judging them, skipping the unusable ones."""

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from core.errors import DataError
from train.scans import iter_scans, load_scan, scan_problem


def person_like():
    """A closed capsule standing on Z (0.36 m wide, 1.5 m tall) with vertex colours."""
    m = trimesh.creation.capsule(height=1.14, radius=0.18)
    m.visual.vertex_colors = np.tile([200, 150, 120, 255], (len(m.vertices), 1)).astype(np.uint8)
    return m


def y_up_centimetres(m):
    m = m.copy()
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # Z-up -> Y-up
    m.apply_scale(100.0)
    m.apply_translation([40.0, -12.0, 7.0])
    return m


def open_bowl():
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    keep = s.vertices[s.faces].mean(axis=1)[:, 2] < 0.1  # a little more than half a sphere
    return trimesh.Trimesh(s.vertices, s.faces[keep])


def test_obj_y_up_in_centimetres_is_normalised(tmp_path):
    path = tmp_path / "body.obj"
    y_up_centimetres(person_like()).export(path)
    m = load_scan(path)
    lo, hi = m.bounds
    assert np.isclose(lo[2], 0.0, atol=1e-9)  # feet at 0
    assert np.isclose(hi[2] - lo[2], 1.70)  # 150 cm is not plausible metres -> target height
    assert np.allclose([lo[0] + hi[0], lo[1] + hi[1]], 0.0, atol=1e-9)  # centred on x, y
    assert np.isclose(hi[0] - lo[0], 0.36 * 1.70 / 1.5, rtol=1e-3)
    assert scan_problem(m) is None


def test_plausible_metres_keep_real_scale_and_colours(tmp_path):
    path = tmp_path / "body.ply"
    src = person_like()
    src.apply_translation([1.0, 2.0, 3.0])
    src.export(path)
    m = load_scan(path)
    assert np.isclose(m.extents[2], 1.50)  # Z-up, 1.5 m: kept
    assert np.isclose(m.bounds[0][2], 0.0, atol=1e-9)
    assert np.allclose(m.visual.vertex_colors[0, :3], [200, 150, 120])
    m2 = load_scan(path, target_height=1.8, keep_real_scale=False)
    assert np.isclose(m2.extents[2], 1.80)


def test_inconsistent_faces_are_flipped(tmp_path):
    m = person_like()
    faces = np.asarray(m.faces).copy()
    faces[::5] = faces[::5, ::-1]
    trimesh.Trimesh(m.vertices, faces, process=False).export(tmp_path / "messy.ply")
    fixed = load_scan(tmp_path / "messy.ply")
    assert trimesh.Trimesh(fixed.vertices, fixed.faces).is_winding_consistent
    assert scan_problem(fixed) is None


def test_scan_problem_reasons():
    assert "not a triangle mesh" in scan_problem(None)
    assert "empty" in scan_problem(trimesh.Trimesh())
    assert "no faces" in scan_problem(trimesh.Trimesh(vertices=np.random.rand(10, 3)))
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], [[0, 1, 2], [1, 3, 2]])
    assert "degenerate" in scan_problem(flat)
    assert "too open" in scan_problem(open_bowl())
    assert scan_problem(trimesh.creation.icosphere(subdivisions=2)) is None


def test_slightly_open_scan_is_accepted():
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    keep = s.vertices[s.faces].mean(axis=1)[:, 2] > -0.47  # a small hole under the "feet"
    assert scan_problem(trimesh.Trimesh(s.vertices, s.faces[keep])) is None


def test_iter_scans_skips_bad_files_and_goes_on(tmp_path, caplog):
    y_up_centimetres(person_like()).export(tmp_path / "a_good.obj")
    (tmp_path / "b_empty.obj").write_text("")
    (tmp_path / "c_garbage.ply").write_bytes(b"\x00\x01 not a mesh \xff" * 40)
    open_bowl().export(tmp_path / "d_open.stl")
    (tmp_path / "texture.png").write_bytes(b"\x89PNG")  # not a mesh: ignored silently
    sub = tmp_path / "more"
    sub.mkdir()
    person_like().export(sub / "e_good.glb")

    skipped = []
    with caplog.at_level(logging.WARNING, logger="train.scans"):
        got = list(iter_scans(tmp_path, skipped=skipped))
    assert [p.name for p, _ in got] == ["a_good.obj", "e_good.glb"]
    assert all(np.isclose(m.bounds[0][2], 0.0, atol=1e-9) for _, m in got)
    reasons = {p.name: r for p, r in skipped}
    assert set(reasons) == {"b_empty.obj", "c_garbage.ply", "d_open.stl"}
    assert "empty" in reasons["b_empty.obj"]
    assert "unreadable" in reasons["c_garbage.ply"]
    assert "too open" in reasons["d_open.stl"]
    for name, reason in reasons.items():
        assert f"skipping {tmp_path / name}: {reason}" in caplog.text


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_scan(tmp_path / "nope.obj")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a mesh format"):
        load_scan(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="no such folder"):
        list(iter_scans(tmp_path / "missing"))


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy (Blender) not installed")
def test_fbx_through_blender(tmp_path):
    path = tmp_path / "box.fbx"
    script = ("import bpy, sys; bpy.ops.wm.read_factory_settings(use_empty=True); "
              "bpy.ops.mesh.primitive_cube_add(size=1.0); o = bpy.context.object; o.scale = (0.4, 0.25, 1.7); "
              "bpy.ops.object.transform_apply(scale=True); "
              f"bpy.ops.export_scene.fbx(filepath={str(path)!r})")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    m = load_scan(path)
    assert np.allclose(m.extents, [0.4, 0.25, 1.7], atol=1e-4)
    assert np.isclose(m.bounds[0][2], 0.0, atol=1e-6)
    assert scan_problem(m) is None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy (Blender) not installed")
def test_dataset_card_says_why_each_scan_was_skipped(tmp_path):
    """The reason iter_scans gives reaches the dataset's card.json (it used to read "could not be used")."""
    import json
    import os
    from pathlib import Path

    scans = tmp_path / "scans"
    scans.mkdir()
    person_like().export(scans / "good.ply")
    (scans / "empty.obj").write_text("")
    (scans / "garbage.ply").write_bytes(b"\x00\x01 not a mesh \xff" * 40)
    open_bowl().export(scans / "open.stl")
    out = tmp_path / "ds"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "train.make_dataset", "--out", str(out), "--count", "1",
                           "--scans", str(scans), "--size", "32", "--volume", "32x32x32", "--engine", "workbench",
                           "--no-detect", "--threads", "1", "--progress", "none"],
                          cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reasons = {s["file"]: s["reason"] for s in json.loads((out / "card.json").read_text())["skipped_scans"]}
    assert set(reasons) == {"empty.obj", "garbage.ply", "open.stl"}
    assert "empty" in reasons["empty.obj"] and "unreadable" in reasons["garbage.ply"]
    assert reasons["open.stl"].startswith("too open")
    assert "could not be used" not in json.dumps(reasons)
