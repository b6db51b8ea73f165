"""Training peak memory on the CPU: autoseg (standard and budget recipes) against nnU-Net v2 on the same
plans, one invocation.

    .venv/bin/python benchmarks/bench_train_memory.py [--datasets hippocampus large] [--budget 3m]
        [--work /tmp/autoseg-bench-memory]

Datasets: Hippocampus (../shared/data, patch 40x56x40, batch 7) and "large", a synthetic 2-channel
brain-MRI-like dataset (benchmarks/synthetic_mri.py: 6 cases of 240x240x155 at 1 mm, 3 nested tumour
labels; BraTS's shape, planned at patch 112x160x128, batch 2). Each tool plans and preprocesses it itself.

Runs, each measured as the peak PSS of its process tree every 0.5 s (`--poll-s`):
- autoseg standard: `--recipe standard --epochs 1 --iterations-per-epoch 2 --val-iterations 1
  --no-validation` (nnU-Net's network and batch, fp32);
- autoseg budget: `--recipe budget --time-budget B --no-validation` (the recipe sizes itself to the
  machine's free memory; recipe.json says what it expected);
- nnU-Net v2: nnUNetv2_train with 1 epoch of 2 iterations and 1 validation iteration, stopped when its
  log says "Training done" (its final sliding-window validation of the large cases would take hours
  on two cores and is not training). nnU-Net gets as many augmentation workers as autoseg uses on a CPU (1).
Timings need the machine to themselves: nothing else should run beside this.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import plan_autoseg, train_autoseg  # noqa: E402
from nnunet_train import prepare_nnunet, train_nnunet  # noqa: E402
from synthetic_mri import write_mri_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"


def autoseg_rows(data: Path, work: Path, budget_s: float, poll_s: float) -> dict:
    out, _, _ = plan_autoseg(data, work)
    plan = json.loads((out / "plan.json").read_text())["configurations"]["3d_fullres"]
    rows = {"plan": {"patch_size": plan["patch_size"], "batch_size": plan["batch_size"]}}
    standard = train_autoseg(out, ["--recipe", "standard", "--epochs", "1", "--iterations-per-epoch", "2",
                                   "--val-iterations", "1", "--no-validation", "--precision", "fp32"],
                             work, "standard", poll_s)
    rows["autoseg standard"] = {"peak_mb": standard["peak_mb"], "wall_s": standard["wall_s"],
                                "s_per_iter": standard["metrics"][-1]["iterations_time_s"] / 2}
    budget = train_autoseg(out, ["--recipe", "budget", "--time-budget", f"{budget_s}s", "--no-validation",
                                 "--precision", "fp32"], work, "budget", poll_s)
    recipe = json.loads((work / "autoseg-budget-model" / "recipe.json").read_text())
    rows["autoseg budget"] = {"peak_mb": budget["peak_mb"], "wall_s": budget["wall_s"],
                              "iterations": sum(m["iterations"] for m in budget["metrics"]),
                              "recipe": {k: recipe[k] for k in ("width", "batch_size", "patch_size", "expected_peak_mb",
                                                                "memory_limit_mb", "retain_freed_memory", "reason")}}
    return rows


def nnunet_row(data: Path, work: Path, poll_s: float) -> dict:
    ending = json.loads((data / "dataset.json").read_text())["file_ending"]
    cases = sorted(p.name[:-len(ending)] for p in (data / "labelsTr").glob(f"*{ending}"))
    setup = prepare_nnunet(data, work / "nnunet", cases[1:], cases[:1])
    run = train_nnunet(setup, 1, 2, 1, stop_after_training=True, poll_s=poll_s)
    return {"peak_mb": run.peak_mb, "wall_s": run.wall_s, "plan": {"patch_size": setup.patch_size,
                                                                   "batch_size": setup.batch_size}}


def cpu_flags() -> str:
    from autoseg.model.device import cpu_info
    info = cpu_info()
    flags = " ".join(flag for flag, present in info["flags"].items() if present)
    return f"{info['model']}: {flags or 'no AVX2/AVX-512/AMX'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["hippocampus", "large"], choices=["hippocampus", "large"])
    parser.add_argument("--budget", default="3m", help="the budget recipe's --time-budget (default 3m)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-memory"))
    parser.add_argument("--poll-s", type=float, default=0.5,
                        help="seconds between memory samples of each tool's process tree (default 0.5; a step's "
                             "peak lasts less than a second, so 0.02 sees more of it)")
    args = parser.parse_args()
    from autoseg.training.schedule import parse_duration
    budget_s = parse_duration(args.budget)
    results = {"cpu_flags": cpu_flags(), "cpus": os.cpu_count(), "poll_s": args.poll_s, "datasets": {}}
    for name in args.datasets:
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        data = (HIPPOCAMPUS if name == "hippocampus" else
                write_mri_dataset(args.work / "data", "Dataset900_LargeMRI", (155, 240, 240), 6))
        rows = autoseg_rows(data, work, budget_s, args.poll_s)
        rows["nnU-Net v2"] = nnunet_row(data, work, args.poll_s)
        results["datasets"][name] = rows
        nn = rows["nnU-Net v2"]["peak_mb"]
        print(f"\n{name}: autoseg plan {rows['plan']}, nnU-Net plan {rows['nnU-Net v2']['plan']}")
        for tool in ("autoseg standard", "autoseg budget", "nnU-Net v2"):
            row = rows[tool]
            print(f"  {tool:17s} peak {row['peak_mb']:8.0f} MB  ({row['peak_mb'] / nn:.2f}x nnU-Net)  "
                  f"wall {row['wall_s']:6.0f} s" + (f"  recipe {row['recipe']}" if "recipe" in row else ""))
    print(f"\nCPU flags: {results['cpu_flags']}")
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"-> {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
