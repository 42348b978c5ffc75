"""Models on disk: round trip, resolution by name, and a clear ModelError for every kind of damage."""

import json
import os

import pytest
import torch

from core import checkpoint
from core.checkpoint import load_model, save_model
from core.models import list_models
from core.errors import ModelError
from core.networks import build_vrn, config_for

torch.set_num_threads(1)


def _net(name="multistack", **kw):
    torch.manual_seed(0)
    cfg = config_for(name, features=16, volume_shape=(12, 32, 16), **kw)
    net = build_vrn(cfg)
    # move BatchNorm statistics off their defaults so the round trip checks them too
    net.train()
    with torch.no_grad():
        net(torch.randn(2, cfg.in_channels, *cfg.input_size))
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return _net()


@pytest.fixture
def saved(tmp_path, net):
    js = save_model(tmp_path / "tiny", net, {"training": {"epochs": 0}, "metrics": {"val_iou": 0.5}},
                    dtype=torch.float32)
    return js, tmp_path / "tiny.safetensors"


def _x(cfg):
    return torch.randn(1, cfg.in_channels, *cfg.input_size, generator=torch.Generator().manual_seed(1))


def test_round_trip_fp32_identical(saved, net):
    js, wt = saved
    doc = json.loads(js.read_text())
    assert doc["format"] == "monohuman-model" and doc["format_version"] == 1 and doc["method"] == "vrn"
    assert doc["name"] == "tiny" and doc["config"]["variant"] == "multistack" and len(doc["weights_sha256"]) == 64
    assert doc["metrics"] == {"val_iou": 0.5} and doc["training"] == {"epochs": 0}
    for ref in (js, wt, js.with_suffix("")):
        m = load_model(ref)
        assert m.name == "tiny" and m.path == js and m.config == net.config and not m.network.training
        with torch.no_grad():
            assert torch.equal(m.network(_x(m.config))[-1], net(_x(net.config))[-1])
    assert not list(js.parent.glob("*.tmp"))


def test_round_trip_fp16_and_conv3d(tmp_path):
    net = _net("conv3d")
    save_model(tmp_path / "c3", net, {}, dtype=torch.float16)
    m = load_model(tmp_path / "c3.json")
    assert m.config == net.config
    assert all(p.dtype == torch.float32 for p in m.network.parameters())
    with torch.no_grad():
        a, b = m.network(_x(m.config))[-1], net(_x(net.config))[-1]
    assert torch.allclose(a, b, atol=0.05, rtol=0.01)


def test_bare_name_search_and_list(tmp_path, saved, monkeypatch):
    js, _ = saved
    assert load_model("tiny", search_dirs=[tmp_path]).path == js
    monkeypatch.setenv("MONOHUMAN_MODELS_DIR", str(tmp_path))
    assert load_model("tiny").path == js
    with pytest.raises(ModelError, match="No model named 'nope'.*available: .*tiny"):
        load_model("nope")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "broken.safetensors").write_bytes(b"x")
    entries = {e.name: e for e in list_models([tmp_path])}
    assert entries["tiny"].ok and entries["tiny"].variant == "multistack"
    assert entries["tiny"].method == "vrn" and entries["tiny"].metrics == {"val_iou": 0.5}
    assert not entries["broken"].ok and "not valid JSON" in entries["broken"].problem
    assert {e.name for e in list_models([tmp_path], method="hmnet")} == {"broken"}  # kept: it says why


def _edit_json(js, **changes):
    doc = json.loads(js.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    js.write_text(json.dumps(doc))


def test_missing_files(saved):
    js, wt = saved
    wt.unlink()
    with pytest.raises(ModelError, match=r"weights .*tiny\.safetensors are missing"):
        load_model(js)
    js.unlink()
    with pytest.raises(ModelError, match="No model named"):
        load_model("tiny", search_dirs=[js.parent])
    with pytest.raises(ModelError, match=r"config .*tiny\.json is missing"):
        load_model(js)


def test_missing_json_only(saved):
    js, wt = saved
    js.unlink()
    with pytest.raises(ModelError, match=r"tiny\.json is missing \(weights tiny\.safetensors are there\)"):
        load_model(wt)


def test_truncated_weights(saved):
    js, wt = saved
    data = wt.read_bytes()
    wt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or altered"):
        load_model(js)


def test_altered_byte(saved):
    js, wt = saved
    data = bytearray(wt.read_bytes())
    data[-10] ^= 0xFF
    wt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="truncated or altered"):
        load_model(js)


def test_bad_json(saved):
    js, _ = saved
    js.write_text(js.read_text()[:-20])
    with pytest.raises(ModelError, match=r"tiny\.json is not valid JSON"):
        load_model(js)


@pytest.mark.parametrize("edit, message", [
    (dict(format="something-else"), "not a Monohuman model"),
    (dict(format_version=7), "format_version 7"),
    (dict(method="nerf"), "unknown method 'nerf'"),
    (dict(config={"variant": "vrn-huge"}), "unknown VRN variant 'vrn-huge'"),
    (dict(config={"dropout": 0.5}), "unknown VRN config keys"),
    (dict(weights_sha256=None), "no weights_sha256"),
])
def test_bad_tags(saved, edit, message):
    """Each wrong field is named (a config edit changes one key of the saved config)."""
    js, _ = saved
    if "config" in edit:
        edit = {"config": {**json.loads(js.read_text())["config"], **edit["config"]}}
    _edit_json(js, **edit)
    with pytest.raises(ModelError, match=message):
        load_model(js)


def test_unreadable_safetensors_header(saved):
    js, wt = saved
    wt.write_bytes(b"\xff" * 64)  # not safetensors, but the JSON's sha256 says it is the right file
    _edit_json(js, weights_sha256=checkpoint.sha256_file(wt))
    with pytest.raises(ModelError, match="header unreadable"):
        load_model(js)


def test_wrong_shapes_and_keys(tmp_path, saved):
    js, wt = saved
    doc = json.loads(js.read_text())
    # config says features=32, weights were trained with 16: shape mismatch
    _edit_json(js, config={**doc["config"], "features": 32})
    with pytest.raises(ModelError, match=r"do not match the config .*wrong shape"):
        load_model(js)
    # weights of a 2-stack network under a 4-stack config: missing keys
    small = _net("vrn-guided")
    save_model(tmp_path / "g", small, {})
    gdoc = json.loads((tmp_path / "g.json").read_text())
    _edit_json(tmp_path / "g.json", config={**gdoc["config"], "stacks": 3})
    with pytest.raises(ModelError, match=r"\d+ missing: .*stacks\.2\..*; \d+ unexpected: heads\.1\."):
        load_model(tmp_path / "g.json")


def test_save_is_atomic_and_rejects_reserved(tmp_path, net, monkeypatch):
    with pytest.raises(ValueError, match="may not set"):
        save_model(tmp_path / "x", net, {"config": {}})
    save_model(tmp_path / "x", net, {})
    before = (tmp_path / "x.json").read_bytes()

    import errno

    from core import files
    from core.errors import MonohumanError

    real_fsync, calls = files.os.fsync, []

    def full_on_the_json(fd):  # the weights are written, the disk fills up while writing the JSON
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_on_the_json)
    with pytest.raises(MonohumanError, match="space"):
        save_model(tmp_path / "x", net, {"metrics": {"iou": 1}})
    assert (tmp_path / "x.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.json", "x.safetensors"]


def test_model_lookup_and_registry_need_no_torch_and_have_no_cycle():
    """core.models and core.registry (what the add-on's main thread imports) pull in no torch; each network
    module imports on its own (no network module imports the loader any more)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; import core.models, core.registry; assert 'torch' not in sys.modules, 'torch'; "
            "entries = core.models.list_models(deep=False); assert {'vrn-default', 'hmnet-default'} <= "
            "{e.name for e in entries}, entries; import core.networks.hmnet; "
            "assert 'core.checkpoint' not in sys.modules, 'cycle'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_inference_reads_a_model_once_per_file_version(tmp_path):
    """core.reconstruct keeps loaded models (a warm add-on backend does not read the weights per photo); a model
    file written again is read afresh."""
    import shutil

    from core.models import find_model, model_files
    from core.reconstruct import _load_once

    src = find_model("pose-lifter")
    for path in src:
        shutil.copy(path, tmp_path / path.name)
    files = model_files(tmp_path / "pose-lifter")
    first = _load_once(files, "cpu")
    assert _load_once(files, "cpu") is first
    st = files.weights.stat()
    os.utime(files.weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = _load_once(files, "cpu")
    assert again is not first and again.name == first.name
