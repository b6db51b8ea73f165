"""`autoseg train`: its flags (the most of any command) and the call to autoseg.training.loop.train."""
from __future__ import annotations

import argparse

from autoseg.cli_args import configuration_name, duration, fold, positive_float, positive_int
from autoseg.training.options import TrainOptions


def run_train(args) -> int:
    from autoseg.training.loop import train

    options = TrainOptions(epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                           validation_iterations=args.val_iterations, time_budget_s=args.time_budget,
                           recipe=args.recipe, width=args.width, augmentation=args.augmentation,
                           optimizer=args.optimizer,
                           initial_lr=args.lr, warmup=args.warmup, batch_size=args.batch_size, seed=args.seed,
                           precision=args.precision, memory_limit_gb=args.memory_limit,
                           tensorboard=args.tensorboard, init_from=args.init_from)
    result = train(args.output_dir, args.fold, args.config, options, args.device, args.workers, args.resume,
                   progress=not args.quiet, validate=not args.no_validation,
                   checkpoint_every_s=args.checkpoint_every)
    print(f"model: {result.model_dir}")
    return 0


def recipe_name(text: str) -> str:
    from autoseg.training.recipe import RECIPE_NAMES

    if text in RECIPE_NAMES or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"auto, standard, budget or a recipe.json, got {text!r}")


def add_train_parser(sub) -> None:
    defaults = TrainOptions()
    tr = sub.add_parser(
        "train", help="train one fold of one configuration",
        description="Train a U-Net on the preprocessed cases of one cross-validation fold, into "
                    "OUTPUT_DIR/models/<config>/fold_<k>/. Rerunning the same command (or --resume) continues "
                    "from the last checkpoint. Under torchrun, trains data-parallel on all processes.")
    tr.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder with plan.json and preprocessed/")
    tr.add_argument("--fold", type=fold, default="0", help="fold 0-4 of splits.json, or 'all' (default: 0)")
    tr.add_argument("--config", default="3d_fullres", type=configuration_name, metavar="NAME",
                    help="configuration to train (default: 3d_fullres)")
    tr.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                    help=f"epochs (default: {defaults.epochs})")
    tr.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                    help="fit the whole schedule, learning-rate decay included, into this much training time "
                         "(e.g. 30m, 2h) instead of a number of epochs; the final validation comes on top")
    tr.add_argument("--recipe", type=recipe_name, default=defaults.recipe, metavar="auto|standard|budget|FILE",
                    help="auto (default): the budget recipe when --time-budget is too short for nnU-Net's schedule "
                         "on this machine (measured at the start), else standard; budget: network width, batch, "
                         "warm-up and augmentation chosen from the budget and the measured step time; "
                         "FILE: reuse a run's recipe.json exactly")
    tr.add_argument("--width", type=positive_float, default=None,
                    help="features per stage relative to the plan's (default: the recipe's; standard: 1)")
    tr.add_argument("--augmentation", choices=("standard", "light"), default=None,
                    help="augmentation strength (default: the recipe's; standard: nnU-Net's)")
    tr.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                    help="optimizer (default: the recipe's; standard: nnU-Net's SGD with Nesterov momentum)")
    tr.add_argument("--iterations-per-epoch", type=positive_int, default=None, metavar="N",
                    help="training iterations per epoch (default: the recipe's; standard: 250)")
    tr.add_argument("--val-iterations", type=positive_int, default=None, metavar="N",
                    help="validation patch batches per epoch (default: the recipe's; standard: a fifth of the "
                         "training iterations)")
    tr.add_argument("--lr", type=positive_float, default=None,
                    help="initial learning rate (default: the recipe's, 0.01)")
    tr.add_argument("--warmup", type=float, default=None, metavar="FRACTION",
                    help="fraction of the schedule with a linear learning-rate warm-up (default: the recipe's; "
                         "standard: 0)")
    tr.add_argument("--batch-size", type=positive_int, default=None,
                    help="batch size (default: the recipe's; standard: the plan's)")
    tr.add_argument("--init-from", default=None, metavar="SOURCE",
                    help="start a new run from another model's weights: a checkpoint (.pt), fold folder, models/ "
                         "folder or package; heads for other classes start fresh, new input channels from the mean "
                         "of the source's (docs/training.md)")
    tr.add_argument("--tensorboard", action="store_true",
                    help="also log each epoch (metrics, a validation slice) to fold_k/tensorboard/ "
                         "(pip install 'autoseg[tensorboard]'; tensorboard --logdir OUTPUT_DIR/models)")
    tr.add_argument("--memory-limit", type=positive_float, default=None, metavar="GB",
                    help="memory the run may take on a CPU (default: what the machine has free); the recipe fits "
                         "its network, batch and patch to it and keeps freed memory only where there is room")
    tr.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: 0)")
    tr.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                    help="where to train (default: auto = cuda, else mps, else cpu)")
    tr.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="auto (default): fp16 mixed precision on CUDA, bf16 on CPUs with native bfloat16 "
                         "(AVX512-BF16/AMX), else fp32")
    tr.add_argument("--workers", type=int, default=None,
                    help="augmentation worker processes (default: 1 on CPU, else CPU count - 1, max 12; 0 = none)")
    tr.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                    help="write the latest checkpoint after an epoch, but not more often than this (default: 60)")
    tr.add_argument("--resume", action="store_true",
                    help="require a checkpoint to continue from (a plain rerun also continues)")
    tr.add_argument("--no-validation", action="store_true",
                    help="skip the final sliding-window validation of the fold's validation cases")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log echo")
    tr.set_defaults(func=run_train)
