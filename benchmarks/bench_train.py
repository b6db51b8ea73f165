"""CPU training: autoseg vs nnU-Net v2 on the same Hippocampus plan and fold 0, in one run.

    .venv/bin/python benchmarks/bench_train.py --part speed [--iterations 15]
    .venv/bin/python benchmarks/bench_train.py --part dice [--budget 30m] [--tools autoseg nnunet]
        [--data ../shared/data/Dataset004_Hippocampus] [--work /tmp/autoseg-bench-train]

Both tools plan the data themselves (identical 3d_fullres plan: patch 40x56x40, batch 7) and
train fold 0 of autoseg's splits.json (nnU-Net gets the same cases as its splits_final.json).

Part "speed": 3 epochs of N iterations each; seconds per iteration over the last 2 epochs (the
first is warm-up), training iterations only. autoseg runs twice: default precision (bf16 autocast
on CPUs with native bfloat16) and fp32. Prints the ratios to nnU-Net and to the ~6.8 s floor of an
~800 GFLOP step at ~118 GFLOP/s.

Part "dice": the same wall-clock training budget for both; autoseg with --time-budget, nnU-Net
with its schedule compressed to budget / its seconds per iteration (nnU-Net has no time budget).
Each then validates the fold's validation cases in original geometry; prints mean foreground Dice.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nnunet_train import run_measured_timeout, prepare_nnunet, train_nnunet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLOOR_S = 6.8  # ~800 GFLOP forward+backward at ~118 GFLOP/s (issue 4)
sys.path.insert(0, str(REPO))


def plan_autoseg(data: Path, work: Path) -> tuple[Path, list[str], list[str]]:
    from autoseg.training.splits import fold_cases, load_or_create_splits

    out = work / "autoseg"
    if not (out / "plan.json").is_file():
        _run([sys.executable, "-m", "autoseg", "plan", str(data), "-o", str(out), "--configs", "3d_fullres",
              "--preprocess", "-q"], work / "autoseg-plan.log")
    ids = sorted(p.stem for p in (out / "preprocessed" / "3d_fullres").glob("*.json"))
    train_ids, val_ids = fold_cases(load_or_create_splits(out, ids), 0, ids)
    return out, train_ids, val_ids


def _run(cmd, log: Path, poll_s: float = 0.5):
    """Measured like nnU-Net's side: PSS of the process tree every poll_s seconds."""
    return run_measured_timeout([str(c) for c in cmd], None, log, None, poll_s)[0]


def train_autoseg(out: Path, args: list[str], work: Path, name: str, poll_s: float = 0.5) -> dict:
    shutil.rmtree(out / "models", ignore_errors=True)
    m = _run([sys.executable, "-m", "autoseg", "train", str(out), "--fold", "0", "-q", *args],
             work / f"autoseg-{name}.log", poll_s)
    folder = out / "models" / "3d_fullres" / "fold_0"
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    summary_path = folder / "validation" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    result = {"wall_s": m.wall_s, "peak_mb": m.peak_mb, "metrics": metrics, "summary": summary}
    shutil.copytree(folder, work / f"autoseg-{name}-model", dirs_exist_ok=True)
    return result


def seconds_per_iteration(metrics: list[dict]) -> float:
    warm = metrics[1:]
    return sum(m["iterations_time_s"] for m in warm) / sum(m["iterations"] for m in warm)


def part_speed(data: Path, work: Path, iterations: int) -> dict:
    out, train_ids, val_ids = plan_autoseg(data, work)
    args = ["--epochs", "3", "--iterations-per-epoch", str(iterations), "--val-iterations", "1", "--no-validation",
            "--checkpoint-every", "1e9"]
    results = {}
    for precision in ("auto", "fp32"):
        run = train_autoseg(out, [*args, "--precision", precision], work, f"speed-{precision}")
        results[f"autoseg ({precision})"] = (seconds_per_iteration(run["metrics"]), run["peak_mb"])
        print(f"autoseg --precision {precision}: {results[f'autoseg ({precision})'][0]:.2f} s/iter", flush=True)
    setup = prepare_nnunet(data, work / "nnunet", train_ids, val_ids[:3])
    run = train_nnunet(setup, 3, iterations, 1)
    results["nnU-Net"] = (run.s_per_iter, run.peak_mb)
    nn = run.s_per_iter
    print(f"\nseconds per training iteration, {2 * iterations} iterations after a {iterations}-iteration warm-up "
          f"(patch {setup.patch_size}, batch {setup.batch_size}):")
    print(f"{'':22}{'s/iter':>8}{'peak MB':>10}{'vs nnU-Net':>12}{'vs 6.8 s floor':>16}")
    for name, (s, peak) in results.items():
        print(f"{name:22}{s:8.2f}{peak:10.0f}{s / nn:12.3f}{s / FLOOR_S:16.2f}")
    return results


def part_dice(data: Path, work: Path, budget_s: float, tools: list[str], nnunet_s_per_iter: float,
              iterations: int) -> dict:
    out, train_ids, val_ids = plan_autoseg(data, work)
    results = {}
    if "autoseg" in tools:
        run = train_autoseg(out, ["--recipe", "standard", "--time-budget", f"{budget_s}s",
                                  "--iterations-per-epoch", str(iterations),
                                  "--val-iterations", "5"], work, "dice")
        results["autoseg"] = (run["summary"]["foreground_mean_dice"], run["metrics"][-1]["train_seconds"],
                              sum(m["iterations"] for m in run["metrics"]), run["wall_s"])
    if "nnunet" in tools:
        steps = max(1, int(budget_s / nnunet_s_per_iter))
        epochs = max(1, round(steps / iterations))
        setup = prepare_nnunet(data, work / "nnunet-dice", train_ids, val_ids)
        run = train_nnunet(setup, epochs, iterations, 2)
        results["nnU-Net"] = (run.dice_fg, sum(run.epoch_s), epochs * iterations, run.wall_s)
    print(f"\nmean foreground Dice on fold 0's {len(val_ids)} validation cases after a {budget_s / 60:.0f}-minute "
          f"training budget:")
    print(f"{'':10}{'Dice':>8}{'train s':>10}{'iterations':>12}{'wall s (incl. validation)':>28}")
    for name, (dice, seconds, its, wall) in results.items():
        print(f"{name:10}{dice if dice is not None else float('nan'):8.4f}{seconds:10.0f}{its:12d}{wall:28.0f}")
    return results


def main() -> None:
    from autoseg.training.schedule import parse_duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("speed", "dice"), required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-train"))
    parser.add_argument("--iterations", type=int, default=None,
                        help="iterations per epoch (default: 15 for speed, 50 for dice)")
    parser.add_argument("--budget", default="30m")
    parser.add_argument("--tools", nargs="+", choices=("autoseg", "nnunet"), default=["autoseg", "nnunet"])
    parser.add_argument("--nnunet-s-per-iter", type=float, default=None,
                        help="nnU-Net's measured seconds per iteration, to size its schedule for the budget "
                             "(default: measured by a speed part in the same --work folder, else 11.0)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "speed":
        results = part_speed(args.data, args.work, args.iterations or 15)
        (args.work / "speed.json").write_text(json.dumps(results))
    else:
        s_per_iter = args.nnunet_s_per_iter
        if s_per_iter is None:
            speed = args.work / "speed.json"
            s_per_iter = json.loads(speed.read_text())["nnU-Net"][0] if speed.is_file() else 11.0
        part_dice(args.data, args.work, parse_duration(args.budget), args.tools, s_per_iter, args.iterations or 50)


if __name__ == "__main__":
    main()
