"""The body guide a training sample gets: its true body, made as wrong as the fit makes bodies.

Why: a body-guided network (`core.networks.vrn` variant "body-guided") sees the fitted body at inference. Fed
the true body it would learn to copy it; fed the true body perturbed by the fit's measured noise
(`train.fit_noise`, shipped as models/fit-noise.json) it learns to correct it.

Each sample's true body in the fit's parameters (`train.fit_noise.truth_params`, 0.7 s a sample) is measured
once per dataset folder and kept beside its manifest in `body_params.jsonl` (rewritten atomically every few
samples, so a killed job loses little); each draw is a function of (seed, epoch, index) like the rest of the
augmentation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from core.bodyfit import FitParams, pose_body
from core.errors import DataError
from core.files import write_atomic
from core.guide import body_guide

BODY_PARAMS_FILE = "body_params.jsonl"
NOISE_PATH = Path(__file__).resolve().parents[1] / "models" / "fit-noise.json"
SAVE_EVERY = 20


def read_noise(path=None):
    """The fit's noise model (`train.fit_noise.NoiseModel`) from a JSON written by train.fit_noise."""
    from train.fit_noise import NoiseModel

    path = Path(path) if path else NOISE_PATH
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"The fit noise model {path} cannot be read ({err}).",
                        "Measure one with `python -m train.fit_noise --data DIR --out PATH`.") from None
    return NoiseModel.from_json(doc.get("noise", doc))


def body_params(data_dir, files: list[str], body) -> dict[str, FitParams]:
    """The true body of each sample file of `data_dir` in the fit's parameters, measured where missing."""
    from tqdm import tqdm

    from train.fit_noise import truth_params
    from train.samples import read_sample

    path = Path(data_dir) / BODY_PARAMS_FILE
    known = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            known[row["file"]] = row["params"]
    missing = [f for f in files if f not in known]
    for n, name in enumerate(tqdm(missing, desc=f"true bodies of {Path(data_dir).name}", file=sys.stderr,
                                  disable=not missing), 1):
        sample = read_sample(Path(data_dir) / name)
        if sample["meta"].get("source") != "anny":
            raise DataError(f"{name} is not an Anny body: a body-guided network needs the sample's true body.",
                            "Train it on Anny datasets (train.make_dataset without --scans).")
        known[name] = truth_params(sample, body, steps=80).to_json()
        if n % SAVE_EVERY == 0 or n == len(missing):
            write_atomic(path, "".join(json.dumps({"file": k, "params": v}) + "\n" for k, v in known.items()))
    return {f: FitParams.from_json(known[f]) for f in files}


class GuideMaker:
    """Draws the guide of a sample: its true body perturbed by the noise model, posed, as `core.guide.body_guide`
    planes (depth-anchored as inference anchors the fit)."""

    def __init__(self, rows: list[dict], noise_path=None, least_noise: float = 1.0):
        from core.body_model import load_body_model
        from core.template import load_template

        self.body = load_body_model()
        self.faces = load_template().faces
        self.noise, self.least_noise = read_noise(noise_path), least_noise
        self.params: dict[str, FitParams] = {}
        by_dir: dict[str, list[str]] = {}
        for row in rows:
            data_dir = Path(row["path"]).parents[len(Path(row["file"]).parts) - 1]
            by_dir.setdefault(str(data_dir), []).append(row["file"])
        for data_dir, files in by_dir.items():
            for name, params in body_params(data_dir, files, self.body).items():
                self.params[str(Path(data_dir) / name)] = params

    def draw(self, path: str, rng: np.random.Generator, volume_shape, input_hw) -> np.ndarray:
        from train.fit_noise import perturb

        # each draw as wrong as the fit times U(least_noise, 1): with less than 1 the network also meets good guides
        amount = 1.0 if self.least_noise >= 1.0 else rng.uniform(self.least_noise, 1.0)
        params = perturb(self.params[str(path)], self.noise, rng, self.body, amount)
        vertices = pose_body(params, volume_shape, self.body).vertices
        return body_guide(vertices, self.faces, volume_shape, input_hw)
