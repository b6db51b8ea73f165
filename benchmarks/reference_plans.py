"""Regenerate plans/reference/: synthetic fingerprints, nnU-Net v2's plans for them, autoseg's plans.

    .venv/bin/python benchmarks/reference_plans.py [--data ../shared/data/Dataset004_Hippocampus] [--autoseg-only]
    .venv/bin/python benchmarks/reference_plans.py --preset resenc-m [--autoseg-only]

Runs nnU-Net v2 (own venv under /tmp, created on demand) on
  - the real Hippocampus data (its own fingerprint extraction + planning), and
  - each synthetic fingerprint (converted to nnU-Net's format, planned by nnUNetv2_plan_experiment),
then writes autoseg's plan for the same fingerprint and prints every decision that differs.
With --preset resenc-m|resenc-l|resenc-xl, nnU-Net's residual-encoder planner (nnUNetPlannerResEncM/L/XL) plans
the committed fingerprints into plans/reference/nnunet-<preset>/ and autoseg's preset into
plans/reference/autoseg-<preset>/.
tests/test_reference_plans.py re-plans the committed fingerprints and checks both.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nnunet_compare import deliberate, differences  # noqa: E402
from nnunet_env import link_raw_dataset, run_nnunet  # noqa: E402

from autoseg.fingerprint import (FINGERPRINT_VERSION, CaseFingerprint, Fingerprint, IntensityStats,  # noqa: E402
                                 compute_fingerprint, load_fingerprint, save_fingerprint)
from autoseg.jsonio import to_dict, write_json_atomic  # noqa: E402
from autoseg.planning import plan_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "plans" / "reference"
LABELS = {"background": 0, "a": 1, "b": 2}

# name: (channels, cases, spacing centre (z, y, x), relative jitter or z range, shape centre, crop ratio, CT-like)
SYNTHETIC = {
    "Dataset900_SynthIsoMRI": dict(channels={"0": "MRI"}, n=40, spacing=(1.0, 1.0, 1.0), spacing_jitter=0.05,
                                   shape=(64, 96, 80), crop=0.9),
    "Dataset901_SynthProstate": dict(channels={"0": "T2", "1": "ADC"}, n=32, spacing=(3.6, 0.6, 0.6), z_range=(3.0, 4.0),
                                     spacing_jitter=0.05, shape=(20, 320, 320), crop=0.95),
    "Dataset902_SynthLargeCT": dict(channels={"0": "CT"}, n=40, spacing=(1.0, 0.78, 0.78), spacing_jitter=0.1,
                                    shape=(400, 512, 512), crop=0.85),
    "Dataset903_SynthBrainMRI": dict(channels={"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}, n=40,
                                     spacing=(1.0, 1.0, 1.0), spacing_jitter=0.0, shape=(140, 170, 140), crop=0.62),
    "Dataset904_Synth2D": dict(channels={"0": "MRI"}, n=60, spacing=(999.0, 0.5, 0.5), spacing_jitter=0.0,
                               shape=(1, 256, 320), crop=1.0),
    "Dataset905_SynthCTSlices2D": dict(channels={"0": "CT"}, n=100, spacing=(999.0, 0.7, 0.7), spacing_jitter=0.0,
                                       shape=(1, 512, 512), crop=0.9),
}


def synthetic_fingerprint(name: str, spec: dict, seed: int) -> Fingerprint:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(spec["n"]):
        spacing = [s * (1 + rng.uniform(-spec["spacing_jitter"], spec["spacing_jitter"])) for s in spec["spacing"]]
        if "z_range" in spec:
            spacing[0] = rng.uniform(*spec["z_range"])
        shape = [1 if s == 1 else int(round(s * (1 + rng.uniform(-0.1, 0.1)))) for s in spec["shape"]]
        before = [s if s == 1 else int(round(s / spec["crop"] ** (1 / 3))) for s in shape]
        ratio = float(np.prod(shape) / np.prod(before))
        cases.append(CaseFingerprint(f"case_{i:03d}", "RAS", [round(s, 4) for s in spacing], before, shape,
                                     [[0, s] for s in shape], ratio))
    ct = any(v.lower() == "ct" for v in spec["channels"].values())
    stats = [IntensityStats(80.0, 60.0, 75.0, -1024.0, 3071.0, -100.0, 300.0, 100000) if ct else
             IntensityStats(500.0, 150.0, 480.0, 0.0, 2000.0, 150.0, 950.0, 100000) for _ in spec["channels"]]
    return Fingerprint(FINGERPRINT_VERSION, name, "(synthetic)", "nnunet", spec["channels"], LABELS, ".nii.gz", "RAS",
                       cases, stats)


def to_nnunet_fingerprint(fp: Fingerprint) -> dict:
    return {
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": s.max, "mean": s.mean, "median": s.median, "min": s.min,
                     "percentile_00_5": s.percentile_00_5, "percentile_99_5": s.percentile_99_5, "std": s.std}
            for c, s in enumerate(fp.foreground_intensity)},
        "median_relative_size_after_cropping": fp.median_relative_size_after_crop,
        "shapes_after_crop": [c.shape_after_crop for c in fp.cases],
        "spacings": [c.spacing for c in fp.cases],
    }


NNUNET_PLANNERS = {"resenc-m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"),
                   "resenc-l": ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans"),
                   "resenc-xl": ("nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans")}


def nnunet_plan_from_fingerprint(fp: Fingerprint, dataset_id: int, work: Path, preset: str = "plain") -> dict:
    """nnUNetv2_plan_experiment on a fingerprint: it reads dataset.json and the fingerprint, and opens
    one image only to choose a reader, which the dataset.json override makes unnecessary."""
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    name = fp.dataset_name
    (raw / name / "imagesTr").mkdir(parents=True)
    (raw / name / "imagesTr" / "case_000_0000.nii.gz").touch()
    (raw / name / "dataset.json").write_text(json.dumps({
        "channel_names": fp.channel_names, "labels": fp.labels, "numTraining": len(fp.cases),
        "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO"}))
    (pre / name).mkdir(parents=True)
    (pre / name / "dataset_fingerprint.json").write_text(json.dumps(to_nnunet_fingerprint(fp)))
    planner, plans = NNUNET_PLANNERS.get(preset, ("ExperimentPlanner", "nnUNetPlans"))
    run_nnunet(["nnUNetv2_plan_experiment", "-d", str(dataset_id), "-pl", planner], raw, pre, res)
    return json.loads((pre / name / f"{plans}.json").read_text())


def nnunet_plan_from_data(data: Path, work: Path) -> tuple[dict, dict]:
    raw, pre, res, dataset_id = link_raw_dataset(data, work)
    run_nnunet(["nnUNetv2_extract_fingerprint", "-d", dataset_id, "-np", "2"], raw, pre, res)
    run_nnunet(["nnUNetv2_plan_experiment", "-d", dataset_id], raw, pre, res)
    return (json.loads((pre / data.name / "dataset_fingerprint.json").read_text()),
            json.loads((pre / data.name / "nnUNetPlans.json").read_text()))


def preset_folders(preset: str) -> tuple[str, str]:
    """(nnU-Net's, autoseg's) folder under plans/reference/ for a preset."""
    return ("nnunet", "autoseg") if preset == "plain" else (f"nnunet-{preset}", f"autoseg-{preset}")


def record(name: str, fp: Fingerprint, nnunet_plans: dict, preset: str = "plain") -> None:
    theirs, ours = preset_folders(preset)
    if preset == "plain":
        save_fingerprint(fp, REFERENCE / "fingerprints" / f"{name}.json")
    write_json_atomic(REFERENCE / theirs / name / "nnUNetPlans.json", nnunet_plans)
    plan = to_dict(plan_experiment(fp, fingerprint_file=f"../fingerprints/{name}.json", preset=preset))
    write_json_atomic(REFERENCE / ours / name / "plan.json", plan)
    diffs = differences(plan, nnunet_plans)
    allowed = deliberate(nnunet_plans)
    print(f"{name}: {'identical decisions' if not diffs else f'{len(diffs)} difference(s)'}"
          + (f" (nnU-Net pools > 6x per axis in {sorted(allowed)})" if allowed else ""))
    for d in diffs:
        print(f"    {d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--autoseg-only", action="store_true",
                        help="only rewrite autoseg's plans from the committed fingerprints (no nnU-Net run)")
    parser.add_argument("--preset", default="plain", choices=("plain", *NNUNET_PLANNERS))
    args = parser.parse_args()
    theirs, _ = preset_folders(args.preset)
    if args.autoseg_only:
        for path in sorted((REFERENCE / "fingerprints").glob("*.json")):
            nnunet = json.loads((REFERENCE / theirs / path.stem / "nnUNetPlans.json").read_text())
            record(path.stem, load_fingerprint(path), nnunet, args.preset)
        return
    if args.preset != "plain":  # nnU-Net's preset planner on the committed fingerprints (Hippocampus's included)
        with tempfile.TemporaryDirectory(prefix="autoseg-ref-") as tmp:
            for path in sorted((REFERENCE / "fingerprints").glob("*.json")):
                fp = load_fingerprint(path)
                fp.dataset_name = path.stem  # nnU-Net finds the dataset by the number in its folder's name
                nnunet = nnunet_plan_from_fingerprint(fp, int(path.stem[7:10]), Path(tmp) / path.stem, args.preset)
                record(path.stem, load_fingerprint(path), nnunet, args.preset)
        return
    for sub in ("fingerprints", "nnunet", "autoseg"):
        shutil.rmtree(REFERENCE / sub, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="autoseg-ref-") as tmp:
        tmp = Path(tmp)
        for seed, (name, spec) in enumerate(SYNTHETIC.items()):
            fp = synthetic_fingerprint(name, spec, seed)
            record(name, fp, nnunet_plan_from_fingerprint(fp, int(name[7:10]), tmp / name))
        if args.data.exists():
            nn_fp, nn_plans = nnunet_plan_from_data(args.data, tmp / "real")
            write_json_atomic(REFERENCE / "nnunet" / args.data.name / "dataset_fingerprint.json", nn_fp)
            fp = compute_fingerprint(args.data, progress=False)
            fp.dataset_dir = f"../shared/data/{args.data.name}"  # machine-independent
            record(args.data.name, fp, nn_plans)
        else:
            print(f"{args.data} not found: real-data reference skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
