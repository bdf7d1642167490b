"""Work over the cases of a dataset in worker processes, with progress (fingerprint, preprocessing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from multiprocessing import Pool
from typing import TypeVar

import SimpleITK as sitk

from autoprompt.progress import progress

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def parallel_map(
    function: Callable[[_Item], _Result], items: Sequence[_Item], *, num_processes: int, desc: str
) -> list[_Result]:
    """``[function(item) for item in items]`` in ``num_processes`` worker processes, with progress
    (:func:`autoprompt.progress.progress`; the workers are started first, so they fork no progress thread)."""
    if num_processes <= 1 or len(items) <= 1:
        with progress(total=len(items), desc=desc, unit="case") as bar:
            results = []
            for item in items:
                results.append(function(item))
                bar.update()
            return results
    with (
        Pool(min(num_processes, len(items)), initializer=_single_threaded) as pool,
        progress(total=len(items), desc=desc, unit="case") as bar,
    ):
        results = []
        for result in pool.imap(function, items):
            results.append(result)
            bar.update()
        return results


def _single_threaded() -> None:
    """Worker initializer: one SimpleITK thread per process (the processes already fill the cores)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
