"""retain_freed_memory: large buffers freed and allocated again stop costing page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autoprompt import allocator

# Allocates and frees a 64 MiB buffer (above glibc's largest dynamic mmap threshold, 32 MiB) 40 times
# after a warm-up round; prints whether the thresholds were raised and the minor page faults of the 40.
CHURN = """
import resource, sys
import numpy as np
from autoprompt.allocator import retain_freed_memory
tuned = retain_freed_memory() if sys.argv[1] == "tune" else False
def churn():
    for _ in range(40):
        buffer = np.ones(64 << 20, dtype=np.uint8)
        del buffer
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(mode: str, **environment: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS} | environment
    result = subprocess.run(
        [sys.executable, "-c", CHURN, mode], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    tuned, faults = result.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_raised_thresholds_keep_freed_buffers_for_reuse():
    tuned, tuned_faults = churn("tune")
    untuned = churn("leave")[1]
    assert tuned
    assert untuned > 10 * (tuned_faults + 10), (untuned, tuned_faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_a_threshold_set_by_the_user_is_left_alone():
    tuned, faults = churn("tune", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert not tuned
    assert faults > 1000  # glibc kept the user's 1 MiB: every 64 MiB buffer is mapped afresh


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_a_child_given_the_environment_runs_with_the_raised_thresholds():
    base = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    env = allocator.retained_memory_environment(base)
    assert env["MALLOC_MMAP_THRESHOLD_"] == env["MALLOC_TRIM_THRESHOLD_"] == str(1 << 30)
    tuned, faults = churn("leave", **{name: env[name] for name in allocator.USER_SETTINGS})
    assert not tuned  # the child itself changed nothing: glibc read the environment
    assert faults < churn("leave")[1] / 10


def test_the_environment_keeps_a_threshold_the_user_set():
    env = allocator.retained_memory_environment({"MALLOC_TRIM_THRESHOLD_": "4096", "PATH": "/bin"})
    assert env == {"MALLOC_TRIM_THRESHOLD_": "4096", "PATH": "/bin"}
