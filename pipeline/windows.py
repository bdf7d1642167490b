"""The window geometry that training and inference share: padding, in-plane windows, slice stacks.

A preprocessed case is ``C x S x H x W`` (slice axis first). Every slice is seen through in-plane windows
of the plan's ``window_size`` (SAM's input): a slice smaller than the window is zero-padded around its
centre (nnU-Net's ``pad_nd_image``), a larger one is tiled with overlapping windows placed by nnU-Net's
``compute_steps_for_sliding_window``. For "3d" configurations each slice is the centre of a stack of ``D``
neighbouring slices, edge slices repeated (index clamping). Training samples exactly these windows and
stacks (:mod:`pipeline.training.data`, the embedding cache), and inference predicts on them
(:mod:`pipeline.inference.sliding_window`), so the two never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

DEFAULT_STEP_SIZE = 0.5
"""Window step as a fraction of the window (nnU-Net's ``tile_step_size``; 0.5 = half overlap)."""


def pad_to_window(data: torch.Tensor, window: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last two axes to at least ``window``, content centred (nnU-Net's ``pad_nd_image``).

    Args:
        data: ``... x H x W``.
        window: ``(h, w)``.

    Returns:
        The padded tensor ``... x max(H, h) x max(W, w)`` and the slicer that crops the padding away again.
    """
    padded, slicer = pad_nd_image(data, tuple(window), "constant", {"value": 0}, True, None)
    return padded, slicer


def window_slicers(
    slice_size: Sequence[int], window: Sequence[int], *, step_size: float = DEFAULT_STEP_SIZE
) -> list[tuple[slice, slice]]:
    """In-plane windows covering a slice of ``slice_size`` (already at least ``window`` in each axis).

    Args:
        slice_size: ``(H, W)`` of the (padded) slice.
        window: ``(h, w)`` window size.
        step_size: window step as a fraction of the window (nnU-Net's ``tile_step_size``; 0.5 = half overlap).

    Returns:
        ``(rows, cols)`` slices, row-major; a single window when the slice equals the window size.
    """
    if any(s < w for s, w in zip(slice_size, window, strict=True)):
        raise ValueError(
            f"slice size {tuple(slice_size)} is smaller than the window {tuple(window)}; pad it first"
        )
    steps = compute_steps_for_sliding_window(tuple(slice_size), tuple(window), step_size)
    return [(slice(y, y + window[0]), slice(x, x + window[1])) for y in steps[0] for x in steps[1]]


def stack_indices(num_slices: int, depth: int) -> torch.Tensor:
    """Indices of the ``depth`` neighbouring slices centred on each slice, edges repeated (training's stacks).

    Args:
        num_slices: ``S``.
        depth: ``D`` (odd; 1 for "2d").

    Returns:
        ``S x D`` int64 tensor; row ``s`` is ``clamp(s - D//2 ... s + D//2, 0, S - 1)``.
    """
    _check_depth(depth)
    offsets = torch.arange(depth) - depth // 2
    return (torch.arange(num_slices)[:, None] + offsets[None, :]).clamp_(0, num_slices - 1)


def _check_depth(depth: int) -> None:
    if depth < 1 or depth % 2 == 0:
        raise ValueError(f"stack depth must be odd and positive, got {depth}")
