"""Every network family at an equal CPU budget on Hippocampus fold 0, in one invocation: the plain U-Net
(nnU-Net's default, the anchor), ResEnc M, DeepLab, FCN, SegNet, V-Net, UNet++, PSPNet and HRNet.

    .venv/bin/python benchmarks/bench_families.py [--budget 10m] [--families plain fcn ...]
        [--data ../shared/data/Dataset004_Hippocampus] [--work /tmp/autoseg-bench-families]

The measurement is bench_architectures.py's (one output folder planned with `--families` for every family
but plain, each trained on fold 0 with `--recipe budget --time-budget B --precision fp32`, validated on the
fold's 42 cases; Dice, seconds per iteration after the first epoch, peak PSS of the training process tree,
parameters and GFLOP per training step; then find-best over every family and pairwise ensemble), without the
dense CRF. Then UNet++'s pruning: fold 0's validation cases predicted with each depth D of its nested
sub-networks (`--prune-depth D`, no mirroring), with Dice and the prediction time of each. CPU flags are
printed. Timings need the machine to themselves: nothing else should run beside this.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_architectures import CLASSIC, FAMILIES, NAMES, arguments, measure  # noqa: E402


def pruning(out: Path) -> list[dict]:
    """Each UNet++ depth on fold 0's validation cases: mean foreground Dice and seconds for all of them."""
    from autoseg.dataset import load_dataset
    from autoseg.evaluation.evaluate import evaluate_pairs
    from autoseg.fingerprint import load_fingerprint
    from autoseg.inference.predict import PredictOptions, predict
    from autoseg.planning.plan_types import load_plan

    configuration = NAMES["unetpp"]
    fold = out / "models" / configuration / "fold_0"
    depth = load_plan(fold / "plan.json").configurations[configuration].num_stages - 1
    validated = [c["case"] for c in json.loads((fold / "validation" / "summary.json").read_text())["cases"]]
    dataset = load_dataset(load_fingerprint(out / "fingerprint.json").dataset_dir)
    cases = {c.case_id: c for c in dataset.cases if c.case_id in validated}
    inputs = out.parent / "pruning-inputs"
    inputs.mkdir(exist_ok=True)
    for case in cases.values():
        link = inputs / f"{case.case_id}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(case.image_files[0])
    rows = []
    for d in range(depth, 0, -1):
        predictions = out.parent / f"pruned-{d}"
        start = time.perf_counter()
        predict(inputs, predictions, out / "models", PredictOptions(configuration=configuration, folds=["0"],
                                                                    mirror=False, device="cpu", progress=False,
                                                                    prune_depth=d))
        seconds = time.perf_counter() - start
        pairs = [(c, predictions / f"{c}.nii.gz", cases[c].label_file) for c in sorted(cases)]
        summary = evaluate_pairs(pairs, [1, 2], workers=2, progress=False)
        rows.append({"depth": d, "dice": summary["foreground_mean"]["dice"], "seconds": seconds,
                     "cases": len(pairs)})
        print(f"UNet++ depth {d}: Dice {rows[-1]['dice']:.4f}, {seconds:.1f} s for {len(pairs)} cases "
              f"(no mirroring)", flush=True)
    return rows


def main() -> None:
    args = arguments(__doc__, "10m", FAMILIES + CLASSIC, "/tmp/autoseg-bench-families")
    result = measure(args.data, args.work, args.families, args.budget, crf=False)
    if "unetpp" in args.families:
        result["unetpp_pruning"] = pruning(args.work / "autoseg")
    (args.work / "results.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
