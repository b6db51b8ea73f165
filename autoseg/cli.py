"""Command line: parses arguments and calls one function per subcommand."""
from __future__ import annotations

import argparse
import sys

from autoseg import __version__
from autoseg.errors import AutosegError, DatasetInvalid
from autoseg.planning.plan_types import CONFIGURATION_NAMES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _cmd_plan(args) -> int:
    from autoseg.planning.run import describe_plan, plan_dataset

    if (args.dataset_dir is None) == (args.fingerprint is None):
        raise AutosegError("give either DATASET_DIR or --fingerprint FILE (not both)")
    result = plan_dataset(args.dataset_dir, args.output, args.fingerprint, args.workers, args.gpu_memory,
                          tuple(args.configs), progress=not args.quiet)
    print(describe_plan(result.plan))
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
    plan.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: CPU count, max 8)")
    plan.add_argument("--gpu-memory", type=_positive_float, default=8.0, metavar="GB",
                      help="GPU memory budget the patch and batch size are sized for (default: 8)")
    plan.add_argument("--configs", nargs="+", choices=CONFIGURATION_NAMES, default=list(CONFIGURATION_NAMES),
                      metavar="NAME", help=f"configurations to plan (default: all that apply; {', '.join(CONFIGURATION_NAMES)})")
    plan.add_argument("--preprocess", action="store_true", help="preprocess all planned configurations afterwards")
    plan.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    plan.set_defaults(func=_cmd_plan)

    pre = sub.add_parser(
        "preprocess", help="turn a planned dataset into training-ready cases",
        description="Transpose, crop to nonzero, normalize and resample every case as plan.json says, into "
                    "OUTPUT_DIR/preprocessed/<configuration>/. Reruns skip cases that are already up to date, "
                    "so an interrupted run continues where it stopped.")
    pre.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder with plan.json (written by autoseg plan)")
    pre.add_argument("--configs", nargs="+", choices=CONFIGURATION_NAMES, default=None, metavar="NAME",
                     help="configurations to preprocess (default: all in the plan)")
    pre.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: CPU count, max 8)")
    pre.add_argument("--force", action="store_true", help="redo every case, even those up to date")
    pre.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_cmd_preprocess)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DatasetInvalid as e:
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
