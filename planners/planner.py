"""Plan a dataset from its fingerprint: slice axis, in-plane spacing, stacks, batch size, caching.

The rules (all constants below; every result lands in plans.json, where a person can change it):

- **Slice axis**: the axis with the largest median spacing (the through-plane axis of anisotropic data);
  ties go to the first axis (Z). Slices are never resampled.
- **Window**: the backbone's own input, ``window`` x ``window`` (LiteMedSAM 256, SAM/MedSAM ViT 1024;
  ``autoprompt.modeling.backbone.backbone_window_size``), unless the slices are small (the median slice,
  after cropping, under half that window) and the backbone can also take smaller windows
  (``autoprompt.modeling.backbone.backbone_windows``: LiteMedSAM from 64): then the smallest of those that
  holds the :data:`FILL_PERCENTILE` th percentile slice enlarged :data:`SMALL_SLICE_ZOOM` times, since an encoder
  pass costs about the window's area. A window other than :data:`WINDOW` gets its own ``data_identifier``, so
  preprocessing for one backbone or window never overwrites another's.
- **In-plane spacing**: the median spacing, unless the median slice (after cropping) does not suit the
  window SAM sees: larger than the window -> coarsened until it fits (at most
  :data:`MAX_COARSENING` times; larger slices are then tiled), smaller than half the window (structures
  far smaller than the scale SAM was trained at) -> refined until the :data:`FILL_PERCENTILE` th
  percentile slice fills the window (at most :data:`MAX_REFINEMENT` times); in a smaller window chosen for small
  slices, refined until that slice fills it.
- **Stacks** ("3d"): :data:`STACK_DEPTH` neighbouring slices, fewer (odd) if a case has fewer slices.
- **Batch size**: :data:`MEMORY_BUDGET_GIB` of training activations divided by an estimate per window
  (:data:`GIB_PER_WINDOW` plus :data:`GIB_PER_CLASS_WINDOW` per class, since classes decode as a batch,
  the class term growing with the window's area over 256 x 256 as class logits are at window size),
  times the stack depth; at most :data:`MAX_BATCH_SIZE`.
- **Embedding cache**: windows over all slices of all cases (tiled at half-window steps as inference
  does) x one fp16 ``256 x 64 x 64`` embedding each (at the backbone's own window; a smaller window's grid is
  smaller in proportion); cached when under :data:`CACHE_BUDGET_GIB`.
- **Normalisation**: by channel name, as nnU-Net maps them (case-insensitive): "CT" at the dataset's foreground
  percentiles 0.5/99.5; "zscore" per image at its mean +- :data:`ZSCORE_STDS` standard deviations;
  "rescale_to_0_1" per image from its minimum to its maximum; "noNorm" as the values are (they must lie in
  [0, 1]); "rgb_to_0_1" divided by 255; any other name per image at its own 0.5/99.5 percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from pipeline.case_io import PSEUDO_SLICE_SPACING_2D
from planners.plans import SCHEMA_VERSION, ChannelNormalization, ConfigurationPlan, Plans

WINDOW = 256
DATA_IDENTIFIER = "autoprompt_slices"
SMALL_FRACTION = 0.5
SMALL_SLICE_ZOOM = 1.25  # Hippocampus fold 1, two seeds: 80 x 80 windows tie 96 (docs/results.md, round 35)
FILL_PERCENTILE = 90
MAX_COARSENING = 4.0
MAX_REFINEMENT = 8.0
STACK_DEPTH = 5
MEMORY_BUDGET_GIB = 4.0
GIB_PER_WINDOW = 0.25
GIB_PER_CLASS_WINDOW = 0.03
MAX_BATCH_SIZE = 8
CACHE_BUDGET_GIB = 20.0
EMBEDDING_BYTES = 256 * 64 * 64 * 2
MR_PERCENTILES = (0.5, 99.5)
ZSCORE_STDS = 3.0
FIXED_RANGES = {"nonorm": (0.0, 1.0), "rgb_to_0_1": (0.0, 255.0), "rescale_to_0_1": (0.0, 100.0)}
"""Channel names with a fixed ``(lower, upper)``: intensities for nonorm/rgb_to_0_1, percentiles of the whole
image for rescale_to_0_1 (its minimum and maximum)."""


def plan_dataset(
    fingerprint: dict[str, Any],
    dataset_json: dict[str, Any],
    *,
    window: int = WINDOW,
    smaller_windows: Sequence[int] = (),
) -> Plans:
    """Plans ("2d", and "3d" unless the dataset is 2D) from a fingerprint and the dataset.json content.

    Args:
        fingerprint: the dataset's fingerprint.json content.
        dataset_json: the dataset's dataset.json content.
        window: side of the square windows of the backbone the plans are for (its own ``model_input_size``).
        smaller_windows: other window sides the backbone can take, for datasets of small slices (none: always
            ``window``).
    """
    spacings, shapes = _volumes(fingerprint)
    median_spacing = np.median(spacings, axis=0)
    slice_axis = int(np.flatnonzero(median_spacing >= median_spacing.max() * (1 - 1e-3))[0])
    inplane = [axis for axis in range(3) if axis != slice_axis]
    base = median_spacing[inplane]
    extent_px = shapes[:, inplane] * spacings[:, inplane] / base  # per case, at the median spacing
    own_window, window = window, _window(extent_px.max(axis=1), window, smaller_windows)
    factor, rule = _inplane_factor(extent_px.max(axis=1), window, fill=window < own_window)
    target = [float(median_spacing[slice_axis]), *(float(s) for s in base * factor)]
    slice_shapes = np.round(extent_px / factor).astype(int)
    num_slices = shapes[:, slice_axis].astype(int)
    median_shape = [int(np.median(num_slices)), *(int(v) for v in np.median(slice_shapes, axis=0))]
    num_windows = sum(
        int(n) * _windows_per_slice(hw, window) for n, hw in zip(num_slices, slice_shapes, strict=True)
    )
    cache_gib = round(num_windows * EMBEDDING_BYTES * (window / own_window) ** 2 / 2**30, 2)
    num_classes = sum(1 for name, value in dataset_json["labels"].items() if value != 0 and name != "ignore")

    def configuration(stack_depth: int) -> ConfigurationPlan:
        return ConfigurationPlan(
            data_identifier=DATA_IDENTIFIER if window == WINDOW else f"{DATA_IDENTIFIER}_{window}",
            slice_axis=slice_axis,
            target_spacing=target,
            window_size=[window, window],
            stack_depth=stack_depth,
            batch_size=_batch_size(num_classes, stack_depth, window),
            median_shape=median_shape,
            cache_embeddings=cache_gib <= CACHE_BUDGET_GIB,
            estimated_cache_gib=cache_gib,
            inplane_rule=rule,
        )

    configurations = {"2d": configuration(1)}
    if fingerprint["ndim"] == 3:
        depth = min(STACK_DEPTH, int(num_slices.min()))
        configurations["3d"] = configuration(depth if depth % 2 else depth - 1)
    return Plans(
        schema_version=SCHEMA_VERSION,
        dataset_name=fingerprint["dataset_name"],
        labels=dict(dataset_json["labels"]),
        channel_names=dict(dataset_json["channel_names"]),
        file_ending=dataset_json["file_ending"],
        normalization=_normalization(fingerprint, dataset_json["channel_names"]),
        configurations=configurations,
    )


def _volumes(fingerprint: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per case spacing and cropped shape, ``N x 3`` in ``(Z, Y, X)`` (2D cases as one slice)."""
    cases = list(fingerprint["cases"].values())
    spacings = np.array([case["spacing"] for case in cases], dtype=float)
    shapes = np.array([case["shape_after_crop"] for case in cases], dtype=float)
    if fingerprint["ndim"] == 2:
        spacings = np.concatenate([np.full((len(cases), 1), PSEUDO_SLICE_SPACING_2D), spacings], axis=1)
        shapes = np.concatenate([np.ones((len(cases), 1)), shapes], axis=1)
    return spacings, shapes


def _window(longest_side_px: np.ndarray, window: int, smaller_windows: Sequence[int]) -> int:
    """The backbone's own ``window``, or for small slices the smallest of ``smaller_windows`` holding the
    :data:`FILL_PERCENTILE` th percentile slice (each case's longest side) enlarged :data:`SMALL_SLICE_ZOOM` times."""
    if float(np.median(longest_side_px)) >= SMALL_FRACTION * window:
        return window
    wanted = SMALL_SLICE_ZOOM * float(np.percentile(longest_side_px, FILL_PERCENTILE))
    return min((side for side in smaller_windows if side >= wanted), default=window)


def _inplane_factor(longest_side_px: np.ndarray, window: int, *, fill: bool = False) -> tuple[float, str]:
    """Factor on the median in-plane spacing and the rule that chose it, from each case's longest side;
    ``fill``: slices are refined to fill the window even if the median is over half of it (a small window
    chosen for small slices)."""
    median = float(np.median(longest_side_px))
    if median > window:
        factor = median / window
        return (factor, "coarser_to_fit") if factor <= MAX_COARSENING else (MAX_COARSENING, "coarser_capped")
    if fill or median < SMALL_FRACTION * window:
        factor = max(float(np.percentile(longest_side_px, FILL_PERCENTILE)) / window, 1 / MAX_REFINEMENT)
        if factor < 1:
            return factor, "finer_to_fill"
    return 1.0, "median"


def _windows_per_slice(slice_shape: np.ndarray, window: int) -> int:
    """Windows covering one slice: 1 when it fits (zero-padded), else half-overlapping tiles."""
    padded = [max(int(side), window) for side in slice_shape]
    return math.prod(len(steps) for steps in compute_steps_for_sliding_window(padded, [window, window], 0.5))


def _batch_size(num_classes: int, stack_depth: int, window: int) -> int:
    per_class = GIB_PER_CLASS_WINDOW * (window / WINDOW) ** 2
    per_sample = (GIB_PER_WINDOW + per_class * num_classes) * stack_depth
    return int(min(MAX_BATCH_SIZE, max(1, MEMORY_BUDGET_GIB // per_sample)))


def _normalization(fingerprint: dict[str, Any], channel_names: dict[str, str]) -> list[ChannelNormalization]:
    norms = []
    for index, name in sorted(channel_names.items(), key=lambda item: int(item[0])):
        scheme = name.strip().casefold()
        if scheme == "ct":
            stats = fingerprint["foreground_intensity_properties_per_channel"][index]
            low, high = stats["percentile_00_5"], stats["percentile_99_5"]
            norms.append(ChannelNormalization("ct", low, max(high, low + 1.0)))
        elif scheme == "zscore":
            norms.append(ChannelNormalization("zscore", -ZSCORE_STDS, ZSCORE_STDS))
        elif scheme in FIXED_RANGES:
            norms.append(ChannelNormalization(scheme, *FIXED_RANGES[scheme]))
        else:
            norms.append(ChannelNormalization("mr", *MR_PERCENTILES))
    return norms
