"""The off-the-shelf part split measured against the rendered part labels (docs/HMNET.md, "Part images").

    python -m train.evaluate_parts --data /work/data/anny128-a --count 20 --threads 1

Prints the JSON of `evaluate_parts`: the part mIoU of `core.parts.parts_from_landmarks` on the samples'
detected landmarks, and of mediapipe run on the crop itself (what HumanMeshNet's "detected" inputs see).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from core.errors import DataError, run_command
from core.parts import parts_from_landmarks
from core.validate import Parser, number
from train.dataset import read_manifest
from train.samples import read_sample


def evaluate_parts(data_dirs, count: int = 20, split: str = "test") -> dict:
    """Part mIoU (14 body parts, intersections and unions summed over the samples) of the off-the-shelf split
    against the rendered labels, on the first `count` samples of `split` whose render mediapipe detected:

    - "sample_landmarks": `parts_from_landmarks` on the rendered mask and the sample's detected landmarks
      (mediapipe on the full render, mapped into the crop): the partition rule alone;
    - "mediapipe_on_crop": `core.detect.detect_person` run on the 128-px crop itself, its mask and 33
      landmarks through `parts_from_mediapipe33`: what inference does, at the crop's resolution.
    """
    from core.detect import detect_person
    from core.errors import NoPersonError
    from core.parts import PART_NAMES, part_iou, parts_from_mediapipe33

    rows = [r for d in data_dirs for r in read_manifest(d) if r.get("split") == split and r.get("detected")]
    rows = rows[:count]
    if not rows:
        raise DataError(f"No {split} sample that mediapipe detected in {', '.join(map(str, data_dirs))}.",
                        "Pass --data folders from train.make_dataset that have a held-out split.")
    acc = {"sample_landmarks": [0, 0], "mediapipe_on_crop": [0, 0]}
    missed = 0
    for r in rows:
        s = read_sample(r["path"], volume=False)
        pred = parts_from_landmarks(s["mask"] > 127, s["landmarks16_detected"])
        i, u = part_iou(pred, s["parts"])
        acc["sample_landmarks"][0] += i
        acc["sample_landmarks"][1] += u
        try:
            det = detect_person(s["rgb"])
            pred = parts_from_mediapipe33(det.mask > 0.5, det.landmarks33)
        except NoPersonError:
            missed += 1
            pred = np.zeros_like(s["parts"])
        i, u = part_iou(pred, s["parts"])
        acc["mediapipe_on_crop"][0] += i
        acc["mediapipe_on_crop"][1] += u
    out = {"samples": len(rows), "split": split, "crop_detection_missed": missed}
    for name, (i, u) in acc.items():
        iou = np.where(u > 0, i / np.maximum(u, 1), np.nan)
        out[name] = {"mIoU": round(float(np.nanmean(iou)), 4),
                     "per_part": {PART_NAMES[k + 1]: round(float(v), 3) for k, v in enumerate(iou)}}
    return out


def main(argv=None) -> int:
    parser = Parser(prog="python -m train.evaluate_parts", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders from train.make_dataset")
    parser.add_argument("--count", type=int, default=20, help="held-out samples to measure (the first ones)")
    parser.add_argument("--split", default="test", help="the split to measure (default: test)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    args = parser.parse_args(argv)

    def body() -> int:
        number("--count", args.count, integer=True, lo=1)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(evaluate_parts(args.data, args.count, args.split), indent=1))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
