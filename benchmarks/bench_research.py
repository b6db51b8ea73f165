"""Researchers' features measured on Hippocampus, in one invocation (issue 14):

    .venv/bin/python benchmarks/bench_research.py [--budget 10m] [--finetune-budget 5m]
        [--data ../shared/data/Dataset004_Hippocampus] [--work /tmp/autoseg-bench-research]

Ten cases (fixed seed) are set aside as the fine-tuning target; the other 198 make two datasets:
- dense: the labels as they are;
- sparse: only every 5th slice (first array axis) annotated, the rest `ignore` (value 3): a fifth of the
  annotation effort. Planned with `--plan-from` the dense plan, so both train the same network on the
  same preprocessing.
Both train fold 0 for the same budget with the same recipe (the dense run's recipe.json, reused by the
sparse run), then their fold-0 validation predictions are scored against the DENSE labels.

Fine-tuning: the ten target cases with anterior and posterior merged into one label "hippocampus".
- fine-tune: `autoseg plan --plan-from` the dense model's fold folder, `autoseg train --fold all
  --init-from` it;
- scratch: the target planned on its own, `autoseg train --fold all` from random weights;
both for --finetune-budget, each then predicting the dense run's validation cases (which the source
never trained on), scored against their merged labels.

Prints Dice per arm and the ratios (sparse / dense, fine-tune / scratch) with the CPU's flags. Equal
budgets are wall-clock training time: nothing else should run beside this.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_memory import cpu_flags  # noqa: E402

IGNORE = 3
EVERY = 5
TARGET_CASES = 10


def autoseg(*args, log: Path) -> float:
    start = time.monotonic()
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-m", "autoseg", *map(str, args)], check=True, stdout=out,
                       stderr=subprocess.STDOUT, cwd=REPO)
    return time.monotonic() - start


def write_dataset(source: Path, dest: Path, cases: list[str], labels: dict, relabel) -> Path:
    """Images linked, labels rewritten by relabel(array) with the source's exact geometry."""
    import SimpleITK as sitk

    shutil.rmtree(dest, ignore_errors=True)
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    meta = json.loads((source / "dataset.json").read_text())
    for case in cases:
        (dest / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
        image = sitk.ReadImage(str(source / "labelsTr" / f"{case}.nii.gz"))
        array = relabel(sitk.GetArrayFromImage(image).astype(np.uint8))
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(dest / "labelsTr" / f"{case}.nii.gz"), True)
    meta.update({"labels": labels, "numTraining": len(cases)})
    meta.pop("training", None)
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest


def thin(array: np.ndarray) -> np.ndarray:
    out = np.full_like(array, IGNORE)
    out[::EVERY] = array[::EVERY]
    return out


def merge(array: np.ndarray) -> np.ndarray:
    return (array > 0).astype(np.uint8)


def score(pairs, labels) -> float:
    from autoseg.evaluation.evaluate import evaluate_pairs

    return evaluate_pairs(pairs, labels, workers=2, progress=False)["foreground_mean"]["dice"]


def main() -> None:
    from autoseg.training.schedule import parse_duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--finetune-budget", default="5m")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-research"))
    parser.add_argument("--limit", type=int, default=None, help="use only this many non-target cases (a smoke run)")
    args = parser.parse_args()
    budget, finetune_budget = parse_duration(args.budget), parse_duration(args.finetune_budget)
    work, data = args.work, args.data.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "autoseg.log"
    labels = json.loads((data / "dataset.json").read_text())["labels"]
    cases = sorted(p.name[:-len(".nii.gz")] for p in (data / "labelsTr").glob("*.nii.gz"))
    target = sorted(np.random.default_rng(14).choice(cases, TARGET_CASES, replace=False).tolist())
    rest = [c for c in cases if c not in target][:args.limit]

    dense = write_dataset(data, work / "Dataset104_Dense", rest, labels, lambda a: a)
    sparse = write_dataset(data, work / "Dataset105_Sparse", rest, {**labels, "ignore": IGNORE}, thin)
    merged = write_dataset(data, work / "Dataset106_Target", target, {"background": 0, "hippocampus": 1}, merge)
    fold = ("models", "3d_fullres", "fold_0")
    runs = {}

    autoseg("plan", dense, "-o", work / "dense", "--configs", "3d_fullres", "--preprocess", "-q", log=log)
    autoseg("plan", sparse, "-o", work / "sparse", "--plan-from", work / "dense" / "plan.json", "--configs",
            "3d_fullres", "--preprocess", "-q", log=log)
    runs["dense"] = autoseg("train", work / "dense", "--fold", "0", "--time-budget", f"{budget}s", "-q", log=log)
    recipe = work / "dense" / Path(*fold) / "recipe.json"
    runs["sparse"] = autoseg("train", work / "sparse", "--fold", "0", "--time-budget", f"{budget}s", "--recipe",
                             recipe, "-q", log=log)
    val = json.loads((work / "dense" / Path(*fold) / "validation" / "summary.json").read_text())
    val_ids = [c["case"] for c in val["cases"]]
    sparse_val = [c["case"] for c in json.loads(
        (work / "sparse" / Path(*fold) / "validation" / "summary.json").read_text())["cases"]]
    assert sparse_val == val_ids, "the two runs validated different cases"
    dice = {}
    for arm in ("dense", "sparse"):
        folder = work / arm / Path(*fold) / "validation"
        dice[arm] = score([(c, folder / f"{c}.nii.gz", dense / "labelsTr" / f"{c}.nii.gz") for c in val_ids], [1, 2])

    # fine-tuning onto the ten merged-label cases, scored on the dense run's validation cases
    eval_refs = write_dataset(data, work / "eval_merged", val_ids, {"background": 0, "hippocampus": 1}, merge)
    eval_images = work / "eval_images"
    shutil.rmtree(eval_images, ignore_errors=True)
    eval_images.mkdir()
    for c in val_ids:
        (eval_images / f"{c}_0000.nii.gz").symlink_to(data / "imagesTr" / f"{c}_0000.nii.gz")
    source = work / "dense" / Path(*fold)
    arms = {"finetune": (["--plan-from", source], ["--init-from", source]), "scratch": ([], [])}
    for arm, (plan_args, train_args) in arms.items():
        out = work / arm
        shutil.rmtree(out, ignore_errors=True)
        autoseg("plan", merged, "-o", out, "--configs", "3d_fullres", "--preprocess", "-q", *plan_args, log=log)
        runs[arm] = autoseg("train", out, "--fold", "all", "--time-budget", f"{finetune_budget}s", "-q",
                            *train_args, log=log)
        predictions = work / f"{arm}_predictions"
        shutil.rmtree(predictions, ignore_errors=True)
        autoseg("predict", "-i", eval_images, "-o", predictions, "-m", out / "models", "--config", "3d_fullres",
                "--folds", "all", "-q", log=log)
        dice[arm] = score([(c, predictions / f"{c}.nii.gz", eval_refs / "labelsTr" / f"{c}.nii.gz")
                           for c in val_ids], [1])

    result = {"cpu": cpu_flags(), "budget_s": budget, "finetune_budget_s": finetune_budget,
              "target_cases": target, "validation_cases": len(val_ids), "dice": dice,
              "wall_s": {k: round(v, 1) for k, v in runs.items()},
              "sparse_over_dense": dice["sparse"] / dice["dense"],
              "finetune_over_scratch": dice["finetune"] / dice["scratch"],
              "recipes": {arm: json.loads((work / arm / Path(*(fold if arm in ("dense", "sparse") else
                                                               ("models", "3d_fullres", "fold_all"))) /
                                          "recipe.json").read_text())["reason"] for arm in runs}}
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print(f"CPU: {result['cpu']}")
    print(f"sparse labels (every {EVERY}th slice) vs dense, {args.budget} each, {len(val_ids)} validation cases, "
          f"Dice against the dense labels:")
    print(f"  dense {dice['dense']:.4f}   sparse {dice['sparse']:.4f}   ratio {result['sparse_over_dense']:.3f}")
    print(f"fine-tune vs scratch on {TARGET_CASES} merged-label cases, {args.finetune_budget} each, "
          f"Dice on the same {len(val_ids)} cases:")
    print(f"  fine-tune {dice['finetune']:.4f}   scratch {dice['scratch']:.4f}   ratio "
          f"{result['finetune_over_scratch']:.3f}")
    print(f"-> {work / 'result.json'}")


if __name__ == "__main__":
    main()
