"""Fidelity: do autoseg's preprocessed cases hold the voxels nnU-Net v2's would? One run, both tools.

    .venv/bin/python benchmarks/fidelity.py [--part hippocampus|ct|all] [--configs 3d_fullres 2d]
        [--data ../shared/data/Dataset004_Hippocampus] [--work /tmp/autoseg-fidelity] [--workers 2]

Per dataset: nnU-Net v2 (its own venv, benchmarks/nnunet_env.py) extracts its fingerprint, plans and
preprocesses; autoseg plans and preprocesses. Then, so that images are compared under the same
normalization parameters, autoseg preprocesses once more with nnU-Net's CT clip bounds, mean and std
copied into its plan (MRI z-score is per case and needs nothing). Per case and configuration it reports
shape, crop box, max and mean absolute image difference, segmentation agreement (voxels that differ,
-1 included), and the fingerprints' foreground intensity statistics side by side.

Datasets: the shared Hippocampus data (no resampling) and a synthetic anisotropic CT dataset made here:
cases of different sizes and spacings (0.7-0.8 mm in plane, 4-6 mm slices), HU values, a zero-valued
region outside a circular field of view (so cropping and the -1 label occur), and one case whose two
largest spacings are equal. nnU-Net's preprocessed files are read with its own Python (blosc2) and handed
over as .npy.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nnunet_env import (VENV, ensure_nnunet, fingerprint_and_plan_commands, link_raw_dataset,  # noqa: E402
                        nnunet_env)

REPO = Path(__file__).resolve().parents[1]
NNUNET_CONFIG_FOLDER = {"3d_fullres": "nnUNetPlans_3d_fullres", "2d": "nnUNetPlans_2d"}

# Runs inside nnU-Net's venv, once per configuration: every preprocessed case of a folder ->
# {case}_data.npy, {case}_seg.npy, {case}_props.json (crop box and shapes) in the exchange folder.
EXPORT_NNUNET_CASES = r"""
import json, pickle, sys
from pathlib import Path
import blosc2, numpy as np
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for pkl in sorted(folder.glob("*.pkl")):
    case = pkl.stem
    np.save(out / f"{case}_data.npy", blosc2.open(urlpath=str(folder / f"{case}.b2nd"), mode="r")[:])
    np.save(out / f"{case}_seg.npy", blosc2.open(urlpath=str(folder / f"{case}_seg.b2nd"), mode="r")[:])
    props = pickle.load(open(pkl, "rb"))
    keep = {k: np.asarray(props[k]).tolist() for k in ("bbox_used_for_cropping", "shape_before_cropping",
                                                       "shape_after_cropping_and_before_resampling")}
    (out / f"{case}_props.json").write_text(json.dumps(keep))
"""


def write_anisotropic_ct(root: Path, name: str = "Dataset960_FidelityCT") -> Path:
    """Six small anisotropic CT cases (see the module docstring)."""
    folder = root / name
    if (folder / "dataset.json").is_file():
        return folder
    rng = np.random.default_rng(960)
    # (slices, rows, columns), spacing (z, y, x) in mm
    cases = [((24, 96, 96), (5.0, 0.78, 0.78)), ((30, 110, 104), (4.0, 0.7, 0.7)), ((20, 90, 100), (6.0, 0.8, 0.8)),
             ((28, 100, 92), (4.5, 0.75, 0.75)), ((26, 84, 96), (5.5, 0.72, 0.72)),
             ((96, 20, 90), (0.8, 5.0, 5.0))]  # two equally coarse axes
    for i, (shape, spacing) in enumerate(cases):
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        body = (y ** 2 + x ** 2) < 0.8
        image = np.full(shape, -1000.0) + body * 1040.0 + rng.normal(0, 20, shape)
        organ = ((y - 0.15) ** 2 / 0.12 + (x + 0.1) ** 2 / 0.09 + z ** 2 / 0.5) < 1
        bone = ((y + 0.35) ** 2 + (x - 0.2) ** 2) < 0.02
        image[organ] = 60 + rng.normal(0, 10, int(organ.sum()))
        image[bone] = 900 + rng.normal(0, 80, int(bone.sum()))
        fov = (y ** 2 + x ** 2) < 0.95
        image[~fov] = 0.0  # outside the reconstructed field of view: zero, so cropping and -1 occur
        label = np.zeros(shape, np.uint8)
        label[organ & body] = 1
        label[bone & body] = 2
        for array, sub, dtype in ((image, "imagesTr", np.int16), (label, "labelsTr", np.uint8)):
            out = sitk.GetImageFromArray(array.astype(dtype))
            out.SetSpacing([float(s) for s in spacing[::-1]])
            path = folder / sub / (f"ct_{i:03d}_0000.nii.gz" if sub == "imagesTr" else f"ct_{i:03d}.nii.gz")
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(out, str(path), True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "bone": 2},
        "numTraining": len(cases), "file_ending": ".nii.gz", "name": "FidelityCT"}))
    return folder


def run(cmd, env=None) -> None:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")


def nnunet_side(data: Path, work: Path, configs: list[str], workers: int) -> tuple[Path, dict, dict]:
    raw, pre, results, dataset_id = link_raw_dataset(data, work / "nnunet")
    env = nnunet_env(raw, pre, results)
    if not any(pre.glob(f"Dataset{int(dataset_id):03d}_*/nnUNetPlans.json")):
        for cmd in fingerprint_and_plan_commands(dataset_id, workers):
            run(cmd, env)
        run([VENV / "bin" / "nnUNetv2_preprocess", "-d", dataset_id, "-c", *configs, "-np",
             *[str(workers)] * len(configs)], env)
    folder = next(pre.glob(f"Dataset{int(dataset_id):03d}_*"))
    return folder, json.loads((folder / "nnUNetPlans.json").read_text()), \
        json.loads((folder / "dataset_fingerprint.json").read_text())


def autoseg_side(data: Path, work: Path, configs: list[str], workers: int, nnunet_plans: dict) -> tuple[Path, Path]:
    """(autoseg's own output folder, a copy preprocessed with nnU-Net's normalization parameters)."""
    own = work / "autoseg"
    if not (own / "plan.json").is_file():
        run([sys.executable, "-m", "autoseg", "plan", data, "-o", own, "--configs", *configs, "--preprocess",
             "--workers", workers, "-q"])
    same = work / "autoseg_nnunet_norm"
    if not (same / "plan.json").is_file():
        shutil.rmtree(same, ignore_errors=True)
        shutil.copytree(own, same, ignore=shutil.ignore_patterns("preprocessed"))
        plan = json.loads((same / "plan.json").read_text())
        stats = nnunet_plans["foreground_intensity_properties_per_channel"]
        for c, channel in enumerate(plan["normalization"]):
            if channel["scheme"] == "ct":
                s = stats[str(c)]
                channel.update(clip_low=s["percentile_00_5"], clip_high=s["percentile_99_5"], mean=s["mean"],
                               std=s["std"])
        (same / "plan.json").write_text(json.dumps(plan, indent=2))
        run([sys.executable, "-m", "autoseg", "preprocess", same, "--configs", *configs, "--workers", workers,
             "-q"])
    return own, same


def compare(data: Path, work: Path, configs: list[str], workers: int) -> dict:
    nn_folder, nn_plans, nn_fingerprint = nnunet_side(data, work, configs, workers)
    own, same = autoseg_side(data, work, configs, workers, nn_plans)
    from autoseg.preprocessing.storage import load_case

    plan = json.loads((same / "plan.json").read_text())
    rows = []
    forward = nn_plans["transpose_forward"]
    for config in configs:
        folder = nn_folder / NNUNET_CONFIG_FOLDER[config]
        exchange = work / "exchange" / config
        shutil.rmtree(exchange, ignore_errors=True)
        run([VENV / "bin" / "python", "-c", EXPORT_NNUNET_CASES, folder, exchange])
        ours = same / "preprocessed" / plan["configurations"][config]["data_identifier"]
        for path in sorted(exchange.glob("*_props.json")):
            case = path.name[:-len("_props.json")]
            n_data, n_seg = np.load(exchange / f"{case}_data.npy"), np.load(exchange / f"{case}_seg.npy")
            n_bbox = json.loads(path.read_text())["bbox_used_for_cropping"]
            a_data, a_seg, a_props = load_case(ours, case)
            a_data, a_seg = np.asarray(a_data), np.asarray(a_seg)
            row = {"config": config, "case": case, "nnunet_shape": list(n_data.shape[1:]),
                   "autoseg_shape": list(a_data.shape[1:]),
                   # nnU-Net keeps its crop box in the file's axis order; autoseg's is after the transpose
                   "nnunet_bbox": [n_bbox[a] for a in forward], "autoseg_bbox": a_props.bbox}
            if n_data.shape == a_data.shape:
                diff = np.abs(n_data.astype(np.float64) - a_data.astype(np.float64))
                row.update(max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                           seg_differs=int((n_seg.astype(np.int16) != a_seg.astype(np.int16)).sum()),
                           seg_voxels=int(n_seg.size))
            rows.append(row)
    a_fp = json.loads((own / "fingerprint.json").read_text())
    stats = {"nnunet": nn_fingerprint["foreground_intensity_properties_per_channel"],
             "autoseg": {str(c): s for c, s in enumerate(a_fp["foreground_intensity"])}}
    return {"dataset": data.name, "rows": rows, "intensity_stats": stats}


def summarize(result: dict) -> None:
    rows = result["rows"]
    print(f"\n{result['dataset']}: {len(rows)} case x configuration pairs")
    print(f"{'config':11}{'case':18}{'shape equal':>12}{'bbox equal':>11}{'max |d|':>10}{'mean |d|':>10}"
          f"{'seg diff':>9}")
    for r in rows:
        print(f"{r['config']:11}{r['case']:18}{str(r['nnunet_shape'] == r['autoseg_shape']):>12}"
              f"{str(r['nnunet_bbox'] == r['autoseg_bbox']):>11}{r.get('max_abs', float('nan')):>10.2e}"
              f"{r.get('mean_abs', float('nan')):>10.2e}{r.get('seg_differs', -1):>9}")
    worst = max((r.get("max_abs", np.inf) for r in rows), default=np.nan)
    same_shape = sum(r["nnunet_shape"] == r["autoseg_shape"] for r in rows)
    same_box = sum(r["nnunet_bbox"] == r["autoseg_bbox"] for r in rows)
    same_seg = sum(r.get("seg_differs", 1) == 0 for r in rows)
    print(f"shapes equal {same_shape}/{len(rows)}, crop boxes equal {same_box}/{len(rows)}, segmentations "
          f"identical {same_seg}/{len(rows)}, largest image difference {worst:.3g} (target 1e-3)")
    for tool, stats in result["intensity_stats"].items():
        for c, s in stats.items():
            print(f"  {tool:8} channel {c}: mean {s['mean']:.4g} std {s['std']:.4g} p0.5 {s['percentile_00_5']:.4g} "
                  f"p99.5 {s['percentile_99_5']:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description="autoseg vs nnU-Net v2: preprocessed voxels and statistics")
    parser.add_argument("--part", choices=("hippocampus", "ct", "all"), default="all")
    parser.add_argument("--configs", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-fidelity"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ensure_nnunet()
    datasets = []
    if args.part in ("hippocampus", "all"):
        datasets.append(args.data)
    if args.part in ("ct", "all"):
        datasets.append(write_anisotropic_ct(args.work / "data"))
    results = []
    for data in datasets:
        work = args.work / data.name
        work.mkdir(parents=True, exist_ok=True)
        result = compare(data, work, args.configs, args.workers)
        summarize(result)
        results.append(result)
    out = args.work / "results-fidelity.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
