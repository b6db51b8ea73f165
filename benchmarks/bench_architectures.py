"""Network families at an equal CPU budget: the plain U-Net (nnU-Net's default, the anchor), the residual-encoder
U-Net (ResEnc M) and DeepLab (atrous deepest stages + ASPP), each with and without the dense CRF, on Hippocampus
fold 0, in one invocation.

    .venv/bin/python benchmarks/bench_architectures.py [--budget 30m] [--families plain resenc-m deeplab]
        [--data ../shared/data/Dataset004_Hippocampus] [--work /tmp/autoseg-bench-architectures]

One output folder is planned with `autoseg plan --families resenc-m deeplab` (the three networks on the same
preprocessed data: 3d_fullres, 3d_fullres@resenc-m, 3d_fullres@deeplab), and each trains fold 0 with
`--recipe budget --time-budget B --precision fp32`: the same rule sizes every family's width and batch for the
machine and the budget (recipe.json). Each validates the fold's 42 cases in their own geometry. Then:
- Dice: mean foreground Dice of that validation;
- + CRF: the CRF decision of find-best (autoseg.evaluation.crf_decision) on the same validation probabilities,
  and the Dice of the best of its eight settings (chosen on these same cases: an optimistic figure; the
  decision keeps it only when it raises the mean and lowers no class);
- s/iteration: the training iterations' time after the first epoch, from metrics.jsonl;
- peak MB: PSS of the training process tree (augmentation worker included), sampled every 0.5 s;
- parameters and GFLOP per training step (the network's forward + backward at the trained width, batch and
  patch, counted by torch.utils.flop_counter on the meta device, so nothing is computed);
and `autoseg find-best` over the trained families and their pairwise ensembles. CPU flags are printed.
Timings need the machine to themselves: nothing else should run beside this.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FAMILIES = ("plain", "resenc-m", "deeplab")  # this benchmark's default; bench_families.py runs every family
CLASSIC = ("fcn", "segnet", "vnet", "unetpp", "pspnet", "hrnet")
NAMES = {family: "3d_fullres" if family == "plain" else f"3d_fullres@{family}" for family in FAMILIES + CLASSIC}


def step_cost(fold: Path, configuration: str) -> tuple[int, float]:
    """(parameters, GFLOP of one training step) of the network this fold trained, at its batch and patch."""
    from autoseg.model.cost import network_cost
    from autoseg.planning.plan_types import load_plan

    plan = load_plan(fold / "plan.json")  # the recipe's width, batch and patch
    cost = network_cost(plan.configurations[configuration], len(plan.channel_names), plan.label_scheme.output_channels)
    return cost.parameters, cost.gflop_per_step


def crf_dice(out: Path, configuration: str) -> dict:
    from autoseg.dataset import load_dataset
    from autoseg.evaluation.crf_decision import CrfCase, decide_crf
    from autoseg.fingerprint import load_fingerprint
    from autoseg.model.outputs import PROBABILITIES_SUFFIX
    from autoseg.planning.plan_types import load_plan
    from autoseg.training.validation import SUMMARY

    plan = load_plan(out / "plan.json")
    folder = out / "models" / configuration / "fold_0" / "validation"
    dataset = load_dataset(load_fingerprint(out / "fingerprint.json").dataset_dir)
    files = {c.case_id: c for c in dataset.cases}
    cases = [CrfCase(c["case"], (folder / f"{c['case']}{PROBABILITIES_SUFFIX}",), files[c["case"]].image_files[0],
                     files[c["case"]].label_file) for c in json.loads((folder / SUMMARY).read_text())["cases"]]
    chosen, report = decide_crf(cases, plan.label_scheme, plan.normalization[0], workers=2, progress=False)

    def foreground(means):  # a class absent from every case has a NaN mean and no say, as in find-best
        defined = [v for v in means.values() if v == v]
        return sum(defined) / len(defined) if defined else float("nan")
    best = max(report["tried"], key=lambda t: foreground(t["dice"]))
    return {"without": foreground(report["dice_without"]), "best": foreground(best["dice"]),
            "best_settings": best["settings"], "kept": chosen is not None}


def measure(data: Path, work: Path, families, budget: str, *, crf: bool = True) -> dict:
    """Plan once, train each family for `budget`, validate, (CRF), find-best; prints and returns the rows."""
    from autoseg.model.device import cpu_info
    from autoseg.training.schedule import parse_duration

    budget_s = parse_duration(budget)
    work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cpus']} logical CPUs; "
          + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items()), flush=True)
    out = work / "autoseg"
    others = [f for f in families if f != "plain"]
    if not (out / "plan.json").is_file():
        _run([sys.executable, "-m", "autoseg", "plan", data, "-o", out, "--configs", "3d_fullres",
              *(["--families", *others] if others else []), "--preprocess", "-q"], work / "plan.log")
    rows = {}
    for family in families:
        configuration = NAMES[family]
        shutil.rmtree(out / "models" / configuration, ignore_errors=True)
        m = _run([sys.executable, "-m", "autoseg", "train", out, "--fold", "0", "--config", configuration, "-q",
                  "--recipe", "budget", "--time-budget", f"{budget_s}s", "--precision", "fp32"],
                 work / f"train-{family}.log")
        fold = out / "models" / configuration / "fold_0"
        metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
        warm = metrics[1:] or metrics
        recipe = json.loads((fold / "recipe.json").read_text())
        parameters, gflop = step_cost(fold, configuration)
        rows[family] = {
            "configuration": configuration,
            "dice": json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean_dice"],
            "crf": crf_dice(out, configuration) if crf else None, "iterations": sum(x["iterations"] for x in metrics),
            "s_per_iteration": sum(x["iterations_time_s"] for x in warm) / sum(x["iterations"] for x in warm),
            "peak_mb": m.peak_mb, "wall_s": m.wall_s, "parameters": parameters, "gflop_per_step": gflop,
            "recipe": {k: recipe[k] for k in ("width", "batch_size", "reason")}}
        r = rows[family]
        with_crf = f"+CRF {r['crf']['best']:.4f} (kept: {r['crf']['kept']})  " if crf else ""
        print(f"{family:9} Dice {r['dice']:.4f}  {with_crf}"
              f"{r['iterations']} it  {r['s_per_iteration']:.2f} s/it  peak {r['peak_mb']:.0f} MB  "
              f"{parameters / 1e6:.1f} M params  {gflop:.0f} GFLOP/step  width {recipe['width']} batch "
              f"{recipe['batch_size']}", flush=True)
        (work / "results.json").write_text(json.dumps({"cpu": cpu, "budget": budget, "rows": rows}, indent=1))
    _run([sys.executable, "-m", "autoseg", "find-best", out, "--workers", "2", "-q", *([] if crf else ["--no-crf"])],
         work / "find-best.log")
    choice = json.loads((out / "models" / "inference.json").read_text())
    print(f"\nHippocampus fold 0, budget {budget} each, budget recipe, fp32")
    print(f"{'family':10}{'Dice':>8}{'+CRF' if crf else '':>8}{'it':>7}{'s/it':>7}{'peak MB':>9}{'M params':>10}"
          f"{'GFLOP/step':>12}")
    for family, r in rows.items():
        print(f"{family:10}{r['dice']:8.4f}" + (f"{r['crf']['best']:8.4f}" if crf else " " * 8)
              + f"{r['iterations']:7d}{r['s_per_iteration']:7.2f}"
              f"{r['peak_mb']:9.0f}{r['parameters'] / 1e6:10.1f}{r['gflop_per_step']:12.0f}")
    print("\nfind-best (fold 0):")
    for c in choice["candidates"]:
        print(f"  {' + '.join(c['configurations']):45} {c['foreground_mean_dice']:.4f}")
    print(f"  chosen: {' + '.join(choice['configurations'])}; CRF: {choice['postprocessing']['crf']}")
    result = {"cpu": cpu, "budget": budget, "rows": rows, "find_best": choice}
    (work / "results.json").write_text(json.dumps(result, indent=1))
    return result


def arguments(doc: str, budget: str, families, work: str) -> argparse.Namespace:
    """The command line this benchmark and bench_families.py share, with their own defaults."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default=budget)
    parser.add_argument("--families", nargs="+", choices=families, default=list(families))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    parser.add_argument("--work", type=Path, default=Path(work))
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__, "30m", FAMILIES, "/tmp/autoseg-bench-architectures")
    measure(args.data, args.work, args.families, args.budget)


if __name__ == "__main__":
    main()
