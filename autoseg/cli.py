"""Command line: parses arguments and calls one function per subcommand."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoseg import __version__
from autoseg.errors import AutosegError, CasesFailed, DatasetInvalid
from autoseg.inference import INPUT_FORMATS, OUTPUT_TYPES
from autoseg.output_location import check_output_dir, writing_errors
from autoseg.planning.plan_types import CONFIGURATION_NAMES
from autoseg.planning.presets import ARCHITECTURE_PRESETS, PRESETS
from autoseg.cli_args import (add_instance_arguments, configuration_name, fold, instance_rule, label_target,
                              positive_float, positive_int, step)
from autoseg.cli_train import add_train_parser


def _describe_costs(plan) -> str:
    """Each planned network's parameters and GFLOP per training step, at its batch and patch."""
    from autoseg.model.cost import network_cost

    lines = []
    for name, config in plan.configurations.items():
        cost = network_cost(config, len(plan.channel_names), plan.label_scheme.output_channels)
        lines.append(f"{name:<20}{config.architecture} network: {cost.parameters / 1e6:.2f} M parameters, "
                     f"{cost.gflop_per_step:,.0f} GFLOP per training step (batch {config.batch_size})")
    return "\n".join(lines)


def _cmd_plan(args) -> int:
    from autoseg.planning.run import describe_plan, plan_dataset

    if (args.dataset_dir is None) == (args.fingerprint is None):
        raise AutosegError("give either DATASET_DIR or --fingerprint FILE (not both)")
    plan_from = None
    if args.plan_from is not None:
        from autoseg.model.weight_transfer import source_plan

        plan_from = source_plan(args.plan_from)
    if args.architecture is not None and args.preset is not None:
        raise AutosegError("give either --preset or --architecture (the family's default preset), not both")
    preset = ARCHITECTURE_PRESETS[args.architecture] if args.architecture else args.preset or "plain"
    result = plan_dataset(args.dataset_dir, args.output, args.fingerprint, args.workers, args.gpu_memory,
                          tuple(args.configs), progress=not args.quiet, plan_from=plan_from, preset=preset,
                          families=tuple(args.families))
    print(describe_plan(result.plan))
    if not args.quiet:  # a second or so per configuration: built and counted on the meta device
        print(_describe_costs(result.plan))
    report = result.report
    print(f"dataset report: {len(report.findings)} finding(s), {len(report.flagged_cases)} case(s) flagged "
          f"(informational) -> {result.report_path}, {result.overview_path}")
    for finding in report.findings:
        print(f"  {finding.message}")
    print(f"wrote {result.fingerprint_path} and {result.plan_path}")
    if args.preprocess:
        return _report_preprocess(args, result.output_dir, None, force=False)
    return 0


def _report_preprocess(args, output_dir, configs, force: bool) -> int:
    from autoseg.preprocessing import preprocess_dataset

    result = preprocess_dataset(output_dir, configs, args.workers, force,
                                progress=not args.quiet)
    for problem in result.failed:
        print(problem, file=sys.stderr)
    folders = ", ".join(sorted({str(f) for f in result.folders.values()}))
    print(f"preprocessed {result.processed} case(s), {result.skipped} already up to date -> {folders}")
    if result.failed:
        print(f"autoseg: error: {len(result.failed)} problem(s); the other cases were preprocessed", file=sys.stderr)
        return 1
    return 0


def _cmd_preprocess(args) -> int:
    return _report_preprocess(args, args.output_dir, args.configs, args.force)


def _cmd_predict(args) -> int:
    from autoseg.inference.parts import parse_part
    from autoseg.inference.predict import SUMMARY_FILE, PredictOptions, predict

    options = PredictOptions(configuration=args.config, folds=args.folds, mirror=not args.no_tta, step=args.step,
                             device=args.device, precision=args.precision, save_probabilities=args.save_probabilities,
                             workers=args.workers, skip_existing=args.resume, progress=not args.quiet,
                             strict=args.strict, preview=args.preview,
                             part=parse_part(args.part) if args.part else None,
                             output_type=args.output_type, input_format=args.input_format, series=args.series,
                             channel_series=args.channel_series, prune_depth=args.prune_depth,
                             instances=instance_rule(args))
    result = predict(args.input, args.output, args.models, options)
    skipped = f", {len(result.skipped)} already done" if result.skipped else ""
    print(f"predicted {len(result.written)} case(s){skipped} -> {result.output_dir}")
    if result.failed:
        print(f"autoseg: error: {len(result.failed)} case(s) failed: {', '.join(sorted(result.failed))} "
              f"(details in {result.output_dir / SUMMARY_FILE})", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args) -> int:
    from autoseg.model.package import ExportOptions, export_package, format_card

    card = export_package(args.output_dir, args.output,
                          ExportOptions(args.config, args.folds, half=args.half, description=args.description or ""))
    print(format_card(card), end="")
    print(f"written: {args.output}")
    return 0


def _cmd_info(args) -> int:
    from autoseg.model.package import model_card_text

    print(model_card_text(args.package), end="")
    return 0


def _cmd_serve(args) -> int:
    import tempfile

    from autoseg.serve import ServeOptions, serve

    check_output_dir(args.temp_dir or tempfile.gettempdir(), what="temp folder")
    serve(args.package, ServeOptions(host=args.host, port=args.port, workers=args.workers, max_queue=args.max_queue,
                                     max_request_mb=args.max_request_mb, timeout_s=args.timeout,
                                     device=args.device, mirror=not args.no_tta, temp_dir=args.temp_dir))
    return 0


def _cmd_evaluate(args) -> int:
    from autoseg.evaluation.evaluate import SUMMARY_FILE, evaluate_folder

    output = args.output or str(Path(args.pred_dir) / SUMMARY_FILE)
    summary = evaluate_folder(args.pred_dir, args.ref_dir, args.labels, output, args.tolerance, args.workers,
                              progress=not args.quiet, surface_convention=args.surface,
                              ignore_label=args.ignore_label, instances=instance_rule(args))
    print(f"{'label':>8}{'Dice':>8}{'IoU':>8}{'HD95 mm':>10}{'NSD':>8}   ({summary['num_cases']} cases, "
          f"NSD at {summary['tolerance_mm']:g} mm, surface {summary['surface_convention']})")
    rows = [(label, m) for label, m in summary["mean"].items()] + [("fg mean", summary["foreground_mean"])]
    for label, m in rows:
        print(f"{label:>8}" + "".join(f"{m[k]:{w}.{d}f}" for k, w, d in
                                     (("dice", 8, 4), ("iou", 8, 4), ("hd95", 10, 2), ("nsd", 8, 4))))
    if "instances" in summary:
        lesions = summary["instances"]
        print(f"lesion-wise ({lesions['connectivity']} connectivity, matched at IoU >= {lesions['match_iou']:g}, "
              f"instances of at least {lesions['min_volume_mm3']:g} mm^3):")
        print(f"{'label':>8}{'TP':>6}{'FP':>6}{'FN':>6}{'prec':>8}{'recall':>8}{'F1':>8}{'l-Dice':>8}{'PQ':>8}")
        for label, m in lesions["per_class"].items():
            print(f"{label:>8}{m['tp']:6d}{m['fp']:6d}{m['fn']:6d}" + "".join(
                f"{m[k]:8.4f}" for k in ("precision", "recall", "f1", "lesion_dice", "pq")))
    print(f"-> {output}, {Path(output).parent / 'cases.csv'}, {Path(output).parent / 'boxplots.png'}"
          + (f", {Path(output).parent / 'instances.csv'}" if "instances" in summary else ""))
    return 0


def _cmd_find_best(args) -> int:
    from autoseg.evaluation.find_best import find_best, format_candidates
    from autoseg.model.trained import INFERENCE_FILE

    choice = find_best(args.output_dir, args.configs, args.workers, progress=not args.quiet,
                       tolerance_mm=args.tolerance, crf=not args.no_crf)
    print(format_candidates(choice))
    print(f"-> {Path(args.output_dir) / 'models' / INFERENCE_FILE}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoseg", description="Self-configuring 3D medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    plan = sub.add_parser(
        "plan", help="fingerprint a dataset and write fingerprint.json + plan.json",
        description="Validate and fingerprint a dataset folder (nnU-Net v2 raw or Medical Segmentation Decathlon "
                    "layout), then plan spacing, patch and batch size, network topology and configurations. "
                    "With --fingerprint, re-plan from an existing fingerprint without reading images.")
    plan.add_argument("dataset_dir", nargs="?", metavar="DATASET_DIR", help="folder with dataset.json")
    plan.add_argument("-o", "--output", metavar="OUTPUT_DIR",
                      help="where to write (default: DATASET_DIR.autoseg beside the dataset, or the "
                           "fingerprint's folder with --fingerprint)")
    plan.add_argument("--fingerprint", metavar="FILE", help="re-plan from this fingerprint.json")
    plan.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: CPU count, max 8)")
    plan.add_argument("--gpu-memory", type=positive_float, default=None, metavar="GB",
                      help="GPU memory budget the patch and batch size are sized for (default: the preset's: 24 "
                           "for resenc-l, 40 for resenc-xl, 8 for the others)")
    plan.add_argument("--preset", choices=tuple(PRESETS), default=None,
                      help="network: plain (nnU-Net's default U-Net; default), nnU-Net's residual-encoder presets "
                           "resenc-m / resenc-l / resenc-xl, deeplab, or a classic family: fcn, segnet, vnet, unetpp, "
                           "pspnet, hrnet (docs/architectures.md)")
    plan.add_argument("--families", nargs="+", choices=tuple(PRESETS), default=[], metavar="PRESET",
                      help="also plan these presets' networks beside 2d and 3d_fullres, on the same preprocessed data, "
                           "as configurations <configuration>@<preset> (e.g. 3d_fullres@deeplab) to train and let "
                           "find-best compare")
    plan.add_argument("--architecture", choices=tuple(ARCHITECTURE_PRESETS), default=None,
                      help="the network family at its default memory target: plain, resenc (= resenc-m), deeplab "
                           "(atrous deepest stages + ASPP), fcn, segnet, vnet, unetpp, pspnet or hrnet "
                           "(docs/architectures.md)")
    plan.add_argument("--configs", nargs="+", choices=CONFIGURATION_NAMES, default=list(CONFIGURATION_NAMES),
                      metavar="NAME", help=f"configurations to plan (default: all that apply; {', '.join(CONFIGURATION_NAMES)})")
    plan.add_argument("--plan-from", metavar="SOURCE", default=None,
                      help="keep another model's network, spacing and normalization (CT statistics included) so its "
                           "weights fit `autoseg train --init-from`: a plan.json, an output folder, a trained fold "
                           "folder, a models/ folder or a package (the last three: the network as trained); labels "
                           "and new channels are planned for this dataset")
    plan.add_argument("--preprocess", action="store_true", help="preprocess all planned configurations afterwards")
    plan.add_argument("-q", "--quiet", action="store_true",
                      help="no progress bar, and no table of the networks' parameters and FLOPs")
    plan.set_defaults(func=_cmd_plan)

    pre = sub.add_parser(
        "preprocess", help="turn a planned dataset into training-ready cases",
        description="Transpose, crop to nonzero, normalize and resample every case as plan.json says, into "
                    "OUTPUT_DIR/preprocessed/<configuration>/. Reruns skip cases that are already up to date, "
                    "so an interrupted run continues where it stopped.")
    pre.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder with plan.json (written by autoseg plan)")
    pre.add_argument("--configs", nargs="+", type=configuration_name, default=None, metavar="NAME",
                     help="configurations to preprocess (default: all in the plan)")
    pre.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: CPU count, max 8)")
    pre.add_argument("--force", action="store_true", help="redo every case, even those up to date")
    pre.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_cmd_preprocess)

    add_train_parser(sub)

    pr = sub.add_parser(
        "predict", help="segment new scans with a trained model",
        description="Predict label maps for the scans in INPUT (a folder of {case}_{XXXX}<ending> channel files "
                    "or single 3D/4D files, one file, or a folder of DICOM series searched recursively, each series "
                    "a case, written back as DICOM SEG: docs/dicom.md) with the trained folds of a configuration: sliding "
                    "window with Gaussian weighting, mirroring, fold averaging. Each output has the exact shape "
                    "and geometry of its input scan. Cases that fail are listed; the others still complete.")
    pr.add_argument("-i", "--input", required=True, metavar="INPUT", help="scan file or folder of scans")
    pr.add_argument("-o", "--output", required=True, metavar="OUTPUT_DIR", help="folder for the label maps")
    pr.add_argument("-m", "--models", required=True, metavar="MODEL",
                    help="a model package (autoseg export) or a training folder's OUTPUT_DIR/models")
    pr.add_argument("--config", default=None, type=configuration_name, metavar="NAME",
                    help="configuration (default: find-best's choice, else the only trained one, else 3d_fullres)")
    pr.add_argument("--folds", nargs="+", type=fold, default=None, metavar="K",
                    help="folds to average (default: every fold with a final checkpoint)")
    pr.add_argument("--no-tta", action="store_true", help="no mirroring (about 8x faster in 3D)")
    pr.add_argument("--step", type=step, default=0.5, help="tile stride as a fraction of the patch (default 0.5)")
    add_instance_arguments(pr, "also number each lesion instance (a 26-connected component of one label): "
                                "CASE_instances.nii.gz beside the label map, and each instance's label, volume, "
                                "centroid (mm and voxel) and bounding box in the case report (docs/instances.md)")
    pr.add_argument("--prune-depth", type=positive_int, default=None, metavar="D",
                    help="UNet++ only: predict with its nested sub-network of depth D (fewer nodes, same weights; "
                         "docs/architectures.md measures what it costs and saves)")
    pr.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                    help="default: auto = cuda, else mps, else cpu")
    pr.add_argument("--save-probabilities", action="store_true",
                    help="also write {case}_probabilities.npz and an entropy map {case}_entropy<ending>")
    pr.add_argument("--workers", type=positive_int, default=None,
                    help="threads reading/preprocessing and restoring/writing cases beside the network (default 1)")
    pr.add_argument("--continue", dest="resume", action="store_true",
                    help="skip cases whose outputs already exist (a killed run's finished cases)")
    pr.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="auto (default): fp16 on CUDA, bf16 on CPUs with native bfloat16, else fp32")
    pr.add_argument("--strict", action="store_true",
                    help="fail a case whose input checks warn (spacing, size, intensities unlike the training scans)")
    pr.add_argument("--preview", action="store_true",
                    help="also write {case}_preview.png: three orthogonal slices with the labels overlaid")
    pr.add_argument("--part", default=None, metavar="K/N",
                    help="predict only the K-th of N shares of the cases (several machines over one folder)")
    pr.add_argument("--output-type", default="auto", choices=OUTPUT_TYPES,
                    help="nifti: label maps; dicom-seg: {case}.seg.dcm (DICOM input); both; auto (default): "
                         "dicom-seg for DICOM input, else nifti")
    pr.add_argument("--input-format", default="auto", choices=INPUT_FORMATS,
                    help="auto (default): dicom when INPUT holds DICOM files and no image files")
    pr.add_argument("--series", nargs="+", default=None, metavar="UID",
                    help="DICOM: predict only these SeriesInstanceUIDs")
    pr.add_argument("--channel-series", type=Path, default=None, metavar="FILE",
                    help='DICOM, multi-channel models: JSON {"case id": ["series UID of channel 0", ...]}')
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser(
        "export", help="pack a trained model into one file for prediction anywhere",
        description="Write one file with everything prediction needs: plans, weights of each fold, the "
                    "postprocessing and find-best choice, label and channel names, the training summary used "
                    "by the input checks, a model card, and a manifest with the sha256 of every member.")
    ex.add_argument("output_dir", metavar="OUTPUT_DIR", help="the training folder (with plan.json and models/)")
    ex.add_argument("-o", "--output", required=True, metavar="FILE", help="the package to write, e.g. model.autoseg")
    ex.add_argument("--config", default=None, type=configuration_name, metavar="NAME",
                    help="configuration (default: find-best's choice, else the only trained one, else 3d_fullres)")
    ex.add_argument("--folds", nargs="+", type=fold, default=None, metavar="K",
                    help="folds to include (default: every fold with a final checkpoint)")
    ex.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    ex.add_argument("--description", default=None, metavar="TEXT", help="free text for the model card")
    ex.set_defaults(func=_cmd_export)

    inf = sub.add_parser("info", help="print a model package's card",
                         description="Verify a model package and print its model card.")
    inf.add_argument("package", metavar="FILE", help="a model package")
    inf.set_defaults(func=_cmd_info)

    sv = sub.add_parser(
        "serve", help="answer predictions over HTTP (needs the serve extra)",
        description="Load a model package once and serve POST /predict, GET /health and GET /model. Binds to "
                    "127.0.0.1 unless --host says otherwise. Needs `pip install autoseg[serve]`.")
    sv.add_argument("package", metavar="MODEL", help="a model package (or a training folder's models/)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--workers", type=positive_int, default=2,
                    help="threads reading and writing requests beside the network (default 2)")
    sv.add_argument("--max-queue", type=positive_int, default=8, metavar="N",
                    help="requests waiting or running before new ones get 503 (default 8)")
    sv.add_argument("--max-request-mb", type=positive_float, default=512.0, metavar="MB",
                    help="largest accepted upload (default 512)")
    sv.add_argument("--timeout", type=positive_float, default=600.0, metavar="SECONDS",
                    help="a request still unanswered after this gets 504 (default 600)")
    sv.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    sv.add_argument("--no-tta", action="store_true", help="no mirroring")
    sv.add_argument("--temp-dir", default=None, help=argparse.SUPPRESS)  # parent of the server's temp folder (tests)
    sv.set_defaults(func=_cmd_serve)

    ev = sub.add_parser(
        "evaluate", help="score predicted label maps against references",
        description="Per case and class: Dice, IoU, TP/FP/FN voxels, predicted and reference volume (mm^3), "
                    "95th-percentile Hausdorff distance and normalized surface Dice in mm. Writes summary.json, "
                    "cases.csv and boxplots.png. Every reference needs a prediction of the same name and grid.")
    ev.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted label maps")
    ev.add_argument("ref_dir", metavar="REF_DIR", help="folder of reference label maps (same file names)")
    ev.add_argument("--labels", nargs="+", type=label_target, default=None, metavar="VALUE",
                    help="label values to score (default: every nonzero value present); a region is its values "
                         "joined by commas, e.g. --labels 1,2,3 2,3 3 (BraTS whole tumour, core, enhancing)")
    ev.add_argument("--ignore-label", type=int, default=None, metavar="VALUE",
                    help="reference voxels with this value are unannotated and count nowhere (sparse labels)")
    ev.add_argument("-o", "--output", default=None, metavar="FILE", help="summary path (default PRED_DIR/summary.json)")
    ev.add_argument("--tolerance", type=positive_float, default=1.0, metavar="MM",
                    help="normalized surface Dice tolerance in mm (default 1); distances within 1e-6 relative "
                         "of it count, since NIfTI spacing is float32")
    ev.add_argument("--surface", choices=("elements", "voxels"), default="elements",
                    help="surface convention of HD95 and NSD: 'elements' = surface elements weighted by area "
                         "(Nikolov et al. 2021, DeepMind's surface-distance, as MSD and FLARE; default), "
                         "'voxels' = border voxels (MetricsReloaded)")
    add_instance_arguments(ev, "also lesion-wise metrics: instances (26-connected components per label) matched "
                                "at IoU >= 0.5; TP/FP/FN, precision, recall, F1, lesion-wise Dice, panoptic quality "
                                "(docs/instances.md); written to summary.json and instances.csv")
    ev.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: CPU count, max 8)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_evaluate)

    fb = sub.add_parser(
        "find-best", help="pick the configuration (or ensemble) to predict with, and its postprocessing",
        description="Evaluate each trained configuration's cross-validation predictions and every pairwise "
                    "ensemble, pick the best mean foreground Dice (ties to the simpler), decide its "
                    "postprocessing (a dense CRF, then connected components; each kept only where it helps), and "
                    "write OUTPUT_DIR/models/inference.json for autoseg predict.")
    fb.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder with plan.json and models/")
    fb.add_argument("--configs", nargs="+", type=configuration_name, default=None, metavar="NAME",
                    help="configurations to consider (default: every one with a validated fold)")
    fb.add_argument("--tolerance", type=positive_float, default=1.0, metavar="MM",
                    help="normalized surface Dice tolerance in mm (default 1)")
    fb.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: CPU count, max 8)")
    fb.add_argument("--no-crf", action="store_true",
                    help="do not try a dense CRF (it costs a few mean-field passes per case and setting)")
    fb.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fb.set_defaults(func=_cmd_find_best)
    return parser


def _output_hint(args) -> str | None:
    """What a command writes, for an OS error that names no file (a bare write() on a full disk)."""
    for name in ("output", "output_dir", "temp_dir"):
        value = getattr(args, name, None)
        if value is not None:
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with writing_errors(_output_hint(args)):
            return args.func(args)
    except (DatasetInvalid, CasesFailed) as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"autoseg: error: {e}", file=sys.stderr)
        return 1
    except AutosegError as e:
        print(f"autoseg: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoseg: interrupted", file=sys.stderr)
        return 130
