"""The command line end to end on a project-rendered photo, and every error path users can hit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from core.export import YUP_TO_ZUP

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def reconstructions(person_photo, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    results = {}
    for suffix in (".obj", ".ply", ".glb"):
        args = ["reconstruct", person_photo, "-o", out / f"body{suffix}", "--method", "vrn", "--model", tiny_model, "--height", "1.8",
                "--json"]
        if suffix == ".glb":
            args += ["--preview", out / "preview.png"]
        results[suffix] = run_cli(*args)
    return out, results


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_cli_writes_mesh_trimesh_loads(reconstructions, suffix):
    out, results = reconstructions
    proc = results[suffix]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["mesh"] == str(out / f"body{suffix}")
    assert summary["faces"] > 100
    assert summary["height_m"] == pytest.approx(1.8, rel=1e-3)
    assert set(summary["timings_s"]) >= {"detect", "encode", "network", "surface", "total"}
    mesh = trimesh.load(out / f"body{suffix}", force="mesh", process=False)
    assert len(mesh.faces) == summary["faces"]
    vertices = np.asarray(mesh.vertices)
    if suffix == ".glb":  # glTF is Y-up; undo the export's axis change to get Blender's frame back
        vertices = trimesh.transform_points(vertices, YUP_TO_ZUP)
    assert vertices[:, 2].min() == pytest.approx(0.0, abs=1e-3)
    assert np.ptp(vertices[:, 2]) == pytest.approx(1.8, rel=1e-3)


def test_cli_preview_is_a_picture(reconstructions):
    out, _ = reconstructions
    img = np.asarray(Image.open(out / "preview.png"))
    assert img.ndim == 3 and img.shape[1] > img.shape[0]  # photo + front + side panels side by side
    assert img.std() > 10


def test_cli_progress_on_stderr_results_on_stdout(reconstructions):
    _, results = reconstructions
    proc = results[".obj"]
    assert "network" in proc.stderr  # the progress bar names the stages
    json.loads(proc.stdout.strip().splitlines()[-1])  # stdout holds only the result


def test_good_photo_leaves_no_third_party_lines_on_stderr(reconstructions):
    """stderr holds only our progress lines and warnings: no mediapipe/absl/TensorFlow/PIL log lines."""
    import re

    _, results = reconstructions
    for proc in results.values():
        other = [ln for ln in proc.stderr.splitlines()
                 if ln.strip() and not re.match(r"\[\s*\d+%\] \w+$", ln) and not ln.startswith("warning: ")]
        assert other == [], other


def test_missing_photo(tmp_path):
    proc = run_cli("reconstruct", tmp_path / "nobody.jpg", "-o", tmp_path / "x.obj")
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "nobody.jpg" in proc.stderr
    assert not (tmp_path / "x.obj").exists()


def test_not_an_image(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a photo")
    proc = run_cli("reconstruct", fake, "-o", tmp_path / "x.obj")
    assert proc.returncode == 2
    assert "notes.jpg" in proc.stderr


def test_no_person(tmp_path, tiny_model):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(blank)
    proc = run_cli("reconstruct", blank, "-o", tmp_path / "x.obj", "--method", "vrn", "--model", tiny_model)
    assert proc.returncode == 3
    assert "No person found" in proc.stderr
    assert not (tmp_path / "x.obj").exists()


def test_model_missing(person_photo, tmp_path):
    proc = run_cli("reconstruct", person_photo, "-o", tmp_path / "x.obj", "--model", tmp_path / "nothing")
    assert proc.returncode == 4
    assert "nothing" in proc.stderr


def test_model_corrupt(person_photo, tiny_model, tmp_path):
    for ext in (".json", ".safetensors"):
        shutil.copy(Path(str(tiny_model) + ext), tmp_path / f"broken{ext}")
    weights = tmp_path / "broken.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated download
    proc = run_cli("reconstruct", person_photo, "-o", tmp_path / "x.obj", "--method", "vrn",
                   "--model", tmp_path / "broken")
    assert proc.returncode == 4
    assert "truncated" in proc.stderr
    assert not (tmp_path / "x.obj").exists()


def test_unknown_output_format(person_photo, tmp_path):
    proc = run_cli("reconstruct", person_photo, "-o", tmp_path / "x.stl")
    assert proc.returncode == 2  # a bad argument (README: exit codes)
    assert ".glb" in proc.stderr


def test_info_lists_versions_and_models(tiny_model):
    proc = subprocess.run([sys.executable, "-m", "core", "info"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ,
                                            "MONOHUMAN_MODELS_DIR": str(Path(tiny_model).parent)})
    assert proc.returncode == 0, proc.stderr
    assert "torch" in proc.stdout and "mediapipe" in proc.stdout
    assert "model" in proc.stdout and Path(tiny_model).name in proc.stdout
