"""Checkpoint files: trainable weights, optimiser/scheduler state, RNG states and metadata.

A checkpoint (``fold_K/checkpoint_{latest,best,final}.pt``) is a dict loadable with
``torch.load(..., weights_only=True)``::

    format       int, CHECKPOINT_FORMAT
    model        the model's trainable_state_dict() (never the frozen backbone)
    optimizer    AdamW state_dict            scheduler  LambdaLR state_dict
    grad_scaler  torch.amp.GradScaler state (CUDA AMP) or None
    epoch        number of finished epochs   step       number of finished optimiser steps
    rng          torch / numpy / random states (to resume bit-for-bit)
    history      per-epoch curves (losses, pseudo-Dice, times)
    metadata     backbone name and checksum, configuration, fold, trainer config (plain dict),
                 best pseudo-Dice, total planned epochs
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprompt.errors import AutoPromptError
from pipeline.files import atomic_path

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAMES = ("best", "final", "latest")


def checkpoint_path(fold_dir: Path, name: str) -> Path:
    """``fold_dir/checkpoint_<name>.pt`` for ``name`` in :data:`CHECKPOINT_NAMES`."""
    if name not in CHECKPOINT_NAMES:
        raise AutoPromptError(f"unknown checkpoint '{name}'; choose one of {', '.join(CHECKPOINT_NAMES)}")
    return Path(fold_dir) / f"checkpoint_{name}.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically (temporary file, then rename).

    Written through a Python file object, so a full disk raises ``OSError`` (ENOSPC) rather than
    torch's opaque ``RuntimeError`` ("unexpected pos").
    """
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        AutoPromptError: missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise AutoPromptError(f"{path}: checkpoint not found; train this fold first ('autoprompt train')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is the same user problem
        raise AutoPromptError(
            f"{path}: unreadable checkpoint ({error.__class__.__name__}); it is damaged, retrain the fold"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise AutoPromptError(
            f"{path}: not an autoprompt checkpoint (format {CHECKPOINT_FORMAT}); retrain the fold"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The global torch (CPU and CUDA), numpy and ``random`` states, in weights_only-loadable types."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "random": [version, list(internal), gauss],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
