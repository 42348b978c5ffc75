"""Render a photo-like PNG of a clothed, standing Anny person (tests, `make demo`).

    python -m train.render_photo --out examples/person.png --size 512 --seed 7 [--samples 64] [--check]

--check runs core.detect on the result and fails when mediapipe does not find the person.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.render_photo")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--check", action="store_true", help="check that mediapipe detects the person")
    a = p.parse_args(argv)
    os.environ.setdefault("ANNY_CACHE_DIR", os.path.expanduser("~/.cache/monohuman/anny"))
    from train.render import render_person_photo

    r = render_person_photo(a.out, size=a.size, seed=a.seed, samples=a.samples)
    print(f"wrote {a.out}")
    if a.check:
        import numpy as np
        from core.detect import detect_person

        det = detect_person(r["rgb"], name=a.out)
        err = np.nanmedian(np.linalg.norm(det.landmarks16[:, :2] - r["landmarks16"][:, :2], axis=1))
        print(f"mediapipe found the person; median landmark distance {err:.1f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
