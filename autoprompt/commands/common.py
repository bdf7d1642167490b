"""Arguments that several subcommands share."""

from __future__ import annotations

import argparse

from autoprompt.paths import DataRoots, roots_from_environment


def add_data_root_arguments(parser: argparse.ArgumentParser) -> None:
    """``--raw/--preprocessed/--results``: flags win over AUTOPROMPT_* variables over ./autoprompt_data."""
    group = parser.add_argument_group("data folders (flag > AUTOPROMPT_RAW/_PREPROCESSED/_RESULTS > ./autoprompt_data)")
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
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
