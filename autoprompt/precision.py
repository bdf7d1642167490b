"""The precision ``auto`` stands for: the fastest one the device computes natively.

- CUDA: bf16 where the GPU has bf16 arithmetic (Ampere and newer), else fp16.
- CPU: bf16 where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX, from the flags of
  ``/proc/cpuinfo``) and PyTorch's kernels may use AVX-512 (``torch.backends.cpu.get_cpu_capability()``;
  ``ATEN_CPU_CAPABILITY=avx2`` lowers it); fp32 elsewhere, as bf16 without those instructions is emulated
  and several times slower than fp32.

Every ``precision`` option (the image encoder of ``predict``, ``serve``, ``segment`` and ``embed``, the
trainer's ``encoder_precision`` and ``amp``) defaults to ``auto``; a named precision is taken as given.

The frozen image encoder of a trained model folder goes one step further under ``auto``
(:func:`int8_encoder_pays`): int8 on a CPU with AVX-512 int8 dot products (VNNI) but without AMX, whose bf16
tiles outrun int8 on the vector units (:mod:`autoprompt.modeling.encoder_quantization`). Its layers left in
floating point run in ``auto``'s precision there: bf16 (e.g. AMD Zen 4) or fp32 (e.g. Intel Cascade Lake,
Ice Lake, Tiger Lake).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from autoprompt.devices import Precision, parse_precision

AUTO = "auto"
CHOICES = (AUTO, *(precision.value for precision in Precision))
"""The values of a ``--precision`` option."""
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""``/proc/cpuinfo`` flags of CPUs with bf16 dot-product instructions."""
INT8_CPU_FLAGS = frozenset({"avx512_vnni"})
"""``/proc/cpuinfo`` flags of CPUs with int8 dot-product instructions on 512-bit vector units. AVX-VNNI alone (on
256-bit units, ``avx_vnni``: laptops from Alder Lake on) is not enough: with OpenVINO capped to that instruction
set (``ONEDNN_MAX_CPU_ISA=AVX2_VNNI``) the int8 encoder ran slower than fp32 (docs/results.md, round 44)."""
AMX_CPU_FLAGS = frozenset({"amx_bf16", "amx_int8", "amx_tile"})
"""``/proc/cpuinfo`` flags of CPUs with AMX tiles."""
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_value(field: str, cpuinfo: Path = CPUINFO) -> str | None:
    """The value of the first ``field`` line of ``cpuinfo`` (e.g. ``flags``, ``model name``), stripped; None
    where the file cannot be read or has no such line."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of ``cpuinfo``); empty where it cannot be read."""
    return frozenset((cpuinfo_value("flags", cpuinfo) or "").split())


def cpu_precision(flags: Iterable[str], capability: str) -> Precision:
    """``auto`` on a CPU with these ``/proc/cpuinfo`` flags and PyTorch CPU capability (e.g. ``"AVX512"``)."""
    native = not BF16_CPU_FLAGS.isdisjoint(flags) and capability.upper().startswith("AVX512")
    return Precision.BF16 if native else Precision.FP32


def int8_encoder_pays(precision: Precision, device: torch.device, flags: Iterable[str] | None = None) -> bool:
    """Whether ``auto`` runs a model folder's frozen image encoder in int8: on a CPU whose ``auto`` precision
    is bf16 or fp32 (``precision``) and whose flags (None: this CPU's) have AVX-512 VNNI but no AMX."""
    if device.type != "cpu" or precision not in (Precision.BF16, Precision.FP32):
        return False
    flags = read_cpu_flags() if flags is None else frozenset(flags)
    return not INT8_CPU_FLAGS.isdisjoint(flags) and AMX_CPU_FLAGS.isdisjoint(flags)


def cuda_precision(bf16_supported: bool) -> Precision:
    """``auto`` on a CUDA GPU: bf16 where it has bf16 arithmetic, else fp16."""
    return Precision.BF16 if bf16_supported else Precision.FP16


def resolve_precision(name: str | Precision, device: torch.device) -> Precision:
    """The precision ``name`` stands for on ``device``: ``auto`` by the rule above, others as given.

    Raises:
        AutoPromptError: an unknown precision name.
    """
    if name != AUTO:
        return parse_precision(name)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return cuda_precision(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_precision(read_cpu_flags(), torch.backends.cpu.get_cpu_capability())
    return Precision.FP32
