"""train.make_dataset end to end: real bpy (Cycles, CPU), real anny, tiny sizes (64 px, 64^3, 4 spp)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--count", "2", "--size", "64", "--volume", "64x64x64", "--samples", "4", "--seed", "5",
        "--split-every", "2", "--threads", "2"]


def make(out, *extra, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "train.make_dataset", "--out", str(out), *TINY, *extra],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "a"
    make(out, "--preview")
    return out


def samples(out):
    from train.samples import read_sample
    return [read_sample(p) for p in sorted((Path(out) / "samples").glob("*.npz"))]


def test_files_manifest_card(dataset):
    names = sorted(p.name for p in (dataset / "samples").iterdir())
    assert names == ["0000000.npz", "0000001.npz"]
    lines = [json.loads(ln) for ln in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert [ln["index"] for ln in lines] == [0, 1]
    assert [ln["split"] for ln in lines] == ["train", "test"]
    card = json.loads((dataset / "card.json").read_text())
    assert card["count"] == 2 and card["counts_by_split"] == {"train": 1, "test": 1}
    assert card["seed"] == 5 and card["volume_shape"] == [64, 64, 64] and card["input_hw"] == [64, 64]
    assert card["split"]["K"] == 2 and len(card["joint_names"]) == 104
    assert (dataset / "preview.png").stat().st_size > 0
    for s in samples(dataset):
        assert s["rgb"].shape == (64, 64, 3) and s["rgb"].dtype == np.uint8
        assert s["mask"].shape == (64, 64) and set(np.unique(s["mask"])) <= {0, 255}
        assert s["parts"].shape == (64, 64) and s["parts"].max() > 0
        assert np.all((s["parts"] > 0) == (s["mask"] > 0))
        assert s["landmarks16"].shape == (16, 3) and np.all(np.isfinite(s["landmarks16"]))
        assert s["landmarks16_detected"].shape == (16, 3)
        if s["meta"]["detected"]:  # mediapipe's own mask, what inference feeds the network
            assert s["mask_detected"].shape == (64, 64) and s["mask_detected"].dtype == np.uint8
        assert s["volume"].shape == (64, 64, 64) and s["volume"].any()
        assert s["vertices_vox"].shape == (13718, 3) and s["joints_cam"].shape == (104, 3)
        assert s["meta"]["crop_box"]["width"] > 0 and s["meta"]["px_per_metre"] > 0
        # landmarks lie on the person
        lm = s["landmarks16"]
        inside = (lm[:, 0] >= 0) & (lm[:, 0] < 64) & (lm[:, 1] >= 0) & (lm[:, 1] < 64)
        on = s["mask"][lm[inside, 1].astype(int), lm[inside, 0].astype(int)] > 0
        assert on.mean() >= 0.75


def test_volume_front_matches_mask(dataset):
    for s in samples(dataset):
        front = s["volume"].any(axis=0)
        mask = s["mask"] > 0
        iou = np.logical_and(front, mask).sum() / np.logical_or(front, mask).sum()
        assert iou >= 0.97, (s["meta"]["index"], iou)


def test_clothed_sample_target_is_body_or_garments(dataset):
    """Seed 5: sample 0 wears a dress, long hair and shoes, sample 1 is tight (--clothing 0.8 default)."""
    card = json.loads((dataset / "card.json").read_text())
    assert card["clothing_kinds"] == {"dress": 1, "hair": 1, "shoes": 1} and card["clothed"] == 1
    dressed, tight = samples(dataset)
    assert [g["kind"] for g in dressed["meta"]["clothing"]] == ["dress", "hair", "shoes"]
    body, target = dressed["volume_body"], dressed["volume"]
    assert body.shape == target.shape and body.any()
    assert not np.any(body & ~target)                  # no body voxel outside the union
    assert target.sum() > 1.15 * body.sum()            # a dress and long hair hold volume the body has not
    assert tight["meta"]["clothing"] == [] and "volume_body" not in tight


def test_clothing_off_leaves_the_rest_of_the_sample_alone(dataset, tmp_path):
    """Clothing draws from its own random stream: without it, the tight sample is the same sample, and the
    dressed one has the same body, scene and camera (only the crop follows the now smaller silhouette)."""
    out = tmp_path / "naked"
    make(out, "--clothing", "0")
    card = json.loads((out / "card.json").read_text())
    assert card["clothing_kinds"] == {} and card["clothed"] == 0
    (a0, a1), (b0, b1) = samples(dataset), samples(out)
    assert "clothing" not in b0["meta"] and "volume_body" not in b0
    assert a0["meta"]["scene"] == b0["meta"]["scene"] and a0["meta"]["body"] == b0["meta"]["body"]
    np.testing.assert_array_equal(a0["vertices_cam"], b0["vertices_cam"])
    for key in ("rgb", "mask", "parts", "volume", "landmarks16", "vertices_vox"):
        np.testing.assert_array_equal(a1[key], b1[key])
    assert {k: v for k, v in a1["meta"].items() if k != "clothing"} == b1["meta"]


def test_a_folder_made_before_clothing_is_not_mixed_with_dressed_samples(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    old = {"seed": 5, "size": 64, "volume": [64, 64, 64], "engine": "cycles", "samples": 4, "denoise": False,
           "split_every": 2, "source": "anny", "scans": None, "backgrounds": None, "no_detect": False}
    (out / "settings.json").write_text(json.dumps(old))
    r = make(out, check=False)
    assert r.returncode != 0 and "--clothing 0.8 (made with 0.0)" in r.stderr, r.stderr[-800:]
    assert "--clothing-kinds skirt,dress" in r.stderr and "(made with none)" in r.stderr


@pytest.mark.parametrize("flag, value, words", [("--clothing-kinds", "skirt,cape", ["cape", "skirt, dress"]),
                                                ("--clothing", "1.5", ["--clothing"])])
def test_bad_clothing_flags_are_named(tmp_path, flag, value, words):
    r = make(tmp_path / "bad", flag, value, check=False)
    assert r.returncode != 0 and all(w in r.stderr for w in words), r.stderr[-800:]
    assert not (tmp_path / "bad" / "samples").exists()


def test_resume_gives_the_same_dataset(dataset, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(dataset, b)
    (b / "samples" / "0000001.npz").unlink()                                   # killed before sample 1 landed
    (b / "samples" / ".0000001.abc123.tmp").write_bytes(b"PK\x03\x04 half a zip")  # ... while writing it
    (b / "manifest.jsonl").unlink()
    make(b)
    assert not list((b / "samples").glob(".*.tmp"))
    assert (b / "manifest.jsonl").read_text() == (dataset / "manifest.jsonl").read_text()
    for sa, sb in zip(samples(dataset), samples(b)):
        np.testing.assert_array_equal(sa["volume"], sb["volume"])
        np.testing.assert_array_equal(sa["landmarks16"], sb["landmarks16"])
        np.testing.assert_array_equal(sa["mask"], sb["mask"])
        np.testing.assert_array_equal(sa["vertices_cam"], sb["vertices_cam"])
        assert sa["meta"] == sb["meta"]
        # Cycles on CPU with a fixed seed is deterministic: the RGB is bit-identical
        np.testing.assert_array_equal(sa["rgb"], sb["rgb"])


def test_real_kill_then_rerun_gives_the_same_dataset(dataset, tmp_path):
    """SIGKILL the generator as soon as its first sample lands, run it again: same dataset as uninterrupted."""
    import signal
    import time

    c = tmp_path / "c"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "train.make_dataset", "--out", str(c), *TINY], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (c / "samples" / "0000000.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    make(c)
    assert (c / "manifest.jsonl").read_text() == (dataset / "manifest.jsonl").read_text()
    for sa, sc in zip(samples(dataset), samples(c)):
        np.testing.assert_array_equal(sa["volume"], sc["volume"])
        np.testing.assert_array_equal(sa["rgb"], sc["rgb"])
        assert sa["meta"] == sc["meta"]


def test_broken_scan_is_reported_and_skipped(tmp_path):
    import trimesh
    from train import bodies

    scans = tmp_path / "scans"
    scans.mkdir()
    body = bodies.make_anny_body(np.random.default_rng(1), pose_kind="standing")
    trimesh.Trimesh(body.vertices, body.faces, process=False).export(scans / "good.obj")
    (scans / "broken.obj").write_text("v 0 0 0\nthis is not an obj file\nf 1 2 9\n")
    (scans / "empty.ply").write_bytes(b"")
    out = tmp_path / "scan_ds"
    r = make(out, "--scans", str(scans), "--no-detect")
    assert "broken.obj" in r.stderr and "empty.ply" in r.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["count"] == 2 and card["counts_by_source"] == {"scan": 2}
    assert {s["file"] for s in card["skipped_scans"]} == {"broken.obj", "empty.ply"}
    for s in samples(out):
        front = s["volume"].any(axis=0)
        mask = s["mask"] > 0
        assert np.logical_and(front, mask).sum() / np.logical_or(front, mask).sum() >= 0.97
        assert np.all(np.isnan(s["landmarks16"]))


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc; Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_their_parent(tmp_path):
    """Issue 16, case 7: SIGKILL the command while its Blender workers render; they stop instead of writing on."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "train.make_dataset", "--out", str(tmp_path / "d"), "--count", "400",
                             "--size", "64", "--volume", "32x64x64", "--samples", "4", "--seed", "5", "--workers", "2",
                             "--progress", "none"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = _children(proc.pid)
    assert len(workers) == 2, "the command did not start its two workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # 400 samples keep a worker busy for minutes; it checks every second
    try:
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "workers kept running after their parent was killed"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


# The geometry of a fixed-seed unclothed dataset, recorded from the code before the #14 refactor (one
# rasteriser, one voxeliser enumeration, atomic writes) and the #12 garments (clothing off must change
# nothing): any change to how bodies are posed, projected, voxelised or labelled changes these.
RECORDED_GEOMETRY = {0: "b1608b4e80d4e5c1dd5a8de17b3efbe2e45beedd5b571b94621b7fb6b01bb8c1",
                     1: "ad730c800ecae74fbce3851f59fcda1d08dfb938cdb74732e1396b564638d1ff"}
GEOMETRY_KEYS = ("volume_bits", "vertices_vox", "joints_vox", "mask", "parts", "landmarks16")


def test_fixed_seed_geometry_is_what_it_was(tmp_path):
    import hashlib

    out = tmp_path / "fixed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "train.make_dataset", "--out", str(out), "--count", "2", "--size",
                        "64", "--volume", "32x32x32", "--seed", "5", "--workers", "1", "--threads", "1",
                        "--samples", "4", "--clothing", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for index, recorded in RECORDED_GEOMETRY.items():
        arrays = np.load(out / "samples" / f"{index:07d}.npz")
        digest = hashlib.sha256()
        for key in GEOMETRY_KEYS:
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
        assert digest.hexdigest() == recorded, f"sample {index}: the geometry of a fixed-seed sample changed"
