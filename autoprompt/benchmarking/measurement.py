"""Helpers shared by the measurement scripts in ``benchmarks/``: median wall time, peak memory, the machine
a measurement ran on, and a Markdown table of the results."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch

from autoprompt.precision import BF16_CPU_FLAGS, cpuinfo_value, read_cpu_flags


def median_seconds(run: Callable[[], object], *, device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run`` after one warm-up call (CUDA synchronised)."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mib(device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU, else the process's peak resident set size (it only
    grows: read it as "the process peaked at ... so far")."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def load_average() -> float:
    """The 1-minute load average, rounded: other work on the machine slows a measurement down."""
    return round(os.getloadavg()[0], 2)


def machine(device: torch.device) -> dict[str, object]:
    """What a measurement ran on, so that results from different machines are told apart: the CPU's model
    (``/proc/cpuinfo``'s ``model name``, else what :mod:`platform` reports), its CPU count, its bf16
    dot-product instructions (:data:`~autoprompt.precision.BF16_CPU_FLAGS`, which decide the CPU's speed in
    bf16) and, on a CUDA ``device``, the GPU's name (None on a CPU)."""
    return {
        "cpu": cpuinfo_value("model name") or platform.processor() or platform.machine() or "unknown",
        "cpu_count": os.cpu_count(),
        "bf16_instructions": sorted(read_cpu_flags() & BF16_CPU_FLAGS),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def machine_label(description: dict[str, object]) -> str:
    """One line for a report from :func:`machine`'s dict, e.g. ``AMD EPYC, 2 CPUs, avx512_bf16`` (a GPU's
    name first where there is one; ``no bf16 instructions`` where the CPU has none)."""
    instructions = ", ".join(description["bf16_instructions"]) or "no bf16 instructions"
    cpu = f"{description['cpu']}, {description['cpu_count']} CPUs, {instructions}"
    return f"{description['gpu']} ({cpu})" if description.get("gpu") else cpu


def machine_info(device: torch.device, *, load_average_before: float) -> dict[str, object]:
    """:func:`machine`, the device, torch threads, torch version, and the load average before and now."""
    return {
        **machine(device),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_average_before,
        "load_average_after": load_average(),
        "torch": torch.__version__,
    }


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A Markdown table of ``columns`` of ``rows``, one line per row."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
