"""Where each training window's decoder region lies (``TrainerConfig.decoder_region_tokens``).

SAM's mask decoder costs in proportion to the image tokens it attends over, and on a CPU it dominates a
training step from cached embeddings. Training it on a ``t x t`` square of the ``G x G`` embedding makes
a step several times cheaper. The square is centred on the window's labels (all classes together), moved
by up to ``t / 4`` tokens at random so that the labels do not always sit in its middle, and kept inside
the window; a window without labels gets a square anywhere. Prediction always decodes the whole window.
"""

from __future__ import annotations

import torch

from autoprompt.modeling.class_decoder import DecoderRegion


def decoder_regions(
    target: torch.Tensor, *, num_classes: int, tokens: int, grid: int, generator: torch.Generator
) -> DecoderRegion:
    """One square per window, around its labels.

    Args:
        target: ``N x S x S`` int labels in ``0..K`` (``K + 1``, the ignore label, is not a label here);
            S a multiple of ``grid``.
        num_classes: K.
        tokens: t, the side of the square in tokens (``1 <= t <= grid``).
        grid: G, the side of the image embedding in tokens.
        generator: a CPU generator (draws the jitter and the squares of empty windows).

    Returns:
        The :class:`DecoderRegion` of the ``N`` windows (offsets on the CPU).
    """
    labelled = ((target >= 1) & (target <= num_classes)).cpu()
    scale = target.shape[-1] / grid
    spare = grid - tokens
    jitter = torch.randint(-(tokens // 4), tokens // 4 + 1, (len(target), 2), generator=generator)
    anywhere = torch.randint(0, spare + 1, (len(target), 2), generator=generator)
    offsets = torch.empty((len(target), 2), dtype=torch.int64)
    for index, window in enumerate(labelled):
        rows, columns = window.any(dim=1).nonzero(), window.any(dim=0).nonzero()
        if len(rows) == 0:
            offsets[index] = anywhere[index]
            continue
        centre = torch.stack([rows.min() + rows.max() + 1, columns.min() + columns.max() + 1]) / (2 * scale)
        offsets[index] = (torch.round(centre - tokens / 2).long() + jitter[index]).clamp(0, spare)
    return DecoderRegion(offsets, tokens, grid)
