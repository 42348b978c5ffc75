"""Issue 16, core side: every bad input is one line with its exit code, and nothing an input or another
output holds is replaced or left half-written. Fast: tiny untrained models, no renders, no detection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from core.checkpoint import load_model, save_model
from core.models import list_models
from core.errors import ArgumentError, InputError, ModelError, MonohumanError, OutputError
from core.export import save_mesh, side_name
from core.files import write_files
from core.image_io import MAX_SIDE, load_image
from core.networks import build_vrn, config_for
from core.validate import validate_request

REPO = Path(__file__).resolve().parents[1]


def run(*args, module="core"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MONOHUMAN_DEBUG": ""})


def one_line(proc, code: int, *words: str) -> str:
    """The process failed with `code` and said so in exactly one line naming `words`; no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not re.match(r"\[\s*\d+%\] ", ln)]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def photo(tmp_path) -> Path:
    p = tmp_path / "person.png"
    Image.fromarray(np.full((64, 48, 3), 128, np.uint8)).save(p)
    return p


@pytest.fixture(scope="module")
def tiny_untrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_vrn(config_for("multistack", features=8, stacks=1, volume_shape=(8, 16, 16), input_size=(16, 16)))
    return save_model(tmp_path_factory.mktemp("m") / "tiny", net, dtype=torch.float32).with_suffix("")


def textured_box():
    m = trimesh.creation.box()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    m.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(1).random((len(m.vertices), 2)), image=img)
    return m


# ------------------------------------------------------------------------- outputs never replace anything

def test_obj_beside_photo_of_same_name_keeps_the_photo(tmp_path, photo):
    before = photo.read_bytes()
    save_mesh(textured_box(), tmp_path / "person.obj", inputs=[photo])
    assert photo.read_bytes() == before
    assert (tmp_path / "person.obj.png").is_file() and (tmp_path / "person.obj.mtl").is_file()
    assert "mtllib person.obj.mtl" in (tmp_path / "person.obj").read_text()


def test_unicode_obj_names_do_not_share_side_files(tmp_path):
    assert side_name(Path("bödy.obj")) != side_name(Path("bädy.obj"))
    assert side_name(Path("my body.obj")) == "my%20body.obj" != side_name(Path("my%20body.obj"))
    save_mesh(textured_box(), tmp_path / "bödy.obj")
    first = (tmp_path / "bödy.obj.png").read_bytes()
    save_mesh(textured_box().apply_scale(2), tmp_path / "bädy.obj")
    assert (tmp_path / "bödy.obj.png").read_bytes() == first
    assert len(list(tmp_path.glob("*.png"))) == 2
    back = trimesh.load(tmp_path / "bödy.obj", force="mesh", process=False)
    assert back.visual.material.image.size == (8, 8)


def test_output_that_would_replace_the_input_is_an_error(tmp_path):
    photo = tmp_path / "person.obj.png"  # the texture name of person.obj
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photo)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="replace the input"):
        save_mesh(textured_box(), tmp_path / "person.obj", inputs=[photo])
    assert snapshot(tmp_path) == before


def test_multi_file_output_is_all_or_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="Cannot write"):
        write_files({tmp_path / "a.png": b"1", tmp_path / "afile" / "b.png": b"2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_outputs_get_the_umask_mode(tmp_path):
    save_mesh(textured_box(), tmp_path / "m.obj")
    mask = os.umask(0)
    os.umask(mask)
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# ------------------------------------------------------------------------- the CLI, before any work

@pytest.mark.parametrize("faces", ["0", "1", "4", "-5"])
def test_cli_faces_out_of_range(photo, tmp_path, faces):
    proc = run("reconstruct", photo, "-o", tmp_path / "x.glb", "--faces", faces)
    one_line(proc, 2, "face_budget", "at least 100")
    assert not (tmp_path / "x.glb").exists()


@pytest.mark.parametrize("args,words", [
    (["--smoothing", "-1"], ["smoothing"]), (["--smoothing", "100000000"], ["smoothing", "200"]),
    (["--height", "nan"], ["subject_height", "finite"]), (["--faces", "many"], ["--faces", "invalid int"]),
])
def test_cli_numbers_checked(photo, tmp_path, args, words):
    one_line(run("reconstruct", photo, "-o", tmp_path / "x.glb", *args), 2, *words)


def test_cli_preview_bad_extension_before_the_mesh(photo, tmp_path):
    proc = run("reconstruct", photo, "-o", tmp_path / "x.glb", "--preview", tmp_path / "p.txt")
    one_line(proc, 2, "p.txt", ".png")
    assert sorted(tmp_path.iterdir()) == [photo]


def test_cli_unwritable_output_places(photo, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line(run("reconstruct", photo, "-o", tmp_path / "afile" / "x.glb"), 6, "afile")
    one_line(run("reconstruct", photo, "-o", tmp_path / "x.glb", "--preview", tmp_path / "afile" / "p.png"), 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "person.png"]


def test_cli_output_replacing_the_photo(photo, tmp_path):
    before = photo.read_bytes()
    one_line(run("reconstruct", photo, "-o", tmp_path / "x.glb", "--preview", photo), 6, "replace the input")
    assert photo.read_bytes() == before


def test_cli_folder_as_photo(tmp_path):
    one_line(run("reconstruct", tmp_path, "-o", tmp_path / "x.glb"), 2, "is a folder")


def test_cli_usage_error_is_one_line(tmp_path):
    one_line(run("reconstruct", tmp_path / "p.png", "--method", "magic"), 2, "--method", "magic")


def test_cli_model_is_a_folder(photo, tmp_path):
    (tmp_path / "models").mkdir()
    one_line(run("reconstruct", photo, "-o", tmp_path / "x.glb", "--model", tmp_path / "models"), 4, "folder")


# ------------------------------------------------------------------------- models

def _copy_model(stem: Path, dst: Path) -> Path:
    for ext in (".json", ".safetensors"):
        (dst / f"m{ext}").write_bytes(Path(str(stem) + ext).read_bytes())
    return dst / "m"


@pytest.mark.parametrize("inference", [{"iso_level": "0.5"}, {"iso_level": 2}, {"iso_level": True}, [0.5]])
def test_model_json_wrong_types(tiny_untrained, tmp_path, inference):
    m = _copy_model(tiny_untrained, tmp_path)
    doc = json.loads(m.with_suffix(".json").read_text())
    m.with_suffix(".json").write_text(json.dumps({**doc, "inference": inference}))
    with pytest.raises(ModelError, match="inference"):
        load_model(m)


def test_nan_weights_are_a_model_error(tiny_untrained, tmp_path, photo):
    from safetensors.torch import load_file, save_file

    from core.checkpoint import sha256_file

    m = _copy_model(tiny_untrained, tmp_path)
    wt = m.with_suffix(".safetensors")
    state = load_file(str(wt))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(wt))
    doc = json.loads(m.with_suffix(".json").read_text())
    m.with_suffix(".json").write_text(json.dumps({**doc, "weights_sha256": sha256_file(wt)}))
    with pytest.raises(ModelError, match="NaN"):
        load_model(m)
    one_line(run("reconstruct", photo, "-o", tmp_path / "x.glb", "--method", "vrn", "--model", m), 4, "NaN")


def test_info_flags_truncated_weights(tiny_untrained, tmp_path):
    m = _copy_model(tiny_untrained, tmp_path)
    wt = m.with_suffix(".safetensors")
    wt.write_bytes(wt.read_bytes()[:-100])
    [entry] = list_models([tmp_path])
    assert not entry.ok and "truncated" in entry.problem


# ------------------------------------------------------------------------- photos

def test_float_tiff_reads_as_its_picture(tmp_path):
    import cv2

    grey = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    Image.fromarray(grey, mode="F").save(tmp_path / "g.tif")
    assert abs(load_image(tmp_path / "g.tif").mean() - 127.5) < 2
    rgb = np.zeros((20, 10, 3), np.float32)
    rgb[..., 0] = 1.0  # red
    cv2.imwrite(str(tmp_path / "c.tif"), rgb[..., ::-1])
    r, g, b = load_image(tmp_path / "c.tif")[0, 0].tolist()
    assert r >= 250 and g <= 5 and b <= 5


def test_huge_photo_is_downscaled_without_a_warning(tmp_path, monkeypatch, recwarn):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.full((60, MAX_SIDE + 800, 3), 90, np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60 * (MAX_SIDE + 800) * 0.8)  # "huge" for PIL: it warns
    img = load_image(big)
    assert max(img.shape) == MAX_SIDE and img.shape[0] == round(60 * MAX_SIDE / (MAX_SIDE + 800))
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


# ------------------------------------------------------------------------- the Python API and the backend

@pytest.mark.parametrize("kw,name", [({"subject_height": "1.7"}, "subject_height"),
                                     ({"subject_height": None}, "subject_height"),
                                     ({"face_budget": 0}, "face_budget"), ({"face_budget": "100"}, "face_budget"),
                                     ({"smoothing": 2.5}, "smoothing")])
def test_api_raises_project_errors(kw, name):
    from core.reconstruct import reconstruct

    with pytest.raises(ArgumentError, match=name) as info:
        reconstruct(np.zeros((8, 8, 3), np.uint8), **kw)
    assert isinstance(info.value, (MonohumanError, InputError, ValueError))


@pytest.mark.parametrize("field,value", [("subject_height", "tall"), ("smoothing", 1.5), ("face_budget", "100"),
                                         ("rig", "yes"), ("device", 3), ("photo", 5), ("model_dirs", "/x"),
                                         ("init", "params.json"), ("keep_pose", -1.0)])
def test_backend_request_names_the_wrong_field(field, value):
    with pytest.raises(ArgumentError, match=field):
        validate_request({"photo": "p.jpg", "output": "o.npz", field: value})


def test_backend_refit_request_needs_the_fit_and_its_parameters():
    """A refit sends the fitted parameters ("init") and the rig's pose ("init_pose"); either without what it needs
    is named before any work."""
    with pytest.raises(ArgumentError, match="method 'fit', not 'vrn'"):
        validate_request({"photo": "p.jpg", "output": "o.npz", "method": "vrn", "init": {}})
    with pytest.raises(ArgumentError, match="init_pose needs init"):
        validate_request({"photo": "p.jpg", "output": "o.npz", "init_pose": {"names": []}})
    req = validate_request({"photo": "p.jpg", "output": "o.npz", "init": {"pose": []}, "keep_pose": 0.5})
    assert req["init"] == {"pose": []} and req["keep_pose"] == 0.5 and req["init_pose"] is None


def test_keep_pose_needs_init(photo, tmp_path):
    one_line(run("reconstruct", photo, "-o", tmp_path / "b.glb", "--keep-pose", "0.5"), 2, "--keep-pose", "--init")


def test_backend_request_defaults_and_aliases():
    req = validate_request({"photo": "p.jpg", "output": "o.npz", "device": "GPU", "extra": 1})
    assert req["device"] == "cuda" and req["subject_height"] == 1.70 and req["extra"] == 1


def test_lying_person_gets_a_warning_not_a_silent_wide_mesh():
    """Issue 16, case 8: the example photo turned on its side gave a 4.28 m-wide VRN mesh without a word."""
    from core.reconstruct import reconstruct

    rgb = np.ascontiguousarray(np.rot90(load_image(REPO / "examples" / "person.png")))
    result = reconstruct(rgb, method="vrn")
    assert any("wider than it is tall" in w for w in result.warnings), result.warnings
    assert any("lying down" in w for w in result.warnings)


def test_output_that_does_not_fit_leaves_nothing(tmp_path):
    """Issue 16, case 5 (full disk): the file-size limit (RLIMIT_FSIZE) makes the writes fail the way a full disk
    does, part-way through; the command says so in one line (exit 6) and leaves no file behind."""
    import resource
    import signal

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "core", "reconstruct", REPO / "examples" / "person.png", "-o",
                           out / "x.glb", "--preview", out / "x.png", "-q"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MONOHUMAN_DEBUG": ""}, preexec_fn=small_files)
    one_line(proc, 6, "x.")
    assert list(out.iterdir()) == []
