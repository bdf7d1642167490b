"""Device and numeric-precision choices shared by training, inference and the interactive tools."""

from __future__ import annotations

import contextlib
from enum import Enum

import torch

from autoprompt.errors import AutoPromptError


class Precision(str, Enum):
    """Compute precision of the network's forward pass."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AutoPromptError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise AutoPromptError(f"unknown device '{name}'; use auto, cpu or cuda") from error


def parse_precision(value: str | Precision) -> Precision:
    """Validate a precision name with a clear error."""
    try:
        return Precision(value)
    except ValueError as error:
        choices = ", ".join(p.value for p in Precision)
        raise AutoPromptError(f"unknown precision '{value}'; choose one of {choices}") from error


def autocast(device: torch.device, precision: str | Precision) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32).

    fp16 is only offered on CUDA; bf16 works on CPU and CUDA.
    """
    precision = parse_precision(precision)
    if precision is Precision.FP32:
        return contextlib.nullcontext()
    if precision is Precision.FP16 and device.type != "cuda":
        raise AutoPromptError("fp16 precision needs a CUDA device; use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
