"""Mediapipe on a dataset's renders, beside the true points: what the pose lifter meets at inference.

    python -m train.detections --data DIR [DIR ...] --split train --out ~/.cache/monohuman/data/dets-NAME.npz

The lifter learns from the sampler's poses with Gaussian 2D noise (`train.fit_lifter`), but mediapipe's
errors are not Gaussian: it shortens foreshortened limbs, drifts under clothing and now and then swaps a
pair of limbs. On the held-out renders its landmarks gave the lifter a 72 mm depth error against 53 mm on its
own validation views (docs/RESULTS.md). This file is the real thing: per render, seen as the fit's evaluation
and a photo see it (`detect_render`: a 128 px crop upscaled 4x), mediapipe's 33 landmarks in the volume frame's
pixels with their visibilities and world landmarks, the sample's 33 true Anny points
(`core.correspondence`) in the same frame (x, y pixels, z voxels away from the camera), and the size of that
frame's unit in mm.

`train.fit_lifter --detections FILE` trains on them beside the sampler's poses. Renders where mediapipe finds
nobody are listed, not kept. The file is rewritten atomically every `SAVE_EVERY` renders, and the same
command again continues a stopped run.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from core.errors import DataError, NoPersonError, run_command
from core.files import write_atomic
from core.validate import Parser

DETECTIONS_FORMAT = "monohuman-detections"
PHOTO_PX = 512  # a render is shown to mediapipe at about this height, like a photo (128 px renders upscaled 4x)
SAVE_EVERY = 100
FIELDS = ("points", "visibility", "world", "truth", "mm_per_unit")


def detect_render(sample: dict):
    """(mediapipe's detection, the crop box in its pixels) of a sample's render, upscaled by a whole factor to
    about `PHOTO_PX` high as a photo of a person would be; raises NoPersonError like `core.detect.detect_person`."""
    import cv2

    from core.crop import CropBox
    from core.detect import detect_person

    h, w = sample["rgb"].shape[:2]
    up = upscale(h)
    rgb = sample["rgb"] if up == 1 else cv2.resize(sample["rgb"], None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
    return detect_person(rgb), CropBox(0.0, 0.0, float(w * up), float(h * up))


def upscale(height: int) -> int:
    return max(1, round(PHOTO_PX / height))


def true_points(vertices_vox: np.ndarray, body=None) -> np.ndarray:
    """(33, 3) the Anny point of each mediapipe landmark on a body in Anny topology (NaN where none corresponds,
    the knuckles, which need bone heads)."""
    from core.body_model import load_body_model

    body = body or load_body_model()
    on_vertices, on_heads, _ = (m.numpy() for m in body.keypoint_matrices(np.arange(body.n_vertices)))  # 3 ms
    out = on_vertices @ np.asarray(vertices_vox, np.float64)
    out[np.abs(on_heads).sum(1) > 0] = np.nan
    return out


def read_detections(paths) -> dict:
    """Every file's arrays, concatenated, with a message that names a missing or foreign file."""
    parts = []
    for path in paths:
        fix = f"Write it with `python -m train.detections --data DATASET --out {path}`."
        try:
            with np.load(path, allow_pickle=False) as f:
                info = json.loads(str(f["info"]))
                got = {k: f[k] for k in (*FIELDS, "files")}
        except FileNotFoundError:
            raise DataError(f"Detection file {path} not found.", fix) from None
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"Detection file {path} is not readable ({e}).", fix) from None
        if info.get("format") != DETECTIONS_FORMAT or got["points"].shape[1:] != (33, 2):
            raise DataError(f"{path} is not a detection file of this project.", fix)
        parts.append(got)
    if not parts or not sum(len(p["points"]) for p in parts):
        raise DataError("The detection files hold no detections.", "Make them from a dataset with renders of people.")
    return {k: np.concatenate([p[k] for p in parts]) for k in (*FIELDS, "files")}


def _write(path: Path, rows: list[dict], info: dict) -> None:
    buf = io.BytesIO()
    empty = {"points": (0, 33, 2), "visibility": (0, 33), "world": (0, 33, 3), "truth": (0, 33, 3), "mm_per_unit": (0,)}
    arrays = {k: np.stack([r[k] for r in rows]).astype(np.float32) if rows else np.zeros(empty[k], np.float32)
              for k in FIELDS}
    np.savez_compressed(buf, **arrays, files=np.array([r["file"] for r in rows], dtype=str),
                        info=np.array(json.dumps(info)))
    write_atomic(path, buf.getvalue())


def make_detections(data_dirs, out, split: str = "train", limit: int = 0) -> dict:
    """Detect every render of `split` in the dataset folders (the first `limit`, 0 = all) into `out`."""
    from tqdm import tqdm

    from core.body_model import load_body_model
    from train.dataset import read_manifest
    from train.samples import read_sample

    out = Path(out).expanduser()
    rows_in = [(str(Path(d).expanduser()), r) for d in data_dirs for r in read_manifest(d) if r.get("split") == split]
    rows_in = rows_in[: limit or None]
    info = {"format": DETECTIONS_FORMAT, "data": [str(Path(d).expanduser()) for d in data_dirs], "split": split,
            "photo_px": PHOTO_PX, "no_person": []}
    rows, done = [], set()
    if out.exists():  # continue a stopped run of the same command
        old = read_detections([out])
        with np.load(out, allow_pickle=False) as f:
            info["no_person"] = json.loads(str(f["info"])).get("no_person", [])
        rows = [{**{k: old[k][i] for k in FIELDS}, "file": str(old["files"][i])} for i in range(len(old["files"]))]
        done = {r["file"] for r in rows} | set(info["no_person"])
    body = load_body_model()
    todo = [(d, r) for d, r in rows_in if f"{d}/{r['file']}" not in done]
    for n, (d, row) in enumerate(tqdm(todo, desc="detections", file=sys.stderr), 1):
        sample = read_sample(row["path"], volume=False)
        name = f"{d}/{row['file']}"
        try:
            det, box = detect_render(sample)
        except NoPersonError:
            info["no_person"].append(name)
            continue
        h, w = sample["rgb"].shape[:2]
        shape = tuple(int(v) for v in sample["volume_shape"])
        scale = shape[1] / h  # render pixels -> volume pixels (the volume frame spans the crop)
        world = det.world33 if det.world33 is not None else np.full((33, 3), np.nan)
        rows.append({"points": box.to_crop(det.landmarks33[:, :2], (h, w)) * scale,
                     "visibility": det.landmarks33[:, 3], "world": world,
                     "truth": true_points(sample["vertices_vox"], body),
                     "mm_per_unit": np.float32(1000.0 / float(sample["meta"]["px_per_metre"])), "file": name})
        if n % SAVE_EVERY == 0:
            _write(out, rows, info)
    _write(out, rows, info)
    return {"detections": len(rows), "no_person": len(info["no_person"]), "out": str(out)}


def main(argv=None) -> int:
    parser = Parser(prog="python -m train.detections", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders (train.make_dataset)")
    parser.add_argument("--out", required=True, help="the detection file to write (.npz)")
    parser.add_argument("--split", default="train", help="which split's renders (default train)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many renders (default all)")
    args = parser.parse_args(argv)

    def run() -> int:
        got = make_detections(args.data, args.out, args.split, args.limit)
        print(f"{got['detections']} detections ({got['no_person']} renders without a person) in {got['out']}",
              file=sys.stderr)
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
