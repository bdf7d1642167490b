"""Windows over the slices of a preprocessed case, as small pure functions (nnU-Net's sliding window).

A preprocessed case is ``C x S x H x W`` (slice axis first). Its windows and stacks are those of
:mod:`pipeline.windows` (the geometry training shares): in-plane windows of the plan's ``window_size``
on the padded slice, and for "3d" configurations a stack of ``D`` neighbouring slices around each
slice. Overlapping windows are blended with nnU-Net's Gaussian importance map (``compute_gaussian``);
the network predicts every slice of a stack, and these overlapping predictions are blended with the
Gaussian of a ``D x h x w`` tile (nnU-Net's 3D blending), so a slice's own stack counts most.

:func:`sliding_window_slabs` drives any ``window_fn`` over these windows and hands the blended probabilities
back a slab of finished slices at a time (:func:`sliding_window_predict` gathers them); the network-specific parts
(encoder sharing, fold ensembling, mirroring) live in :mod:`pipeline.inference.predictor` and
:mod:`pipeline.inference.tta`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

from pipeline.windows import DEFAULT_STEP_SIZE, pad_to_window, stack_indices, window_slicers

# window_fn(images n x C x h x w, stacks B x D indices into images) -> B x D x K+1 x h x w probabilities
# (B x 1 x K+1 x h x w, the centre slices, with centre_only)
WindowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_CHUNK_STACKS = 16


def gaussian_importance(tile: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """nnU-Net's Gaussian importance map of a tile (e.g. ``D x h x w``; sigma = tile / 8, no zeros), float32."""
    return compute_gaussian(
        tuple(tile),
        sigma_scale=1.0 / 8,
        value_scaling_factor=1.0,
        dtype=torch.float32,
        device=torch.device(device),
    )


def sliding_window_slabs(
    data: torch.Tensor,
    window_fn: WindowFn,
    *,
    num_outputs: int,
    window: Sequence[int],
    depth: int = 1,
    step_size: float = DEFAULT_STEP_SIZE,
    chunk_stacks: int = DEFAULT_CHUNK_STACKS,
    centre_only: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Predict every slice of a case window by window, blend the windows as nnU-Net does, and yield the
    finished slices in slabs, so no more than a few slabs of probabilities are ever held.

    The tiles are ``D x h x w``: the stack centred on each slice (:func:`stack_indices`, as training
    samples them) times the in-plane windows (:func:`window_slicers`). The network predicts every slice
    of a stack; all these predictions are blended with nnU-Net's Gaussian importance map of the tile, so
    a slice's own stack and the window centres count most. The stacks go to ``window_fn`` in chunks of
    ``chunk_stacks`` (at every in-plane position in turn) together with the slices they need, so
    ``window_fn`` can encode each slice once for all stacks that contain it. A slice is finished once
    every stack containing it is predicted (the stacks centred up to ``D // 2`` slices past it); the
    accumulator holds only the unfinished slices, ``chunk_stacks + D - 1`` at most.

    Args:
        data: ``C x S x H x W`` preprocessed case (values in [0, 1]).
        window_fn: ``window_fn(images, stacks)``: ``images`` is ``n x C x h x w`` (consecutive slices
            cut at one window position), ``stacks`` is ``B x D`` indices into ``images``; returns
            ``B x D x num_outputs x h x w`` probabilities of every slice of every stack
            (``B x 1 x ...`` of the centre slices with ``centre_only``).
        num_outputs: ``K + 1`` (background and classes).
        window: ``(h, w)`` in-plane window size.
        depth: stack depth ``D`` (1 for "2d").
        step_size: overlap of neighbouring in-plane windows (0.5: half a window).
        chunk_stacks: stacks per call of ``window_fn``.
        centre_only: ``window_fn`` predicts only the centre slice of each stack.

    Yields:
        ``(start, probabilities)``: ``num_outputs x n x H x W`` float32 probabilities of slices
        ``start .. start + n - 1`` (Gaussian-weighted mean over overlapping tiles), in slice order,
        together covering all ``S`` slices once.
    """
    num_slices = data.shape[1]
    reach = depth // 2
    padded, unpad = pad_to_window(data, window)
    rows, cols = padded.shape[-2:]
    positions = window_slicers((rows, cols), window, step_size=step_size)
    gaussian = gaussian_importance((1 if centre_only else depth, *window), device=data.device)  # D' x h x w
    # the unfinished slices first .. first + len(weights) - 1
    first = 0
    result = torch.zeros((num_outputs, 0, rows, cols), dtype=torch.float32, device=data.device)
    weights = torch.zeros((0, rows, cols), dtype=torch.float32, device=data.device)
    all_stacks = stack_indices(num_slices, depth)
    for centre in range(0, num_slices, chunk_stacks):
        stacks = all_stacks[centre : centre + chunk_stacks]
        low, high = int(stacks.min()), int(stacks.max()) + 1
        if high - first > len(weights):
            grow = high - first - len(weights)
            result = torch.cat([result, result.new_zeros((num_outputs, grow, rows, cols))], dim=1)
            weights = torch.cat([weights, weights.new_zeros((grow, rows, cols))])
        targets = (stacks[:, reach : reach + 1] if centre_only else stacks).flatten() - first
        for row_slice, col_slice in positions:
            images = padded[:, low:high, row_slice, col_slice].transpose(0, 1)
            probabilities = window_fn(images, stacks - low).to(result.device, torch.float32)
            weighted = (probabilities * gaussian[None, :, None]).flatten(0, 1).transpose(0, 1)
            result[:, :, row_slice, col_slice].index_add_(1, targets, weighted)
            weights[:, row_slice, col_slice].index_add_(0, targets, gaussian.repeat(len(stacks), 1, 1))
        done = centre + len(stacks)
        finished = (num_slices if done == num_slices else done - reach) - first
        if finished > 0:
            slab = result[:, :finished] / weights[:finished]
            yield first, slab[(slice(None), slice(None), *unpad[-2:])]
            result, weights = result[:, finished:], weights[finished:]
            first += finished


def sliding_window_predict(
    data: torch.Tensor,
    window_fn: WindowFn,
    *,
    num_outputs: int,
    window: Sequence[int],
    depth: int = 1,
    step_size: float = DEFAULT_STEP_SIZE,
    chunk_stacks: int = DEFAULT_CHUNK_STACKS,
    centre_only: bool = False,
) -> torch.Tensor:
    """All slices of :func:`sliding_window_slabs` in one tensor (same arguments).

    Returns:
        ``num_outputs x S x H x W`` float32 probabilities (Gaussian-weighted mean over overlapping tiles).
    """
    result = torch.empty((num_outputs, *data.shape[1:]), dtype=torch.float32, device=data.device)
    slabs = sliding_window_slabs(
        data,
        window_fn,
        num_outputs=num_outputs,
        window=window,
        depth=depth,
        step_size=step_size,
        chunk_stacks=chunk_stacks,
        centre_only=centre_only,
    )
    for first, slab in slabs:
        result[:, first : first + slab.shape[1]] = slab
    return result
