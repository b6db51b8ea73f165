"""Preprocessing: autoseg vs nnU-Net v2 on the same planned dataset, in one run.

    .venv/bin/python benchmarks/bench_preprocess.py [--part hippocampus|ct|all] [--workers 2] [--repeats 1]
        [--data ../shared/data/Dataset004_Hippocampus] [--ct-cache /tmp/autoseg-bench-data]

Per tool, planning is untimed setup (autoseg plan / nnUNetv2_extract_fingerprint +
nnUNetv2_plan_experiment); each timed step preprocesses a fresh copy of the planned folder
(autoseg preprocess / nnUNetv2_preprocess) as a fresh process with the same number of workers.
Part "hippocampus": 3d_fullres + 2d in one command, then each config alone. Part "ct": one
synthetic 512x512x400 CT case that must be resampled, plus two small ones (synthetic_ct.py),
3d_fullres only. Peak memory is the largest summed PSS (proportional set size) of the process tree. Prints medians of
the repeats and the ratios autoseg / nnU-Net (targets: wall <= 1/3, peak memory <= 1/2).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Measurement, run_measured  # noqa: E402
from nnunet_env import VENV, ensure_nnunet, nnunet_env, fingerprint_and_plan_commands, link_raw_dataset  # noqa: E402
from synthetic_ct import write_ct_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("autoseg", "nnU-Net")


def plan_autoseg(data: Path, work: Path, workers: int):
    """Untimed plan; return preprocess(configs, fresh_dir) -> Measurement."""
    planned = work / "planned"
    run_measured([sys.executable, "-m", "autoseg", "plan", str(data), "-o", str(planned), "-q",
                  "--workers", str(workers)])

    def preprocess(configs: list[str], fresh: Path) -> Measurement:
        shutil.copytree(planned, fresh)
        return run_measured([sys.executable, "-m", "autoseg", "preprocess", str(fresh), "--configs", *configs,
                             "--workers", str(workers)])
    return preprocess


def plan_nnunet(data: Path, work: Path, workers: int):
    """Untimed fingerprint + plan; return preprocess(configs, fresh_dir) -> Measurement."""
    raw, planned, results, dataset_id = link_raw_dataset(data, work, "planned")
    env = nnunet_env(raw, planned, results)
    for cmd in fingerprint_and_plan_commands(dataset_id, workers):
        run_measured(cmd, env)

    def preprocess(configs: list[str], fresh: Path) -> Measurement:
        shutil.copytree(planned, fresh)
        return run_measured([str(VENV / "bin" / "nnUNetv2_preprocess"), "-d", dataset_id, "-c", *configs,
                             "-np", *[str(workers)] * len(configs)], nnunet_env(raw, fresh, results))
    return preprocess


def bench_part(data: Path, variants: list[list[str]], workers: int, repeats: int) -> dict:
    """{tool: {variant name: [Measurement]} or 'failed: <one line>'}."""
    out: dict = {tool: {"+".join(v): [] for v in variants} for tool in TOOLS}
    for i in range(repeats):
        for tool, plan in zip(TOOLS, (plan_autoseg, plan_nnunet)):
            if isinstance(out[tool], str):
                continue
            with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
                try:
                    preprocess = plan(data, Path(tmp), workers)
                    for v in variants:
                        m = preprocess(v, Path(tmp) / "+".join(v))
                        out[tool]["+".join(v)].append(m)
                        print(f"run {i + 1} {tool:8} {'+'.join(v):16} {m.wall_s:8.2f} s {m.peak_mb:7.0f} MB",
                              flush=True)
                except RuntimeError as e:
                    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                    out[tool] = f"failed: {lines[-1] if lines else e}"
                    print(f"run {i + 1} {tool:8} {out[tool]}", flush=True)
    return out


def report(part: str, data: Path, variants: list[list[str]], res: dict, args) -> str:
    print(f"\n{part}: {data.name}, workers: {args.workers}, repeats: {args.repeats} (medians)")
    print(f"{'configs':18}{'tool':10}{'wall s':>10}{'peak MB':>10}")
    headline = "ratio wall n/a, peak memory n/a"
    for j, v in enumerate(map("+".join, variants)):
        med = {}
        for tool in TOOLS:
            if isinstance(res[tool], str):
                print(f"{v:18}{tool:10}  {res[tool]}")
            else:
                runs = res[tool][v]
                med[tool] = (statistics.median(m.wall_s for m in runs), statistics.median(m.peak_mb for m in runs))
                print(f"{v:18}{tool:10}{med[tool][0]:>10.2f}{med[tool][1]:>10.0f}")
        if len(med) == 2:
            (aw, am), (nw, nm) = med["autoseg"], med["nnU-Net"]
            print(f"{v:18}{'ratio':10}{aw / nw:>10.3f}{am / nm:>10.3f}")
            if j == 0:
                headline = f"ratio wall {aw / nw:.3f}, peak memory {am / nm:.3f}"
    return f"{part} ({'+'.join(variants[0])}): {headline} (targets 0.333 / 0.5)"


def main() -> None:
    parser = argparse.ArgumentParser(description="autoseg vs nnU-Net v2: preprocessing")
    parser.add_argument("--part", choices=("hippocampus", "ct", "all"), default="all")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--ct-cache", type=Path, default=Path("/tmp/autoseg-bench-data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    ensure_nnunet()
    parts = []
    if args.part in ("hippocampus", "all"):
        if not (args.data / "dataset.json").is_file():
            sys.exit(f"bench_preprocess: {args.data}: no dataset.json (pass --data)")
        parts.append(("hippocampus", args.data, [["3d_fullres", "2d"], ["3d_fullres"], ["2d"]]))
    if args.part in ("ct", "all"):
        start = time.perf_counter()
        ct = write_ct_dataset(args.ct_cache)
        print(f"synthetic CT dataset: {ct} ({time.perf_counter() - start:.1f} s)", flush=True)
        parts.append(("ct", ct, [["3d_fullres"]]))
    results = [(part, data, variants, bench_part(data, variants, args.workers, args.repeats))
               for part, data, variants in parts]
    summary = [report(part, data, variants, res, args) for part, data, variants, res in results]
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
