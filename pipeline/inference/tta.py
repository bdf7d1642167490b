"""Mirroring test-time augmentation over the in-plane axes, as nnU-Net does it.

Every window is also predicted flipped along rows, columns and both (models trained on cached views:
along the columns only, :func:`mirror_axes_for`); each prediction is flipped back and the probabilities of
all variants are averaged.
"""

from __future__ import annotations

import itertools

import torch

from pipeline.inference.sliding_window import WindowFn

IN_PLANE_AXES = (-2, -1)
CACHED_VIEWS_MIRROR_AXES = (-1,)
"""What mirroring TTA flips for models trained on cached views: columns only (2 predictions per window instead
of nnU-Net's 4; chosen on cross-validation cases, docs/results.md, round 17)."""


def mirror_axes_for(*, cached_views: bool) -> tuple[int, ...]:
    """The axes mirroring TTA flips for models trained on cached views or not (then rows and columns)."""
    return CACHED_VIEWS_MIRROR_AXES if cached_views else IN_PLANE_AXES


def mirror_combinations(axes: tuple[int, ...] = IN_PLANE_AXES) -> list[tuple[int, ...]]:
    """All flips to evaluate: ``()`` (the original) and every non-empty subset of ``axes``."""
    return [combo for size in range(len(axes) + 1) for combo in itertools.combinations(axes, size)]


def with_mirroring(window_fn: WindowFn, *, axes: tuple[int, ...] = IN_PLANE_AXES) -> WindowFn:
    """Wrap a :data:`~pipeline.inference.sliding_window.WindowFn` with mirroring TTA.

    Args:
        window_fn: ``(images n x C x h x w, stacks B x D) -> B x K+1 x h x w`` probabilities.
        axes: in-plane axes to mirror (negative, counted from the end of both tensors).

    Returns:
        A function with the same signature that returns the mean of the un-mirrored predictions of
        all :func:`mirror_combinations`.
    """
    combinations = mirror_combinations(axes)

    def mirrored(images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        total = None
        for flip in combinations:
            flipped = torch.flip(images, flip) if flip else images
            probabilities = window_fn(flipped, stacks)
            probabilities = torch.flip(probabilities, flip) if flip else probabilities
            total = probabilities if total is None else total + probabilities
        return total / len(combinations)

    return mirrored
