"""Fingerprint + plan: autoseg vs nnU-Net v2 on the same dataset, in one run.

    .venv/bin/python benchmarks/bench_plan.py [--data ../shared/data/Dataset004_Hippocampus] [--workers 2] [--repeats 3]

Both run as fresh processes (imports count for both) with the same number of worker
processes; nnU-Net's time is nnUNetv2_extract_fingerprint + nnUNetv2_plan_experiment.
Peak memory is the largest summed PSS (proportional set size) of each tool's process tree. Prints the median of
the repeats and the ratios autoseg / nnU-Net.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Measurement, run_measured  # noqa: E402
from nnunet_env import ensure_nnunet, fingerprint_and_plan_commands, link_raw_dataset, nnunet_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_autoseg(data: Path, out: Path, workers: int) -> Measurement:
    return run_measured([sys.executable, "-m", "autoseg", "plan", str(data), "-o", str(out), "-q",
                         "--workers", str(workers)])


def run_nnunet(data: Path, work: Path, workers: int) -> Measurement:
    raw, pre, res, dataset_id = link_raw_dataset(data, work)
    env = nnunet_env(raw, pre, res)
    fp, plan = (run_measured(cmd, env) for cmd in fingerprint_and_plan_commands(dataset_id, workers))
    return Measurement(fp.wall_s + plan.wall_s, max(fp.peak_mb, plan.peak_mb))


def main() -> None:
    parser = argparse.ArgumentParser(description="autoseg vs nnU-Net v2: fingerprint + plan")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.data / "dataset.json").is_file():
        sys.exit(f"bench_plan: {args.data}: no dataset.json (pass --data)")
    ensure_nnunet()
    ours, theirs = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
            ours.append(run_autoseg(args.data, Path(tmp) / "autoseg", args.workers))
            theirs.append(run_nnunet(args.data, Path(tmp) / "nnunet", args.workers))
        print(f"run {i + 1}: autoseg {ours[-1].wall_s:.2f} s {ours[-1].peak_mb:.0f} MB | "
              f"nnU-Net {theirs[-1].wall_s:.2f} s {theirs[-1].peak_mb:.0f} MB", flush=True)
    a_wall = statistics.median(m.wall_s for m in ours)
    n_wall = statistics.median(m.wall_s for m in theirs)
    a_mem = statistics.median(m.peak_mb for m in ours)
    n_mem = statistics.median(m.peak_mb for m in theirs)
    print(f"\ndataset: {args.data.name}, workers: {args.workers}, repeats: {args.repeats} (medians)")
    print(f"{'':10}{'wall s':>10}{'peak MB':>10}")
    print(f"{'autoseg':10}{a_wall:>10.2f}{a_mem:>10.0f}")
    print(f"{'nnU-Net':10}{n_wall:>10.2f}{n_mem:>10.0f}")
    print(f"{'ratio':10}{a_wall / n_wall:>10.3f}{a_mem / n_mem:>10.3f}   (autoseg / nnU-Net; target wall <= 0.333)")


if __name__ == "__main__":
    main()
