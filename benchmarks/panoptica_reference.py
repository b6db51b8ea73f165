"""Lesion-wise reference numbers from panoptica (BrainLesion/panoptica), the library the field uses for
instance-wise segmentation metrics, for tests/test_instances.py to check autoseg.instances against.

    .venv/bin/python benchmarks/panoptica_reference.py [--venv /tmp/autoseg-panoptica-venv]

panoptica pins numpy < 2.3 and pulls pandas, plotly and scikit-image, so it lives in its own virtual
environment under /tmp, created here on first use (never a dependency of autoseg). Writes
plans/reference/panoptica/cases.npz (synthetic prediction/reference pairs: the hand-counted pair of the
tests and random blob volumes with touching, split, merged, missed and spurious lesions) and
plans/reference/panoptica/metrics.json (panoptica's TP, FP, FN, precision, recall, RQ, SQ, lesion-wise Dice
(sq_dsc) and PQ per case, with its version), from semantic masks, connected components (cc3d, 26-connectivity
in 3D) and naive threshold matching at IoU 0.5, its defaults.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "plans" / "reference" / "panoptica"
PANOPTICA = "panoptica==2.1.7"
RUN = r'''
import json, sys
import numpy as np
import panoptica
from panoptica import InputType, Panoptica_Evaluator, NaiveThresholdMatching, ConnectedComponentsInstanceApproximator
cases = np.load(sys.argv[1])
evaluator = Panoptica_Evaluator(expected_input=InputType.SEMANTIC,
                                instance_approximator=ConnectedComponentsInstanceApproximator(),
                                instance_matcher=NaiveThresholdMatching())
out = {"panoptica": getattr(panoptica, "__version__", "2.1.7"), "cases": {}}
names = sorted({k.rsplit("_", 1)[0] for k in cases.files})
for name in names:
    result = evaluator.evaluate(cases[name + "_pred"].astype(np.uint8), cases[name + "_ref"].astype(np.uint8),
                                verbose=False)["ungrouped"]
    get = lambda key: float(getattr(result, key))
    out["cases"][name] = {"tp": int(result.tp), "fp": int(result.fp), "fn": int(result.fn),
                          "precision": get("prec"), "recall": get("rec"), "rq": get("rq"), "sq": get("sq"),
                          "sq_dsc": get("sq_dsc"), "pq": get("pq")}
open(sys.argv[2], "w").write(json.dumps(out, indent=1) + "\n")  # stdout carries panoptica's banner
'''


def _blobs(rng: np.random.Generator, shape=(24, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A reference of random ellipsoid lesions and a prediction that moves, grows, shrinks, merges, splits,
    drops some and adds a few."""
    grid = np.indices(shape).astype(np.float64)
    reference, prediction = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(rng.integers(3, 8)):
        centre = rng.uniform(3, np.array(shape) - 3)
        radii = rng.uniform(2.0, 4.5, 3)
        inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
        reference |= inside
        fate = rng.random()
        if fate < 0.15:
            continue  # missed
        shift = rng.normal(0, 0.4 if fate < 0.8 else 2.5, 3)
        scale = rng.uniform(0.85, 1.15)
        moved = (((grid - (centre + shift)[:, None, None, None]) / (scale * radii)[:, None, None, None]) ** 2).sum(0)
        prediction |= moved <= 1
    for _ in range(rng.integers(0, 3)):  # spurious
        centre = rng.uniform(2, np.array(shape) - 2)
        prediction |= (((grid - centre[:, None, None, None]) / 1.5) ** 2).sum(0) <= 1
    return prediction, reference


def cases() -> dict[str, np.ndarray]:
    sys.path.insert(0, str(REPO / "tests"))
    from test_instances import _pair

    prediction, reference = _pair()
    arrays = {"hand_pred": prediction, "hand_ref": reference}
    rng = np.random.default_rng(2026)
    for i in range(8):
        arrays[f"blobs{i}_pred"], arrays[f"blobs{i}_ref"] = _blobs(rng)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/autoseg-panoptica-venv"))
    args = parser.parse_args()
    python = args.venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", PANOPTICA], check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "cases.npz", **cases())
    subprocess.run([str(python), "-c", RUN, str(OUT / "cases.npz"), str(OUT / "metrics.json")], check=True,
                   capture_output=True, text=True)
    print(f"wrote {OUT / 'cases.npz'} and {OUT / 'metrics.json'}")


if __name__ == "__main__":
    main()
