"""What predicting a case will cost, computed from its header and the plans before any voxel is read.

A file's size says little about its cost: a 22 KB NIfTI of 4 x 40 x 40 voxels at 60 mm spacing resamples
to thousands of windows, and a 600 KB ``.nii.gz`` of zeros unpacks to gigabytes. :func:`estimate_case_cost`
follows :func:`pipeline.preprocessing.preprocess_case` on the header alone (slice axis, in-plane
resampling to the spacing prediction uses, the sliding window's tiles, mirroring) and adds up the large
arrays prediction keeps at its peak (reading and preprocessing the case, or predicting it slab by slab into
the label map, with the ``K+1`` probabilities of the whole case only when they are asked for);
:func:`check_case_cost` refuses a case over :class:`CaseLimits` with one line. ``predict`` and ``serve``
check every case this way first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autoprompt.errors import AutoPromptError

if TYPE_CHECKING:  # the heavy imports wait until a cost is computed: ``--help`` shows the defaults fast
    from pipeline.io import ImageInfo
    from planners.plans import Plans

DEFAULT_MAX_CASE_MEMORY_GB = 16.0
"""Default bound on a case's estimated memory: with the model and the rest of the process it fits a 24 GB machine."""
DEFAULT_MAX_CASE_WINDOWS = 20_000
"""Default bound on a case's network windows (mirrored ones counted): hours on a CPU, minutes on a GPU."""
BASE_MEMORY_BYTES = 256 * 2**20
"""Added to every estimate: the sliding window's batches and the allocator's slack (not the model itself)."""
MIRRORS = 4
"""Network passes per window with mirroring TTA (identity and the flips of both in-plane axes)."""


@dataclass(frozen=True)
class CaseLimits:
    """The most one case may cost; larger cases are refused before they are read.

    Attributes:
        max_memory_gb: estimated memory of one case's prediction in GiB.
        max_windows: network windows of one case (``slices x in-plane windows``, times 4 with mirroring TTA).
    """

    max_memory_gb: float = DEFAULT_MAX_CASE_MEMORY_GB
    max_windows: int = DEFAULT_MAX_CASE_WINDOWS

    def __post_init__(self) -> None:
        for name, value in (("max_memory_gb", self.max_memory_gb), ("max_windows", self.max_windows)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise AutoPromptError(
                    f"case limit {name}={value!r} must be a positive finite number; give e.g. 16"
                )

    def describe(self) -> str:
        """``"16 GB, 20000 windows"``."""
        return f"{self.max_memory_gb:g} GB, {self.max_windows} windows"


@dataclass(frozen=True)
class CaseCost:
    """The estimated cost of predicting one case.

    Attributes:
        input_shape: voxels per axis as read, ``(Z, Y, X)`` (``(1, Y, X)`` for a 2D image).
        resampled_shape: ``(S, H, W)`` after moving the slice axis first and resampling in-plane.
        windows: network windows (slices x in-plane windows, x4 with mirroring TTA).
        memory_bytes: the large arrays alive at prediction's peak (the image and its preprocessing, or
            the preprocessed data, a slab of probabilities before and after reverting, the labels and
            the float16 probabilities when asked for; no crop assumed), plus :data:`BASE_MEMORY_BYTES`;
            the loaded model comes on top.
    """

    input_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    windows: int
    memory_bytes: int

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / 2**30

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "resampled_shape": list(self.resampled_shape),
            "windows": self.windows,
            "memory_gb": round(self.memory_gb, 3),
        }


def estimate_case_cost(
    infos: Sequence[ImageInfo],
    plans: Plans,
    configuration: str,
    *,
    tta: bool,
    step_size: float = 0.5,
    probabilities: bool = False,
    zoom: bool = False,
) -> CaseCost:
    """The cost of predicting a case from its channels' headers (see :func:`pipeline.io.read_image_info`).

    Args:
        infos: one header per channel file.
        plans: the model's plans.
        configuration: ``"2d"`` or ``"3d"``.
        tta: mirroring test-time augmentation (4 passes per window).
        step_size: in-plane window overlap of the sliding window (its default, 0.5).
        probabilities: the ``K+1`` probabilities in the input geometry are returned too (float16).
        zoom: a second, zoomed pass (:mod:`pipeline.roi_zoom`): one more window per slice, the case's
            probabilities held whole (float16) and its zoomed slices.
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from pipeline.case_io import PSEUDO_SLICE_SPACING_2D
    from pipeline.inference.sliding_window import DEFAULT_CHUNK_STACKS
    from pipeline.preprocessing import prediction_spacing

    plan = plans.configuration(configuration)
    geometry = infos[0].geometry
    size_zyx = [int(v) for v in reversed(geometry.size)]
    spacing_zyx = [float(v) for v in reversed(geometry.spacing)]
    if geometry.ndim == 2:
        size_zyx, spacing_zyx = [1, *size_zyx], [PSEUDO_SLICE_SPACING_2D, *spacing_zyx]
    slice_axis = 0 if geometry.ndim == 2 else plan.slice_axis
    transpose = [slice_axis, *(axis for axis in range(3) if axis != slice_axis)]
    shape = [size_zyx[axis] for axis in transpose]
    spacing_before = [spacing_zyx[axis] for axis in transpose]
    if any(not math.isfinite(s) or s <= 0 for s in spacing_before):
        resampled = [0, 0, 0]
    else:
        spacing_after = prediction_spacing(shape, spacing_before, plan)
        resampled = [int(v) for v in compute_new_shape(shape, spacing_before, spacing_after)]
    slices, rows, cols = resampled
    window = list(plan.window_size)
    padded = [max(rows, window[0]), max(cols, window[1])]
    if min(resampled) < 1:
        inplane = 0
    else:
        steps = compute_steps_for_sliding_window(tuple(padded), tuple(window), step_size)
        inplane = len(steps[0]) * len(steps[1])
    windows = slices * (inplane + (1 if zoom else 0)) * (MIRRORS if tta else 1)

    channels = len(plans.channel_names)  # one colour picture may hold three
    outputs = plans.num_foreground_classes + 1
    n_in = int(np.prod(size_zyx, dtype=np.int64))
    n_out = slices * rows * cols
    n_pad = slices * padded[0] * padded[1]
    itemsize = max(info.itemsize * info.components for info in infos)
    reading = n_in * channels * (2 * itemsize + 3 * 4) + n_out * channels * 3 * 4
    # a slab: the unfinished slices of the sliding window, reverted to the input grid before the next one
    slab = min(slices, DEFAULT_CHUNK_STACKS + plan.stack_depth - 1) / max(slices, 1)
    slab_bytes = slab * (n_pad * (3 * outputs + 1) * 4 + n_out * outputs * 8 + n_in * (outputs * 4 + 16))
    predicting = (
        n_out * channels * 4
        + n_pad * channels * 4
        + slab_bytes
        + n_in * (2 + 8)  # labels, and their connected components in postprocessing
        + (n_in * outputs * 2 if probabilities else 0)
        + ((n_out * outputs * 2 + slices * window[0] * window[1] * channels * 4) if zoom else 0)
    )
    return CaseCost(
        input_shape=tuple(size_zyx),
        resampled_shape=(slices, rows, cols),
        windows=windows,
        memory_bytes=int(max(reading, predicting)) + BASE_MEMORY_BYTES,
    )


def check_case_cost(cost: CaseCost, limits: CaseLimits, *, source: str | os.PathLike) -> None:
    """Refuse a case whose estimated cost is over ``limits``.

    Raises:
        CaseTooLarge: one line naming ``source``, what it costs, the limit and the fix.
    """
    shape = "x".join(map(str, cost.input_shape))
    resampled = "x".join(map(str, cost.resampled_shape))
    if min(cost.resampled_shape) < 1:
        raise CaseTooLarge(
            f"{source}: {shape} voxels resample to {resampled} at the model's spacing: its spacing is implausible; "
            "fix the spacing in the image header (in mm)"
        )
    if cost.memory_gb > limits.max_memory_gb:
        raise CaseTooLarge(
            f"{source}: {shape} voxels resampled to {resampled} need about {cost.memory_gb:.1f} GB, over the limit "
            f"of {limits.max_memory_gb:g} GB; check its size and spacing, or raise --max-case-memory-gb"
        )
    if cost.windows > limits.max_windows:
        raise CaseTooLarge(
            f"{source}: {shape} voxels resampled to {resampled} make {cost.windows} network windows, over the limit "
            f"of {limits.max_windows}; check its spacing (mm), predict without --tta, or raise --max-case-windows"
        )


def check_case(
    image_files: Sequence[str | os.PathLike],
    plans: Plans,
    configuration: str,
    *,
    tta: bool,
    limits: CaseLimits,
    source: str | os.PathLike | None = None,
    step_size: float = 0.5,
    probabilities: bool = False,
    zoom: bool = False,
) -> CaseCost:
    """Read the headers of a case's channel files, estimate its cost and refuse it if over ``limits``
    (``probabilities``, ``zoom``: as in :func:`estimate_case_cost`).

    Raises:
        AutoPromptError: an unreadable header, or :class:`CaseTooLarge`.
    """
    from pipeline.io import read_image_info

    infos = [read_image_info(path) for path in image_files]
    cost = estimate_case_cost(
        infos,
        plans,
        configuration,
        tta=tta,
        step_size=step_size,
        probabilities=probabilities,
        zoom=zoom,
    )
    check_case_cost(cost, limits, source=source if source is not None else image_files[0])
    return cost


class CaseTooLarge(AutoPromptError):
    """A case whose estimated cost is over the limits (HTTP 422 in the web service)."""

    status_code = 422
