"""``autoprompt train``: train one fold (or all cases) of a planned and preprocessed dataset."""

from __future__ import annotations

import argparse
import os

from autoprompt.commands.common import (
    CONFIGURATIONS,
    add_data_root_arguments,
    add_device_argument,
    configuration_name,
    data_roots,
)
from autoprompt.errors import AutoPromptError

DESCRIPTION = """\
Train fold FOLD of dataset DATASET (after 'autoprompt plan-and-preprocess'). Hyperparameters come from
a YAML preset in configs/ (default: 2d_frozen for -c 2d; for -c 3d, 3d_frozen on a CPU and
3d_adapter on a CUDA GPU); flags and --set change single values. The model folder is

  RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>/
      plans.json dataset.json fingerprint.json trainer_config.yaml
      fold_K/checkpoint_{latest,best,final}.pt progress.png training_log.txt
      fold_K/validation/ (NIfTI predictions, summary.json)  fold_K/postprocessing.json

With a frozen encoder (2d_frozen, 3d_frozen) the encoder embeddings of every slice are computed once (the
costly step on a CPU, shown by a progress bar) and cached in PREPROCESSED/DatasetXXX_Name/
embeddings/, shared by all folds; later runs start at once. checkpoint_latest.pt is written after
every epoch: after an interruption, the same command with --resume continues where it stopped.

examples:
  autoprompt train 27 0                                  # fold 0, 2d, preset 2d_frozen
  autoprompt train 27 all -c 2d --epochs 20              # all cases, no held-out fold
  autoprompt train 904 0 --epochs 4 --iterations-per-epoch 25
  autoprompt train 27 0 --time-budget 30                 # as many epochs as fit in 30 minutes
  autoprompt train 27 0 --resume                         # continue after a kill
  autoprompt train 27 0 --set model.adapter_dim=16 --set learning_rate=1e-4
  autoprompt train 27 0 -c 3d                            # 3d: 3d_frozen on a CPU, 3d_adapter on CUDA
  autoprompt train 27 0 -c 3d --config 3d_adapter --device cuda
  autoprompt train 27 3d_fullres 0 --c                   # nnU-Net's order and flags: -c 3d, --resume
  torchrun --nproc_per_node=4 -m autoprompt.cli train 27 0 -c 3d --device cuda   # 4 GPUs (DDP)
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s DATASET [CONFIGURATION] FOLD [options]"
    parser.add_argument(
        "dataset", metavar="DATASET", help="dataset id or folder name, e.g. 27 or Dataset027_ACDC"
    )
    parser.add_argument(
        "fold",
        metavar="FOLD",
        help="fold of splits_final.json (0-4; fewer for a small dataset), or 'all' to train on every case; "
        "nnU-Net's order DATASET CONFIGURATION FOLD (e.g. 27 2d 0) works too",
    )
    parser.add_argument("nnunet_fold", nargs="?", help=argparse.SUPPRESS)  # FOLD in nnU-Net's order
    parser.add_argument(
        "-c",
        "--configuration",
        type=configuration_name,
        choices=CONFIGURATIONS,
        help="plans configuration: 2d (single slices) or 3d (stacks of neighbouring slices); "
        "default: the preset's, else 2d",
    )
    parser.add_argument(
        "--config",
        metavar="NAME|YAML",
        help="trainer preset: a name from configs/ (2d_frozen, 3d_frozen, 3d_adapter, tiny) or a YAML file; "
        "default: 2d_frozen for 2d; 3d_adapter for 3d on CUDA, else 3d_frozen",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="number of epochs (default: the preset's); a small training set stops earlier at the preset's "
        "max_steps_per_window and spends the epochs left on up to ensemble_members models of the fold, "
        "averaged at prediction (--set max_steps_per_window=null: no limit; --set ensemble_members=1: one model)",
    )
    parser.add_argument(
        "--iterations-per-epoch",
        type=int,
        metavar="N",
        help="optimiser steps per epoch (default: the preset's)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="train only as many epochs as fit in this many minutes (embedding cache and final "
        "validation not counted; planned against the time left, in the first epoch and after each); the "
        "learning-rate schedule ends with the last one",
    )
    parser.add_argument(
        "--seed", type=int, help="random seed for initialisation and sampling (default: the preset's)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one setting of the preset, e.g. --set batch_size=4 --set model.train_decoder=false "
        "(repeatable; see configs/2d_frozen.yaml for the keys)",
    )
    parser.add_argument(
        "--resume",
        "--c",
        action="store_true",
        help="continue from fold_K/checkpoint_latest.pt (after an interruption; nnU-Net's --c)",
    )
    add_device_argument(parser)
    add_data_root_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.training.run import train
    from pipeline.training.trainer import DistributedContext

    fold, configuration = fold_and_configuration(args)
    roots = data_roots(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = None
    if world_size > 1:  # started by torchrun
        distributed = DistributedContext(
            rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]), world_size=world_size
        )
    result = train(
        args.dataset,
        fold,
        preprocessed=roots.preprocessed,
        results=roots.results,
        configuration=configuration,
        config=args.config,
        overrides=args.overrides,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        time_budget_minutes=args.time_budget,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        raw=roots.raw,
        distributed=distributed,
    )
    if distributed is None or distributed.is_main:
        print(f"model folder: {result.model_folder}")
        if result.validation is not None:
            print(f"validation summary: {result.fold_dir / 'validation' / 'summary.json'}")
    return 0


def fold_and_configuration(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(fold, configuration)`` from ``DATASET FOLD [-c CONFIGURATION]`` or nnU-Net's ``DATASET CONFIGURATION FOLD``.

    Raises:
        AutoPromptError: the three-word form with a second word that is no configuration, or with a ``-c``
            that says otherwise.
    """
    if args.nnunet_fold is None:
        return args.fold, args.configuration
    try:
        configuration = configuration_name(args.fold)
    except argparse.ArgumentTypeError as error:
        raise AutoPromptError(
            f"'autoprompt train {args.dataset} {args.fold} {args.nnunet_fold}': {error}; the order is "
            "DATASET FOLD or DATASET CONFIGURATION FOLD, e.g. 27 0 or 27 2d 0"
        ) from None
    if args.configuration is not None and args.configuration != configuration:
        raise AutoPromptError(
            f"configuration given twice, {configuration} and -c {args.configuration}; give it once"
        )
    return args.nnunet_fold, configuration
