"""CPU prediction: autoseg vs nnU-Net v2 with models of the same architecture, side by side in one run.

    .venv/bin/python benchmarks/bench_predict.py [--part hippocampus|ct|all] [--cases 20]
        [--work /tmp/autoseg-bench-predict] [--data ../shared/data/Dataset004_Hippocampus]

Part "hippocampus": the first N (default 20) validation cases of fold 0 of autoseg's splits.json,
predicted on the CPU by each tool's 3d_fullres fold-0 model (both plans are the same: patch
40x56x40, same U-Net), with and without test-time mirroring. Each setting runs twice per tool: all
N cases in one command, and the first case alone. Reported per tool: wall time of the N-case
command, the single-case end-to-end wall (what a pipeline calling the tool on one scan sees:
start-up, model loading, one case), the steady-state seconds per case
(wall N - wall 1) / (N - 1), peak memory, and the mean foreground Dice against labelsTr (a sanity
check only; the models are trained briefly). Targets: autoseg's wall at most 1/2 of nnU-Net's
with TTA, at most 1/3 without.

Part "ct": a synthetic CT dataset (synthetic_ct.write_ct_predict_dataset: five 128x128x64 training
cases at 1.6 x 1.6 x 3.0 mm) planned and preprocessed by each tool itself (3d_fullres), trained for
1 iteration (the weights do not matter: this part is about memory), then one 512x512x300 test scan
at 0.8 x 0.8 x 1.5 mm predicted without mirroring (mirroring adds no full-volume buffer in either
tool, only 8x the network time; --ct-tta turns it on). The network sees the scan resampled to
256x256x150, and each tool restores its output to the scan's 512x512x300 grid. Reported: peak memory
(target: autoseg at most 1/2 of nnU-Net's) and wall time.

Models: autoseg's Hippocampus model is copied from the training benchmark
(/tmp/autoseg-bench-train/autoseg-speed-auto-model, with that run's splits.json) when there, else
planned and trained here for 1 epoch of --train-iterations iterations. nnU-Net's training benchmark
keeps no checkpoint (--disable_checkpointing), so nnU-Net is planned, preprocessed and trained here
for 1 epoch of --train-iterations iterations on the same training cases (its final validation on 2
of the validation cases is part of nnUNetv2_train and untimed here). Trained models stay in the
work folder and are reused by later runs (delete the folder to retrain).

Settings: both tools on the CPU with their own default thread count (2 torch threads here) and
precision (autoseg: bf16 autocast on CPUs with native bfloat16, else fp32; nnU-Net: fp32, no
torch.compile). nnU-Net runs with -npp 1 -nps 1: one preprocessing and one export process beside the
network, the same pipeline shape as autoseg's default of one reading and one writing thread; its
defaults (3 + 3 processes) would only oversubscribe 2 cores and add a process with torch loaded for
each. Peak memory is the largest summed PSS of the process tree, sampled every 0.5 s (Hippocampus)
or 0.25 s (CT); reading PSS walks page tables, so sampling faster would take CPU from the run
being timed. Both tools' imports are warmed up (page cache) once before the timed runs. A tool
that fails, times out or leaves a case without output stops the benchmark. Results go to
WORK/results-<part>.json; each command's output to WORK/logs/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nnunet_env import NNUNET_SPEC, VENV, ensure_nnunet, link_raw_dataset, nnunet_env  # noqa: E402
from nnunet_train import CONFIG, install_trainer, prepare_nnunet, run_measured_timeout  # noqa: E402
from synthetic_ct import PREDICT_TEST, PREDICT_TEST_CASE, write_ct_predict_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN_WORK = Path("/tmp/autoseg-bench-train")  # bench_train.py's default work folder
TOOLS = ("autoseg", "nnU-Net")
ENDING = ".nii.gz"
TARGETS = {"hippocampus TTA": 0.5, "hippocampus no TTA": 1 / 3, "ct memory": 0.5}


class Bench:
    def __init__(self, args):
        self.args = args
        self.logs = args.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, cmd, name: str, env: dict | None = None, poll_s: float = 0.5) -> dict:
        """Run cmd measured (wall, peak PSS of the tree); raise with the log's tail on failure or timeout."""
        log = self.logs / f"{name}.log"
        m, timed_out = run_measured_timeout([str(c) for c in cmd], env, log, self.args.timeout, poll_s)
        if timed_out:
            raise RuntimeError(f"{name}: timed out after {self.args.timeout:.0f} s (output in {log})")
        return {"wall_s": m.wall_s, "peak_mb": m.peak_mb}


# --- models -----------------------------------------------------------------------------------

def _nnunet_fold_dir(results: Path, dataset_name: str) -> Path:
    return results / dataset_name / f"{install_trainer()}__nnUNetPlans__{CONFIG}" / "fold_0"


def train_nnunet_checkpointed(bench: Bench, data: Path, work: Path, train_ids: list[str], val_ids: list[str],
                              iterations: int, name: str) -> dict:
    """nnU-Net's fold-0 model under `work` (reused when its checkpoint_final.pth exists, else planned,
    preprocessed and trained for 1 epoch of `iterations`); returns where it is and how it was made."""
    info_path = work / "model-info.json"
    raw, pre, res, dataset_id = link_raw_dataset(data, work)
    fold_dir = _nnunet_fold_dir(res, data.name)
    if not (fold_dir / "checkpoint_final.pth").is_file() or not info_path.is_file():
        start = time.perf_counter()
        prepare_nnunet(data, work, train_ids, val_ids)
        shutil.rmtree(fold_dir, ignore_errors=True)
        env = nnunet_env(raw, pre, res)
        env.update(AUTOSEG_BENCH_EPOCHS="1", AUTOSEG_BENCH_ITERS=str(iterations), AUTOSEG_BENCH_VAL_ITERS="1",
                   nnUNet_n_proc_DA="1", nnUNet_def_n_proc="2")
        train = bench.run([VENV / "bin" / "nnUNetv2_train", dataset_id, CONFIG, "0", "-tr", install_trainer(),
                           "-device", "cpu"], f"{name}-nnunet-train", env)
        if not (fold_dir / "checkpoint_final.pth").is_file():
            raise RuntimeError(f"nnUNetv2_train wrote no {fold_dir / 'checkpoint_final.pth'}")
        info = {"source": f"trained here: 1 epoch x {iterations} iterations on {len(train_ids)} cases",
                "iterations": iterations, "setup_s": time.perf_counter() - start, "train": train}
        info_path.write_text(json.dumps(info, indent=1))
        print(f"nnU-Net {name} model: {info['source']} ({info['setup_s']:.0f} s incl. planning)", flush=True)
    info = json.loads(info_path.read_text())
    plan = json.loads((fold_dir.parent / "plans.json").read_text())["configurations"][CONFIG]
    info.update(env=nnunet_env(raw, pre, res), dataset_id=dataset_id, fold_dir=str(fold_dir),
                patch_size=plan["patch_size"], batch_size=plan["batch_size"], spacing=plan["spacing"])
    return info


def autoseg_model(bench: Bench, data: Path, out: Path, iterations: int, name: str,
                  reuse: Path | None = None) -> dict:
    """autoseg's fold-0 model in out/models (reused when there; else copied from `reuse`, a trained fold
    folder whose splits.json is in its parent's autoseg/ folder; else planned and trained here)."""
    fold = out / "models" / CONFIG / "fold_0"
    info_path = out / "model-info.json"
    if not (fold / "checkpoint_final.pt").is_file() or not info_path.is_file():
        shutil.rmtree(out, ignore_errors=True)
        splits = reuse.parent / "autoseg" / "splits.json" if reuse else None
        if reuse and (reuse / "checkpoint_final.pt").is_file() and splits.is_file():
            fold.mkdir(parents=True)
            shutil.copy2(splits, out / "splits.json")
            for f in ("plan.json", "metrics.jsonl", "options.json", "training.log", "checkpoint_final.pt"):
                if (reuse / f).is_file():
                    shutil.copy2(reuse / f, fold / f)
            source = f"copied from {reuse}"
            setup = None
        else:
            start = time.perf_counter()
            bench.run([sys.executable, "-m", "autoseg", "plan", data, "-o", out, "--configs", CONFIG,
                       "--preprocess", "-q"], f"{name}-autoseg-plan")
            bench.run([sys.executable, "-m", "autoseg", "train", out, "--fold", "0", "--epochs", "1",
                       "--iterations-per-epoch", str(iterations), "--val-iterations", "1", "--no-validation",
                       "--device", "cpu", "-q"], f"{name}-autoseg-train")
            source = f"trained here: 1 epoch x {iterations} iterations"
            setup = time.perf_counter() - start
        metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines() if line.strip()]
        info = {"source": source, "iterations": sum(m.get("iterations", 0) for m in metrics), "setup_s": setup}
        info_path.write_text(json.dumps(info, indent=1))
        print(f"autoseg {name} model: {source} ({info['iterations']} iterations)", flush=True)
    info = json.loads(info_path.read_text())
    plan = json.loads((fold / "plan.json").read_text())["configurations"][CONFIG]
    splits = json.loads((out / "splits.json").read_text())
    info.update(models=str(out / "models"), train_ids=splits[0]["train"], val_ids=splits[0]["val"],
                patch_size=plan["patch_size"], batch_size=plan["batch_size"], spacing=plan["spacing"])
    return info


# --- prediction -------------------------------------------------------------------------------

def warm_up(bench: Bench) -> None:
    """Untimed imports of both tools' prediction code, so neither timed run pays for a cold page cache."""
    bench.run([sys.executable, "-c", "import torch, autoseg.inference.predict"], "warm-up-autoseg")
    bench.run([VENV / "bin" / "python", "-c", "import torch, nnunetv2.inference.predict_from_raw_data"],
              "warm-up-nnunet")


def predict(bench: Bench, tool: str, inputs: Path, out: Path, tta: bool, a_model: dict, n_model: dict,
            name: str, poll_s: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if tool == "autoseg":
        cmd = [sys.executable, "-m", "autoseg", "predict", "-i", inputs, "-o", out, "-m", a_model["models"],
               "--config", CONFIG, "--folds", "0", "--device", "cpu", "-q"] + ([] if tta else ["--no-tta"])
        return bench.run(cmd, name, None, poll_s)
    cmd = [VENV / "bin" / "nnUNetv2_predict", "-i", inputs, "-o", out, "-d", n_model["dataset_id"], "-c", CONFIG,
           "-f", "0", "-tr", install_trainer(), "-device", "cpu", "-npp", str(bench.args.nnunet_npp),
           "-nps", str(bench.args.nnunet_nps), "--disable_progress_bar"] + ([] if tta else ["--disable_tta"])
    return bench.run(cmd, name, n_model["env"], poll_s)


def check_outputs(tool: str, out: Path, cases: list[str], scans: dict[str, Path]) -> None:
    """Every case has an output in its scan's geometry (size, spacing, origin, direction), or the benchmark stops."""
    for case in cases:
        path = out / f"{case}{ENDING}"
        if not path.is_file():
            raise RuntimeError(f"{tool} wrote no {path}")
        got, want = _geometry(path), _geometry(scans[case])
        if got[0] != want[0] or not all(np.allclose(g, w, atol=1e-3) for g, w in zip(got[1:], want[1:])):
            raise RuntimeError(f"{tool}: {path} has geometry {got}, its scan {scans[case]} {want}")


def _geometry(path: Path) -> tuple:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize()), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def mean_dice(pred: Path, labels: Path, cases: list[str], classes: list[int]) -> tuple[float, float]:
    """(mean over cases of the mean Dice over foreground classes, a class absent from both skipped;
    predicted foreground voxels / reference foreground voxels over all cases)."""
    per_case, fg_pred, fg_ref = [], 0, 0
    for case in cases:
        p = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{case}{ENDING}")))
        g = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / f"{case}{ENDING}")))
        fg_pred, fg_ref = fg_pred + int((p > 0).sum()), fg_ref + int((g > 0).sum())
        scores = []
        for k in classes:
            a, b = p == k, g == k
            denom = int(a.sum()) + int(b.sum())
            if denom:
                scores.append(2 * int((a & b).sum()) / denom)
        per_case.append(float(np.mean(scores)) if scores else float("nan"))
    return float(np.mean(per_case)), fg_pred / max(fg_ref, 1)


def _link_inputs(folder: Path, images: Path, cases: list[str]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in cases:
        (folder / f"{case}_0000{ENDING}").symlink_to((images / f"{case}_0000{ENDING}").resolve())
    return folder


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _ratio(a, b) -> float:
    return a / b if a is not None and b else float("nan")


# --- parts ------------------------------------------------------------------------------------

def part_hippocampus(bench: Bench) -> dict:
    args = bench.args
    data, work = args.data, args.work / "hippocampus"
    if not (data / "dataset.json").is_file():
        sys.exit(f"bench_predict: {data}: no dataset.json (pass --data)")
    reuse = TRAIN_WORK / "autoseg-speed-auto-model"
    a_model = autoseg_model(bench, data, work / "autoseg", args.train_iterations, "hippocampus",
                            reuse if args.reuse_train_model else None)
    cases = sorted(a_model["val_ids"])[:args.cases]
    if len(cases) < 2:
        sys.exit("bench_predict: --cases must be at least 2 (steady-state latency needs two runs)")
    n_model = train_nnunet_checkpointed(bench, data, work / "nnunet", a_model["train_ids"],
                                        sorted(a_model["val_ids"])[:2], args.train_iterations, "hippocampus")
    if a_model["patch_size"] != n_model["patch_size"] or a_model["batch_size"] != n_model["batch_size"]:
        print(f"WARNING: plans differ: autoseg patch {a_model['patch_size']}, nnU-Net {n_model['patch_size']}")
    classes = sorted(v for v in json.loads((data / "dataset.json").read_text())["labels"].values() if v)
    scans = {c: data / "imagesTr" / f"{c}_0000{ENDING}" for c in cases}
    inputs = {len(cases): _link_inputs(work / "input-all", data / "imagesTr", cases),
              1: _link_inputs(work / "input-one", data / "imagesTr", cases[:1])}
    warm_up(bench)
    runs: dict = {}  # (tool, tta, n) -> [measurements]
    for rep in range(args.repeats):
        for tta in (True, False):
            for n, folder in inputs.items():
                for tool in TOOLS:
                    name = f"hippocampus-{'autoseg' if tool == 'autoseg' else 'nnunet'}-{'tta' if tta else 'notta'}-{n}"
                    out = work / "predictions" / name
                    m = predict(bench, tool, folder, out, tta, a_model, n_model, f"{name}-run{rep + 1}", 0.5)
                    check_outputs(tool, out, cases[:n], scans)
                    runs.setdefault((tool, tta, n), []).append(m)
                    print(f"run {rep + 1} {tool:8} TTA {'on ' if tta else 'off'} {n:3d} case(s) "
                          f"{m['wall_s']:8.2f} s {m['peak_mb']:7.0f} MB", flush=True)
    n_all = len(cases)
    table: dict = {}
    for tta in (True, False):
        for tool in TOOLS:
            name = f"hippocampus-{'autoseg' if tool == 'autoseg' else 'nnunet'}-{'tta' if tta else 'notta'}-{n_all}"
            wall_n, wall_1 = _median(runs[(tool, tta, n_all)], "wall_s"), _median(runs[(tool, tta, 1)], "wall_s")
            peak = max(_median(runs[(tool, tta, n)], "peak_mb") for n in inputs)
            dice, fg = mean_dice(work / "predictions" / name, data / "labelsTr", cases, classes)
            table[(tool, tta)] = {"wall_n_s": wall_n, "wall_1_s": wall_1, "s_per_case": (wall_n - wall_1) / (n_all - 1),
                                  "peak_mb": peak, "dice": dice, "foreground_volume_ratio": fg}

    print(f"\nhippocampus: {n_all} validation cases of fold 0, CPU ({args.repeats} run(s), medians); "
          f"nnU-Net -npp {args.nnunet_npp} -nps {args.nnunet_nps}")
    print(f"models: autoseg {a_model['source']} ({a_model['iterations']} iterations); nnU-Net {n_model['source']}; "
          f"patch {a_model['patch_size']} / {n_model['patch_size']}")
    print("outputs: every case written by both tools, in its scan's geometry (size, spacing, origin, direction)")
    print(f"{'TTA':5}{'':10}{f'wall {n_all} s':>12}{'1-case s':>10}{'s/case':>9}{'peak MB':>9}{'Dice':>8}"
          f"{'fg vol':>8}")
    summary = []
    for tta in (True, False):
        a, n = table[("autoseg", tta)], table[("nnU-Net", tta)]
        for tool, row in (("autoseg", a), ("nnU-Net", n)):
            print(f"{'on' if tta else 'off':5}{tool:10}{row['wall_n_s']:12.2f}{row['wall_1_s']:10.2f}"
                  f"{row['s_per_case']:9.3f}{row['peak_mb']:9.0f}{row['dice']:8.4f}"
                  f"{row['foreground_volume_ratio']:8.3f}")
        ratios = {k: _ratio(a[k], n[k]) for k in ("wall_n_s", "wall_1_s", "s_per_case", "peak_mb")}
        table[("ratio", tta)] = ratios
        print(f"{'on' if tta else 'off':5}{'ratio':10}{ratios['wall_n_s']:12.3f}{ratios['wall_1_s']:10.3f}"
              f"{ratios['s_per_case']:9.3f}{ratios['peak_mb']:9.3f}")
        target = TARGETS["hippocampus TTA" if tta else "hippocampus no TTA"]
        summary.append(f"hippocampus TTA {'on ' if tta else 'off'}: wall ratio {ratios['wall_n_s']:.3f} "
                       f"(target <= {target:.3f}: {'met' if ratios['wall_n_s'] <= target else 'NOT met'}), "
                       f"per case {ratios['s_per_case']:.3f}, single case {ratios['wall_1_s']:.3f}")
    print("s/case: steady state, (wall N - wall 1) / (N - 1); 1-case: one scan end to end, start-up included; "
          "fg vol: predicted / reference foreground voxels (Dice and fg vol only check the outputs: the models "
          "are briefly trained)")
    result = {"cases": cases, "repeats": args.repeats, "nnunet_npp": args.nnunet_npp, "nnunet_nps": args.nnunet_nps,
              "autoseg_model": {k: v for k, v in a_model.items() if k not in ("train_ids", "val_ids")},
              "nnunet_model": {k: v for k, v in n_model.items() if k != "env"},
              "runs": [{"tool": t, "tta": tta, "cases": n, "measurements": ms} for (t, tta, n), ms in runs.items()],
              "table": [{"tool": t, "tta": tta, **row} for (t, tta), row in table.items()],
              "summary": summary}
    (args.work / "results-hippocampus.json").write_text(json.dumps(result, indent=1))
    return result


def part_ct(bench: Bench) -> dict:
    args = bench.args
    work = args.work / "ct"
    start = time.perf_counter()
    data, test = write_ct_predict_dataset(args.ct_cache)
    print(f"synthetic CT: {data} + {test} ({time.perf_counter() - start:.1f} s)", flush=True)
    a_model = autoseg_model(bench, data, work / "autoseg", 1, "ct")
    n_model = train_nnunet_checkpointed(bench, data, work / "nnunet", a_model["train_ids"], a_model["val_ids"], 1,
                                        "ct")
    shape = PREDICT_TEST[0]
    scans = {PREDICT_TEST_CASE: test / f"{PREDICT_TEST_CASE}_0000{ENDING}"}
    warm_up(bench)
    runs: dict = {}
    for rep in range(args.repeats):
        for tool in TOOLS:
            name = f"ct-{'autoseg' if tool == 'autoseg' else 'nnunet'}"
            out = work / "predictions" / name
            m = predict(bench, tool, test, out, args.ct_tta, a_model, n_model, f"{name}-run{rep + 1}", 0.25)
            check_outputs(tool, out, [PREDICT_TEST_CASE], scans)
            runs.setdefault(tool, []).append(m)
            print(f"run {rep + 1} {tool:8} {m['wall_s']:8.2f} s {m['peak_mb']:7.0f} MB", flush=True)
    med = {t: {"wall_s": _median(runs[t], "wall_s"), "peak_mb": _median(runs[t], "peak_mb")} for t in TOOLS}
    ratios = {k: _ratio(med["autoseg"][k], med["nnU-Net"][k]) for k in ("wall_s", "peak_mb")}
    scan = "x".join(map(str, shape))
    print(f"\nct: one {scan} scan at {PREDICT_TEST[1]} mm, 3d_fullres, TTA {'on' if args.ct_tta else 'off'}, CPU "
          f"({args.repeats} run(s), medians); nnU-Net -npp {args.nnunet_npp} -nps {args.nnunet_nps}")
    for tool, model in (("autoseg", a_model), ("nnU-Net", n_model)):
        spacing = "x".join(f"{v:g}" for v in np.round(model["spacing"], 3))
        print(f"{tool:8} plan: spacing {spacing} mm, patch {model['patch_size']}, batch {model['batch_size']} "
              f"(model: {model['source']})")
    print(f"{'':10}{'wall s':>10}{'peak MB':>10}")
    for tool in TOOLS:
        print(f"{tool:10}{med[tool]['wall_s']:10.2f}{med[tool]['peak_mb']:10.0f}")
    print(f"{'ratio':10}{ratios['wall_s']:10.3f}{ratios['peak_mb']:10.3f}")
    target = TARGETS["ct memory"]
    summary = [f"ct {scan}: peak memory ratio {ratios['peak_mb']:.3f} (target <= {target:.3f}: "
               f"{'met' if ratios['peak_mb'] <= target else 'NOT met'}), wall ratio {ratios['wall_s']:.3f}"]
    result = {"scan": {"shape_xyz": shape, "spacing_xyz": PREDICT_TEST[1]}, "tta": args.ct_tta,
              "repeats": args.repeats, "nnunet_npp": args.nnunet_npp, "nnunet_nps": args.nnunet_nps,
              "autoseg_model": {k: v for k, v in a_model.items() if k not in ("train_ids", "val_ids")},
              "nnunet_model": {k: v for k, v in n_model.items() if k != "env"},
              "runs": runs, "medians": med, "ratios": ratios, "summary": summary}
    (args.work / "results-ct.json").write_text(json.dumps(result, indent=1))
    return result


def autoseg_version() -> str:
    """The commit benchmarked, and whether autoseg/ differs from it (results of a dirty tree are not that commit's)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "autoseg")
    return f"{head}{' + uncommitted changes in autoseg/' if dirty else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("hippocampus", "ct", "all"), default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-predict"))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--cases", type=int, default=20, help="validation cases of fold 0 to predict (default 20)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each setting (medians reported)")
    parser.add_argument("--train-iterations", type=int, default=20,
                        help="Hippocampus training iterations where a model is trained here (default 20)")
    parser.add_argument("--no-reuse", dest="reuse_train_model", action="store_false",
                        help=f"train autoseg's Hippocampus model here instead of copying it from {TRAIN_WORK}")
    parser.add_argument("--ct-cache", type=Path, default=Path("/tmp/autoseg-bench-data"))
    parser.add_argument("--ct-tta", action="store_true", help="mirroring in the CT part too (8x the network time)")
    parser.add_argument("--nnunet-npp", type=int, default=1, help="nnUNetv2_predict -npp (default 1)")
    parser.add_argument("--nnunet-nps", type=int, default=1, help="nnUNetv2_predict -nps (default 1)")
    parser.add_argument("--timeout", type=float, default=2400, help="limit per command in seconds")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ensure_nnunet()
    bench = Bench(args)
    version = autoseg_version()
    print(f"autoseg {version}; {NNUNET_SPEC} in {VENV}", flush=True)
    (args.work / "version.txt").write_text(version + "\n")
    start = time.perf_counter()
    summary = []
    if args.part in ("hippocampus", "all"):
        summary += part_hippocampus(bench)["summary"]
    if args.part in ("ct", "all"):
        summary += part_ct(bench)["summary"]
    print(f"\nsummary (autoseg / nnU-Net; total {(time.perf_counter() - start) / 60:.1f} min):")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
