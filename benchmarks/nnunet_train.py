"""nnU-Net v2 side of the CPU training benchmark (stdlib only; nnU-Net runs in its own venv).

    .venv/bin/python benchmarks/nnunet_train.py --smoke [--data ../shared/data/Dataset004_Hippocampus]

prepare_nnunet() plans and preprocesses 3d_fullres and pins fold 0 to given train/val cases;
train_nnunet() runs nnUNetv2_train on the CPU with a short schedule through a tiny trainer
subclass (install_trainer()) and returns per-epoch times, wall time, peak memory and the Dice
of nnU-Net's own final validation. The smoke mode runs all of it with 1 epoch x 2 iterations.

CPU notes (nnunetv2 2.8.1): `-device cpu` sets torch threads to the CPU count, turns off
torch.compile, AMP and pin_memory; nothing else changes. nnU-Net looks a trainer up by importing
the modules under nnunetv2/training/nnUNetTrainer/, top-level modules before sub-packages. The
primus/ sub-package imports timm -> torchvision, whose CUDA build fails next to the CPU torch
("operator torchvision::nms does not exist"), so our trainer lives at the top level and is found
before primus/ is ever imported. No other nnU-Net training code imports torchvision.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Measurement, run_measured, tree_rss_kb  # noqa: E402
from nnunet_env import VENV, ensure_nnunet, fingerprint_and_plan_commands, link_raw_dataset, nnunet_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAINER = "nnUNetTrainer_autosegBench"
CONFIG = "3d_fullres"
_TRAIN_TIME = "autoseg-bench train time:"

# Reads the schedule from the environment so one installed class serves every benchmark run;
# unset variables keep nnU-Net's defaults. The poly LR schedule follows num_epochs by itself.
# "train time" covers only the training iterations of an epoch ("Epoch time" adds the
# validation iterations).
_TRAINER_SOURCE = f'''\
"""Installed by autoseg benchmarks/nnunet_train.py: nnUNetTrainer with a schedule from env vars."""
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {TRAINER}(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        env = os.environ
        self.num_epochs = int(env.get("AUTOSEG_BENCH_EPOCHS", self.num_epochs))
        self.num_iterations_per_epoch = int(env.get("AUTOSEG_BENCH_ITERS", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(env.get("AUTOSEG_BENCH_VAL_ITERS", self.num_val_iterations_per_epoch))

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._bench_t0 = time.perf_counter()

    def on_train_epoch_end(self, train_outputs):
        self.print_to_log_file(f"{_TRAIN_TIME} {{time.perf_counter() - self._bench_t0:.3f}} s")
        super().on_train_epoch_end(train_outputs)
'''


@dataclass
class NnunetSetup:
    raw: Path
    preprocessed: Path
    results: Path
    dataset_id: str
    dataset_name: str
    workers: int  # nnU-Net's default process count (final validation export and metrics)
    batch_size: int  # of the 3d_fullres plan, for comparing like with like
    patch_size: list[int]


@dataclass
class NnunetRun:
    wall_s: float  # the whole nnUNetv2_train process: start-up, training, final validation
    peak_mb: float
    iterations: int
    epoch_s: list[float]  # nnU-Net's "Epoch time": training + validation iterations
    train_s: list[float]  # training iterations only
    final_val_s: float | None  # "Training done." -> "Validation complete" in the log
    dice_fg: float | None  # foreground_mean Dice of validation/summary.json
    dice_per_class: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False
    output: Path | None = None  # fold_0 folder

    @property
    def s_per_iter(self) -> float | None:
        """Mean seconds per training iteration, first (warm-up) epoch excluded; None with < 2 epochs."""
        warm = self.train_s[1:]
        return sum(warm) / (len(warm) * self.iterations) if warm else None


def _trainer_dir() -> Path:
    found = sorted(VENV.glob("lib/python3*/site-packages/nnunetv2/training/nnUNetTrainer"))
    if not found:
        raise RuntimeError(f"nnunetv2 not installed in {VENV}")
    return found[-1]


def install_trainer() -> str:
    """Write the benchmark trainer into the venv's nnunetv2 package (idempotent); return its name."""
    ensure_nnunet()
    path = _trainer_dir() / f"{TRAINER}.py"
    if not path.is_file() or path.read_text() != _TRAINER_SOURCE:
        path.write_text(_TRAINER_SOURCE)
    return TRAINER


def prepare_nnunet(data: Path, work: Path, fold_train: list[str], fold_val: list[str],
                   workers: int = 2) -> NnunetSetup:
    """Fingerprint, plan and preprocess `data` (nnU-Net raw layout) under the fresh folder `work`,
    then write splits_final.json so that fold 0 trains on `fold_train` and validates on `fold_val`."""
    ensure_nnunet()
    raw, pre, res, dataset_id = link_raw_dataset(Path(data), Path(work))
    env = nnunet_env(raw, pre, res)
    for cmd in fingerprint_and_plan_commands(dataset_id, workers):
        run_measured(cmd, env)
    run_measured([str(VENV / "bin" / "nnUNetv2_preprocess"), "-d", dataset_id, "-c", CONFIG,
                  "-np", str(workers)], env)

    folder = pre / Path(data).name
    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    cases = {p.name[:-len(ending)] for p in (folder / "gt_segmentations").glob(f"*{ending}")}
    unknown = sorted((set(fold_train) | set(fold_val)) - cases)
    if unknown or set(fold_train) & set(fold_val) or not fold_train or not fold_val:
        raise ValueError(f"bad fold: unknown cases {unknown[:5]}, overlap "
                         f"{sorted(set(fold_train) & set(fold_val))[:5]}, sizes {len(fold_train)}/{len(fold_val)}")
    # A single entry is enough: nnU-Net only reads the requested fold.
    (folder / "splits_final.json").write_text(
        json.dumps([{"train": sorted(fold_train), "val": sorted(fold_val)}], indent=1))
    plan = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"][CONFIG]
    return NnunetSetup(raw, pre, res, dataset_id, Path(data).name, workers, plan["batch_size"], plan["patch_size"])


def run_measured_timeout(cmd: list[str], env: dict, log: Path, timeout_s: float | None,
                          poll_s: float, stop_when=None) -> tuple[Measurement, bool]:
    """run_measured with a time limit: on expiry the whole process group is killed; returns (m, timed_out).

    Reading PSS walks the page tables (~12 ms per GB-sized process), so measure.py's 20 ms poll
    would take most of a core from a training run on a 2-core machine; hence the slower poll_s.
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        # Own session so that a timeout also ends the augmentation and export workers.
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peak, timed_out, stopped = 0, False, False
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid))
        stopped = stop_when is not None and stop_when()
        if stopped or (timeout_s is not None and time.perf_counter() - start > timeout_s):
            timed_out = not stopped
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            break
        time.sleep(poll_s)
    wall = time.perf_counter() - start
    if proc.returncode != 0 and not (timed_out or stopped):
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return Measurement(wall, peak / 1024), timed_out


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?): (.*)$")


def parse_training_log(fold_dir: Path) -> dict:
    """Epoch/train times and the final validation's duration from nnU-Net's training_log_<date>.txt."""
    logs = sorted(fold_dir.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    out = {"epoch_s": [], "train_s": [], "final_val_s": None}
    if not logs:
        return out
    done = None
    for line in logs[-1].read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        stamp, msg = datetime.fromisoformat(m[1]), m[2].strip()
        if msg.startswith("Epoch time:"):
            out["epoch_s"].append(float(msg.split()[2]))
        elif msg.startswith(_TRAIN_TIME):
            out["train_s"].append(float(msg[len(_TRAIN_TIME):].split()[0]))
        elif msg == "Training done.":
            done = stamp
        elif msg.startswith("Validation complete") and done is not None:
            out["final_val_s"] = (stamp - done).total_seconds()
    return out


def train_nnunet(setup: NnunetSetup, epochs: int, iterations: int, val_iterations: int,
                 timeout_s: float | None = None, da_workers: int = 1, poll_s: float = 0.5,
                 stop_after_training: bool = False) -> NnunetRun:
    """nnUNetv2_train fold 0 on the CPU with the given schedule (val_iterations >= 1), measured.
    stop_after_training: end it when its log says "Training done" (no final validation).

    `da_workers` is nnUNet_n_proc_DA (augmentation worker processes; 0 = in the main process).
    After a timeout the run holds whatever epochs finished and no Dice. Peak memory is sampled
    every `poll_s` seconds.
    """
    trainer = install_trainer()
    fold_dir = (setup.results / setup.dataset_name / f"{trainer}__nnUNetPlans__{CONFIG}" / "fold_0")
    shutil.rmtree(fold_dir, ignore_errors=True)  # a stale log or summary must not be parsed
    env = nnunet_env(setup.raw, setup.preprocessed, setup.results)
    env.update(AUTOSEG_BENCH_EPOCHS=str(epochs), AUTOSEG_BENCH_ITERS=str(iterations),
               AUTOSEG_BENCH_VAL_ITERS=str(val_iterations), nnUNet_n_proc_DA=str(da_workers),
               nnUNet_def_n_proc=str(setup.workers))  # default 8 export/metric processes on 2 cores
    # Checkpoint files are not training work; the final validation uses the in-memory network.
    cmd = [str(VENV / "bin" / "nnUNetv2_train"), setup.dataset_id, CONFIG, "0", "-tr", trainer,
           "-device", "cpu", "--disable_checkpointing"]
    setup.results.mkdir(parents=True, exist_ok=True)
    log_path = setup.results / f"nnUNetv2_train_{trainer}.log"

    def training_done() -> bool:
        return stop_after_training and "Training done" in log_path.read_text(errors="replace")

    m, timed_out = run_measured_timeout(cmd, env, log_path, timeout_s, poll_s, training_done)

    log = parse_training_log(fold_dir)
    summary = fold_dir / "validation" / "summary.json"
    dice_fg, per_class = None, {}
    if summary.is_file():
        s = json.loads(summary.read_text())
        dice_fg = s["foreground_mean"]["Dice"]
        per_class = {label: v["Dice"] for label, v in s["mean"].items()}
    return NnunetRun(m.wall_s, m.peak_mb, iterations, log["epoch_s"], log["train_s"], log["final_val_s"],
                     dice_fg, per_class, timed_out, fold_dir)


def _smoke_split(data: Path, max_val: int) -> tuple[list[str], list[str]]:
    """Sorted case ids, every 5th to validation (at most max_val of them, the rest left out)."""
    ending = json.loads((data / "dataset.json").read_text())["file_ending"]
    cases = sorted(p.name[:-len(ending)] for p in (data / "labelsTr").glob(f"*{ending}"))
    return [c for i, c in enumerate(cases) if i % 5], cases[::5][:max_val]


def main() -> None:
    parser = argparse.ArgumentParser(description="nnU-Net v2 CPU training (benchmark helper)")
    parser.add_argument("--smoke", action="store_true", required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--val-iterations", type=int, default=1)
    parser.add_argument("--max-val", type=int, default=3, help="validation cases (final validation cost)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args()
    train, val = _smoke_split(args.data, args.max_val)
    with tempfile.TemporaryDirectory(prefix="nnunet-train-smoke-") as tmp:
        start = time.perf_counter()
        setup = prepare_nnunet(args.data, Path(tmp), train, val, args.workers)
        print(f"prepared {setup.dataset_name} ({len(train)} train / {len(val)} val, batch {setup.batch_size}, "
              f"patch {setup.patch_size}) in {time.perf_counter() - start:.1f} s", flush=True)
        run = train_nnunet(setup, args.epochs, args.iterations, args.val_iterations, args.timeout)
    print(f"wall {run.wall_s:.1f} s, peak {run.peak_mb:.0f} MB, timed out: {run.timed_out}")
    print(f"epoch times {run.epoch_s} s, train times {run.train_s} s, "
          f"s/iter (after warm-up) {run.s_per_iter}")
    print(f"final validation {run.final_val_s} s, foreground Dice {run.dice_fg}, per class {run.dice_per_class}")


if __name__ == "__main__":
    main()
