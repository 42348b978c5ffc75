"""`make bench`: run every benchmark on this machine and write their output into docs/BENCHMARKS.md.

Each benchmark prints markdown; this script only runs them one after another (never in parallel, so they
do not disturb each other's timings) and replaces the "make bench" section of the doc.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.evaluate import replace_section  # noqa: E402
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- make-bench:begin -->", "<!-- make-bench:end -->"
BENCHES = [
    ("Reconstruction pipeline and VRN variants", ["bench/bench_pipeline.py"]),
    ("The fitted body, photo by photo", ["bench/bench_fit.py"]),
    ("Marching cubes and surface post-processing", ["bench/bench_surface.py"]),
    ("Dataset generation with and without clothing", ["bench/bench_dataset.py"]),
    ("Voxelisation against trimesh.contains", ["bench/bench_voxelise.py", "--sample", "4000", "--repeat", "3"]),
    ("The Blender add-on in a headless script (warm backend)", ["bench/bench_addon.py"]),
]


def main() -> int:
    sections = [f"Last run: {time.strftime('%Y-%m-%d %H:%M')} (`make bench`).", ""]
    failed = 0
    for title, cmd in BENCHES:
        print(f"== {title}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
        print(proc.stdout, flush=True)
        if proc.returncode:
            failed += 1
            print(proc.stderr[-2000:], file=sys.stderr)
        sections += [f"### {title}", "", f"`python {' '.join(cmd)}`", "", proc.stdout.strip()
                     or f"failed: {proc.stderr.strip().splitlines()[-1:]}", ""]
    replace_section(DOC, BEGIN, END, sections, title="# Benchmarks")
    print(f"wrote {DOC.relative_to(REPO)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
