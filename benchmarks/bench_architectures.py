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
NAMES = {"plain": "3d_fullres", "resenc-m": "3d_fullres@resenc-m", "deeplab": "3d_fullres@deeplab"}


def step_cost(fold: Path, configuration: str) -> tuple[int, float]:
    """(parameters, GFLOP of one training step) of the network this fold trained, at its batch and patch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from autoseg.model.network import build_network
    from autoseg.planning.plan_types import load_plan

    plan = load_plan(fold / "plan.json")  # the recipe's width, batch and patch
    config = plan.configurations[configuration]
    channels = len(plan.channel_names)
    classes = plan.label_scheme.output_channels
    with torch.device("meta"):
        network = build_network(config, channels, classes, deep_supervision=True).train()
        data = torch.empty(config.batch_size, channels, *config.patch_size)
    with FlopCounterMode(display=False) as counter:  # the loss's own arithmetic is negligible beside the network's
        sum(output.sum() for output in network(data)).backward()
    return sum(p.numel() for p in network.parameters()), counter.get_total_flops() / 1e9


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


def main() -> None:
    from autoseg.model.device import cpu_info
    from autoseg.training.schedule import parse_duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="30m")
    parser.add_argument("--families", nargs="+", choices=tuple(NAMES), default=list(NAMES))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-architectures"))
    args = parser.parse_args()
    budget_s = parse_duration(args.budget)
    args.work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cpus']} logical CPUs; "
          + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items()), flush=True)
    out = args.work / "autoseg"
    others = [f for f in args.families if f != "plain"]
    if not (out / "plan.json").is_file():
        _run([sys.executable, "-m", "autoseg", "plan", args.data, "-o", out, "--configs", "3d_fullres",
              *(["--families", *others] if others else []), "--preprocess", "-q"], args.work / "plan.log")
    rows = {}
    for family in args.families:
        configuration = NAMES[family]
        shutil.rmtree(out / "models" / configuration, ignore_errors=True)
        m = _run([sys.executable, "-m", "autoseg", "train", out, "--fold", "0", "--config", configuration, "-q",
                  "--recipe", "budget", "--time-budget", f"{budget_s}s", "--precision", "fp32"],
                 args.work / f"train-{family}.log")
        fold = out / "models" / configuration / "fold_0"
        metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
        warm = metrics[1:] or metrics
        recipe = json.loads((fold / "recipe.json").read_text())
        parameters, gflop = step_cost(fold, configuration)
        rows[family] = {
            "configuration": configuration,
            "dice": json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean_dice"],
            "crf": crf_dice(out, configuration), "iterations": sum(x["iterations"] for x in metrics),
            "s_per_iteration": sum(x["iterations_time_s"] for x in warm) / sum(x["iterations"] for x in warm),
            "peak_mb": m.peak_mb, "wall_s": m.wall_s, "parameters": parameters, "gflop_per_step": gflop,
            "recipe": {k: recipe[k] for k in ("width", "batch_size", "reason")}}
        r = rows[family]
        print(f"{family:9} Dice {r['dice']:.4f}  +CRF {r['crf']['best']:.4f} (kept: {r['crf']['kept']})  "
              f"{r['iterations']} it  {r['s_per_iteration']:.2f} s/it  peak {r['peak_mb']:.0f} MB  "
              f"{parameters / 1e6:.1f} M params  {gflop:.0f} GFLOP/step  width {recipe['width']} batch "
              f"{recipe['batch_size']}", flush=True)
        (args.work / "architectures.json").write_text(json.dumps({"cpu": cpu, "budget": args.budget, "rows": rows},
                                                                 indent=1))
    _run([sys.executable, "-m", "autoseg", "find-best", out, "--workers", "2", "-q"], args.work / "find-best.log")
    choice = json.loads((out / "models" / "inference.json").read_text())
    print(f"\nHippocampus fold 0, budget {args.budget} each, budget recipe, fp32")
    print(f"{'family':10}{'Dice':>8}{'+CRF':>8}{'it':>7}{'s/it':>7}{'peak MB':>9}{'M params':>10}{'GFLOP/step':>12}")
    for family, r in rows.items():
        print(f"{family:10}{r['dice']:8.4f}{r['crf']['best']:8.4f}{r['iterations']:7d}{r['s_per_iteration']:7.2f}"
              f"{r['peak_mb']:9.0f}{r['parameters'] / 1e6:10.1f}{r['gflop_per_step']:12.0f}")
    print("\nfind-best (fold 0):")
    for c in choice["candidates"]:
        print(f"  {' + '.join(c['configurations']):45} {c['foreground_mean_dice']:.4f}")
    print(f"  chosen: {' + '.join(choice['configurations'])}; CRF: {choice['postprocessing']['crf']}")
    (args.work / "architectures.json").write_text(json.dumps({"cpu": cpu, "budget": args.budget, "rows": rows,
                                                             "find_best": choice}, indent=1))


if __name__ == "__main__":
    main()
