"""Windows over the slices of a preprocessed case, as small pure functions (nnU-Net's sliding window).

A preprocessed case is ``C x S x H x W`` (slice axis first). Every slice is cut into in-plane windows of
the plan's ``window_size`` (256 x 256, SAM's input): a slice smaller than the window is zero-padded around
its centre (nnU-Net's ``pad_nd_image``), a larger one is tiled with overlapping windows placed by nnU-Net's
``compute_steps_for_sliding_window`` and blended with its Gaussian importance map (``compute_gaussian``).
For "3d" configurations each slice is the centre of a stack of ``D`` neighbouring slices, edge slices
repeated (index clamping), as training samples them; the network predicts every slice of a stack, and
these overlapping predictions are blended with the Gaussian of a ``D x h x w`` tile (nnU-Net's 3D
blending), so a slice's own stack counts most.

:func:`sliding_window_predict` drives any ``window_fn`` over these windows; the network-specific parts
(encoder sharing, fold ensembling, mirroring) live in :mod:`pipeline.inference.predictor` and
:mod:`pipeline.inference.tta`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

# window_fn(images n x C x h x w, stacks B x D indices into images) -> B x D x K+1 x h x w probabilities
WindowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_STEP_SIZE = 0.5
DEFAULT_CHUNK_STACKS = 16


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


def gaussian_importance(tile: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """nnU-Net's Gaussian importance map of a tile (e.g. ``D x h x w``; sigma = tile / 8, no zeros), float32."""
    return compute_gaussian(
        tuple(tile),
        sigma_scale=1.0 / 8,
        value_scaling_factor=1.0,
        dtype=torch.float32,
        device=torch.device(device),
    )


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


def sliding_window_predict(
    data: torch.Tensor,
    window_fn: WindowFn,
    *,
    num_outputs: int,
    window: Sequence[int],
    depth: int = 1,
    step_size: float = DEFAULT_STEP_SIZE,
    chunk_stacks: int = DEFAULT_CHUNK_STACKS,
) -> torch.Tensor:
    """Predict every slice of a case window by window and blend the windows, as nnU-Net does.

    The tiles are ``D x h x w``: the stack centred on each slice (:func:`stack_indices`, as training
    samples them) times the in-plane windows (:func:`window_slicers`). The network predicts every slice
    of a stack; all these predictions are blended with nnU-Net's Gaussian importance map of the tile, so
    a slice's own stack and the window centres count most. For each in-plane position the
    stacks go to ``window_fn`` in chunks of ``chunk_stacks`` together with the slices they need, so
    memory stays bounded for long volumes and ``window_fn`` can encode each slice once for all stacks
    that contain it.

    Args:
        data: ``C x S x H x W`` preprocessed case (values in [0, 1]).
        window_fn: ``window_fn(images, stacks)``: ``images`` is ``n x C x h x w`` (consecutive slices
            cut at one window position), ``stacks`` is ``B x D`` indices into ``images``; returns
            ``B x D x num_outputs x h x w`` probabilities of every slice of every stack.
        num_outputs: ``K + 1`` (background and classes).
        window: ``(h, w)`` in-plane window size.
        depth: stack depth ``D`` (1 for "2d").
        step_size: overlap of neighbouring in-plane windows (0.5: half a window).
        chunk_stacks: stacks per call of ``window_fn``.

    Returns:
        ``num_outputs x S x H x W`` float32 probabilities (Gaussian-weighted mean over overlapping tiles).
    """
    num_slices = data.shape[1]
    padded, unpad = pad_to_window(data, window)
    rows, cols = padded.shape[-2:]
    gaussian = gaussian_importance((depth, *window), device=data.device)  # D x h x w
    result = torch.zeros((num_outputs, num_slices, rows, cols), dtype=torch.float32, device=data.device)
    weights = torch.zeros((num_slices, rows, cols), dtype=torch.float32, device=data.device)
    for row_slice, col_slice in window_slicers((rows, cols), window, step_size=step_size):
        for stacks in stack_indices(num_slices, depth).split(chunk_stacks):
            low, high = int(stacks.min()), int(stacks.max()) + 1
            images = padded[:, low:high, row_slice, col_slice].transpose(0, 1)
            probabilities = window_fn(images, stacks - low).to(result.device, torch.float32)
            weighted = (probabilities * gaussian[None, :, None]).flatten(0, 1).transpose(0, 1)
            result[:, :, row_slice, col_slice].index_add_(1, stacks.flatten(), weighted)
            weights[:, row_slice, col_slice].index_add_(
                0, stacks.flatten(), gaussian.repeat(len(stacks), 1, 1)
            )
    result /= weights
    return result[(slice(None), slice(None), *unpad[-2:])]


def _check_depth(depth: int) -> None:
    if depth < 1 or depth % 2 == 0:
        raise ValueError(f"stack depth must be odd and positive, got {depth}")
