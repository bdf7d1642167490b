"""Keep glibc from handing tensor buffers back to the kernel after every layer.

PyTorch on the CPU allocates and frees buffers of megabytes in every layer. glibc's malloc serves
blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with fresh ``mmap`` pages
and unmaps them on ``free``, and trims the heap's top above its trim threshold, so each layer pays
page faults on new zeroed pages. Raising both thresholds to 1 GiB removes most of that cost from the
LiteMedSAM encoder on a CPU (measured by ``benchmarks/encoder_allocator.py``, figures in docs/results.md).

The cost: up to 1 GiB of freed memory stays with the process for reuse instead of going back to the
system. Set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment to keep
glibc's own choice (or your values): then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

# mallopt(3) parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _thresholds_ours_to_set(env: Mapping[str, str]) -> bool:
    """True on Linux (glibc) when ``env`` sets neither threshold: the user's choice always wins."""
    return sys.platform.startswith("linux") and not any(name in env for name in USER_SETTINGS)


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB for this process.

    Returns:
        True when both were set; False on other C libraries (macOS, Windows, musl), when the user
        set either threshold in the environment, or when glibc refused a value.
    """
    if not _thresholds_ours_to_set(os.environ):
        return False
    try:  # the C library already loaded in this process: no ldconfig search at start-up
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(parameter, THRESHOLD_BYTES) == 1 for parameter in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))


def retained_memory_environment(base: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``base`` that gives a child process the same 1 GiB thresholds through glibc's variables.

    For children that do not call ``retain_freed_memory`` themselves (nnU-Net's commands, the
    benchmark's steps), so that every method of a comparison runs under the same allocator. A
    threshold already in ``base`` is kept, as is everything off Linux.
    """
    env = dict(base)
    if _thresholds_ours_to_set(env):
        env.update({name: str(THRESHOLD_BYTES) for name in USER_SETTINGS})
    return env
