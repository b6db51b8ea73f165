"""Argument types the subcommands share: each turns one command-line word into a value or a one-line error."""
from __future__ import annotations

import argparse

from autoseg.errors import AutosegError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def duration(text: str) -> float:
    from autoseg.training.schedule import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return seconds


def fold(text: str) -> str:
    if text != "all" and not (text.isdigit()):
        raise argparse.ArgumentTypeError(f"a fold number or 'all', got {text!r}")
    return text


def step(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction of the patch in (0, 1], got {text!r}")
    return value


def label_target(text: str):
    """A label value '2', or a region's values '1,2,3'."""
    from autoseg.label_scheme import parse_target

    try:
        target = parse_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if any(v < 1 for v in target.values):
        raise argparse.ArgumentTypeError(f"foreground values are 1 or more, got {text!r}")
    return target


def configuration_name(text: str) -> str:
    """2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres, or a family variant planned with --families
    (e.g. 3d_fullres@deeplab)."""
    from autoseg.planning.plan_types import is_configuration_name

    if not is_configuration_name(text):
        raise argparse.ArgumentTypeError(f"unknown configuration {text!r} (2d, 3d_fullres, 3d_lowres, "
                                         f"3d_cascade_fullres, or 2d / 3d_fullres@<preset>)")
    return text


def instance_rule(args):
    """--instances [--min-instance-volume MM3] as the rule autoseg.instances applies, or None."""
    from autoseg.instances import InstanceRule

    if args.min_instance_volume is not None and not args.instances:
        raise AutosegError("--min-instance-volume applies to --instances; add --instances")
    return InstanceRule(args.min_instance_volume or 0.0) if args.instances else None


def add_instance_arguments(parser, help_instances: str) -> None:
    parser.add_argument("--instances", action="store_true", help=help_instances)
    parser.add_argument("--min-instance-volume", type=non_negative_float, default=None, metavar="MM3",
                        help="with --instances: components smaller than this are not instances (default 0: all)")
