"""Where each training window's decoder region lies (``TrainerConfig.decoder_region_tokens``).

SAM's mask decoder costs in proportion to the image tokens it attends over, and on a CPU it dominates a
training step from cached embeddings. Training it on a ``t x t`` square of the ``G x G`` embedding makes
a step several times cheaper. The square is centred on the window's labels (all classes together), moved
by up to ``t / 4`` tokens at random so that the labels do not always sit in its middle, and kept inside
the window; a window without labels gets a square anywhere. Prediction decodes whole windows unless
``model.inference_region_tokens`` is set (:func:`~autoprompt.modeling.class_decoder.regions_around`).
"""

from __future__ import annotations

import torch

from autoprompt.modeling.class_decoder import DecoderRegion, centred_offsets
from autoprompt.modeling.prompt_generators import boxes_from_masks


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
    spare = grid - tokens
    jitter = torch.randint(-(tokens // 4), tokens // 4 + 1, (len(target), 2), generator=generator)
    anywhere = torch.randint(0, spare + 1, (len(target), 2), generator=generator)
    centred = (centred_offsets(boxes_from_masks(labelled), tokens=tokens, grid=grid) + jitter).clamp(0, spare)
    has_labels = labelled.flatten(1).any(dim=1)
    return DecoderRegion(torch.where(has_labels[:, None], centred, anywhere), tokens, grid)
