"""Accuracy within a training budget on the CPU: autoseg's budget recipe, its standard recipe and nnU-Net v2
side by side, same Hippocampus fold 0, same budgets, one invocation.

    .venv/bin/python benchmarks/bench_budget.py [--budgets 10m 30m] [--tools budget standard nnunet]
        [--long 2h] [--precision fp32] [--data ../shared/data/Dataset004_Hippocampus]
        [--work /tmp/autoseg-bench-budget]

Per budget:
- autoseg budget: `autoseg train --recipe budget --time-budget B` (width, batch, warm-up, augmentation
  chosen from the budget and the step times it measures when it starts; recipe.json records them);
- autoseg standard: `--recipe standard --time-budget B --iterations-per-epoch 50 --val-iterations 5`
  (nnU-Net's recipe with its whole learning-rate decay fitted into the budget);
- nnU-Net v2: `nnUNetv2_train` with its schedule compressed to B / its own seconds per iteration, measured
  first in the same invocation (2 epochs of 3 iterations, the first one warm-up), as bench_train.py does;
  nnU-Net has no time budget of its own.
Each predicts fold 0's 42 validation cases in their original geometry (mirroring on); the table has the
mean foreground Dice, iterations, training seconds, wall seconds and peak memory (PSS of the process tree),
with the CPU's flags. `--long` adds one autoseg budget-recipe run (e.g. 2h). `--widths 0.25 0.5 1` runs the
budget recipe once per width with `--width` forced (the grid that the width rule is checked against) instead of
once with the rule's choice. Timings need the machine to themselves: nothing else should run beside this.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import plan_autoseg, train_autoseg  # noqa: E402
from nnunet_train import prepare_nnunet, train_nnunet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOOLS = ("budget", "standard", "nnunet")


def autoseg_row(out: Path, work: Path, recipe: str, budget_s: float, precision: str,
                width: float | None = None) -> dict:
    args = ["--recipe", recipe, "--time-budget", f"{budget_s}s", "--precision", precision]
    if recipe == "standard":
        args += ["--iterations-per-epoch", "50", "--val-iterations", "5"]
    name = f"{recipe}-{budget_s:.0f}s"
    if width is not None:
        args += ["--width", f"{width:g}"]
        name += f"-w{width:g}"
    run = train_autoseg(out, args, work, name)
    chosen = json.loads((work / f"autoseg-{name}-model" / "recipe.json").read_text())
    return {"dice": run["summary"]["foreground_mean_dice"] if run["summary"] else None,
            "iterations": sum(m["iterations"] for m in run["metrics"]),
            "train_s": run["metrics"][-1]["train_seconds"], "wall_s": run["wall_s"], "peak_mb": run["peak_mb"],
            "recipe": {k: chosen[k] for k in ("name", "width", "features_per_stage", "batch_size", "augmentation",
                                              "warmup", "expected_iterations", "reason")}}


def nnunet_seconds_per_iteration(data: Path, work: Path, train_ids, val_ids) -> float:
    setup = prepare_nnunet(data, work / "nnunet-speed", train_ids, val_ids[:3])
    run = train_nnunet(setup, 2, 3, 1)
    if run.s_per_iter is None:
        raise RuntimeError(f"nnU-Net's speed run logged no epoch times (see {setup.results})")
    return run.s_per_iter


def nnunet_row(data: Path, work: Path, train_ids, val_ids, budget_s: float, s_per_iter: float) -> dict:
    iterations = 50
    epochs = max(1, round(budget_s / s_per_iter / iterations))
    setup = prepare_nnunet(data, work / f"nnunet-{budget_s:.0f}s", train_ids, val_ids)
    run = train_nnunet(setup, epochs, iterations, 2)
    return {"dice": run.dice_fg, "iterations": epochs * iterations, "train_s": sum(run.epoch_s),
            "wall_s": run.wall_s, "peak_mb": run.peak_mb, "recipe": {"name": f"nnU-Net, {epochs} x {iterations}"}}


def main() -> None:
    from autoseg.model.device import cpu_info
    from autoseg.training.schedule import parse_duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", default=["10m", "30m"])
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--widths", nargs="+", type=float, default=None,
                        help="run the budget recipe once per width, forced (default: once, the rule's choice)")
    parser.add_argument("--long", default=None, help="one more autoseg budget-recipe run of this length (e.g. 2h)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "auto"),
                        help="autoseg's precision (default fp32: what CPUs without native bf16 get)")
    parser.add_argument("--nnunet-s-per-iter", type=float, default=None,
                        help="skip nnU-Net's speed run and size its schedule with this")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-budget"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    print(f"CPU: {cpu['model']}, {cpu['cpus']} logical CPUs; {flags}", flush=True)
    out, train_ids, val_ids = plan_autoseg(args.data, args.work)
    s_per_iter = args.nnunet_s_per_iter
    if "nnunet" in args.tools and s_per_iter is None:
        s_per_iter = nnunet_seconds_per_iteration(args.data, args.work, train_ids, val_ids)
        print(f"nnU-Net: {s_per_iter:.2f} s per iteration", flush=True)
    rows = []
    budget_widths = args.widths or [None]
    plan = [(b, t, w) for b in args.budgets for t in args.tools for w in (budget_widths if t == "budget" else [None])]
    plan += [(args.long, "budget", None)] if args.long else []
    for text, tool, width in plan:
        budget_s = parse_duration(text)
        if tool == "nnunet":
            row = nnunet_row(args.data, args.work, train_ids, val_ids, budget_s, s_per_iter)
        else:
            row = autoseg_row(out, args.work, tool, budget_s, args.precision, width)
        label = "nnU-Net v2" if tool == "nnunet" else f"autoseg {tool}" + (f" w{width:g}" if width is not None else "")
        row.update(budget=text, tool=label)
        rows.append(row)
        print(f"{text:>5} {row['tool']:18} Dice {row['dice'] if row['dice'] is not None else float('nan'):.4f}  "
              f"{row['iterations']:6d} it  train {row['train_s']:7.0f} s  wall {row['wall_s']:7.0f} s  "
              f"peak {row['peak_mb']:6.0f} MB  {row['recipe'].get('reason', row['recipe']['name'])}", flush=True)
        (args.work / "budget.json").write_text(json.dumps({"cpu": cpu, "nnunet_s_per_iter": s_per_iter,
                                                           "rows": rows}, indent=1))
    print(f"\nHippocampus fold 0 ({len(val_ids)} validation cases), autoseg --precision {args.precision}")
    print(f"{'budget':>6} {'tool':18}{'Dice':>8}{'iterations':>12}{'train s':>9}{'wall s':>8}{'peak MB':>9}")
    for r in rows:
        dice = r["dice"] if r["dice"] is not None else float("nan")
        print(f"{r['budget']:>6} {r['tool']:18}{dice:8.4f}{r['iterations']:12d}{r['train_s']:9.0f}"
              f"{r['wall_s']:8.0f}{r['peak_mb']:9.0f}")


if __name__ == "__main__":
    main()
