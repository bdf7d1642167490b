"""A second, closer look at the region of interest: the square around a case's foreground, enlarged to the window.

A structure that fills a small part of the window (the heart of a cardiac MRI slice) reaches SAM's
64 x 64 embedding through few positions, and thin parts of it (the myocardium) through one or two. The
square around the foreground of all slices of a case, grown by a margin and resized to the window, gives
the encoder and the mask decoder several times more pixels of it. Training caches such crops as views
(:mod:`pipeline.training.augmented_views`, the boxes from the ground truth); prediction finds the box in
a first pass, predicts the zoomed slices in a second and pastes their probabilities back
(:class:`pipeline.inference.predictor.Predictor`). Training and prediction share the geometry here.

Coordinates are those of the preprocessed slice (rows, columns; pixel centres at integers). One box holds
for every slice of a case, so a stack of neighbouring slices (3d) sees one transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

MIN_FACTOR = 1.25
"""A box that would be enlarged less than this is not worth a second pass (or a zoomed view)."""
FRAGMENT_FRACTION = 0.1
"""Foreground components smaller than this fraction of the largest one (stray fragments) do not widen the box."""
SHIFT = 0.1
"""A training sample's box centre moves by up to this fraction of its side."""


@dataclass(frozen=True)
class RoiBox:
    """A square in slice coordinates: its top-left corner (``top``, ``left``, edges of pixels) and its ``side``."""

    top: float
    left: float
    side: float

    def factor(self, window: Sequence[int]) -> float:
        """How much the box is enlarged when resized to ``window`` (its smaller side)."""
        return min(window) / self.side

    def grown(self, scale: float) -> RoiBox:
        """The square with the same centre and ``scale`` times the side."""
        centre_y, centre_x = self.top + self.side / 2, self.left + self.side / 2
        side = self.side * scale
        return RoiBox(centre_y - side / 2, centre_x - side / 2, side)

    def shifted(self, rows: float, cols: float) -> RoiBox:
        return RoiBox(self.top + rows, self.left + cols, self.side)


def foreground_box(foreground: np.ndarray) -> RoiBox | None:
    """The smallest square around ``foreground`` (``S x H x W`` bool, all slices together), centred on it.

    Components (3D, face-connected) smaller than :data:`FRAGMENT_FRACTION` of the largest are left out, so
    a stray fragment does not widen the box. None when there is no foreground.
    """
    components, count = ndimage.label(foreground)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    kept = np.flatnonzero(sizes >= FRAGMENT_FRACTION * sizes.max()) + 1
    rows, cols = np.nonzero(np.isin(components, kept).any(axis=0))
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = float(max(bottom - top, right - left))
    return RoiBox((top + bottom - side) / 2, (left + right - side) / 2, side)


def fitted(box: RoiBox, *, window: Sequence[int], max_factor: float) -> RoiBox | None:
    """``box`` grown to at least ``min(window) / max_factor``; None when it would be enlarged less than
    :data:`MIN_FACTOR` (not worth a second look)."""
    box = box.grown(max(1.0, min(window) / max_factor / box.side))
    return box if box.factor(window) >= MIN_FACTOR else None


def jittered_box(
    tight: RoiBox, *, margin: float, window: Sequence[int], max_factor: float, rng: np.random.Generator
) -> RoiBox | None:
    """A training sample's region of interest: ``tight`` grown by a margin drawn from 0.5-1.5 x ``margin``,
    :func:`fitted`, its centre moved by up to :data:`SHIFT` of its side (a first pass is not exact)."""
    drawn = margin * rng.uniform(0.5, 1.5)
    box = fitted(tight.grown(1 + 2 * drawn), window=window, max_factor=max_factor)
    if box is None:
        return None
    return box.shifted(*(rng.uniform(-SHIFT, SHIFT, size=2) * box.side))


def roi_box(
    foreground: np.ndarray, *, margin: float, window: Sequence[int], max_factor: float
) -> RoiBox | None:
    """The square around ``foreground`` (:func:`foreground_box`) grown by ``margin`` of its side on each
    side and :func:`fitted` to the window; None without foreground or enlargement."""
    tight = foreground_box(foreground)
    if tight is None:
        return None
    return fitted(tight.grown(1 + 2 * margin), window=window, max_factor=max_factor)


def _grid(box: RoiBox, size: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """``1 x h x w x 2`` sampling grid (``grid_sample``, ``align_corners=False``) of ``box`` resized to ``size``,
    in normalised coordinates of a ``shape`` (``H, W``) slice."""
    h, w = size
    rows = box.top + (torch.arange(h, dtype=torch.float64) + 0.5) * box.side / h
    cols = box.left + (torch.arange(w, dtype=torch.float64) + 0.5) * box.side / w
    y = 2 * rows / shape[0] - 1
    x = 2 * cols / shape[1] - 1
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)
    return grid[None].float()


def zoom_in(data: torch.Tensor, box: RoiBox, size: Sequence[int], *, labels: bool = False) -> torch.Tensor:
    """The box of every slice resized to ``size`` (zero outside the slice).

    Args:
        data: ``C x S x H x W`` images (bilinear) or, with ``labels``, ``S x H x W`` label maps (nearest).

    Returns:
        ``C x S x h x w`` (or ``S x h x w``), the dtype of ``data``.
    """
    slices = data[:, None] if labels else data.transpose(0, 1)  # S x C x H x W
    grid = _grid(box, size, data.shape[-2:]).expand(len(slices), -1, -1, -1)
    mode = "nearest" if labels else "bilinear"
    out = F.grid_sample(slices.float(), grid.to(data.device), mode=mode, align_corners=False)
    return (out[:, 0] if labels else out.transpose(0, 1)).to(data.dtype)


def zoom_out(
    probabilities: torch.Tensor, box: RoiBox, shape: Sequence[int]
) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Zoomed predictions back on the slice: the part of the box inside a ``shape`` (``H, W``) slice.

    Args:
        probabilities: ``K x n x h x w`` predictions of the zoomed slices (bilinear).

    Returns:
        ``K x n x rows x cols`` and the ``(rows, cols)`` slices of the slice they cover.
    """
    height, width = shape
    rows = slice(max(int(np.floor(box.top)), 0), min(int(np.ceil(box.top + box.side)), height))
    cols = slice(max(int(np.floor(box.left)), 0), min(int(np.ceil(box.left + box.side)), width))
    # pixel centres of the region in the zoomed grid's normalised coordinates
    y = (torch.arange(rows.start, rows.stop, dtype=torch.float64) + 0.5 - box.top) / box.side * 2 - 1
    x = (torch.arange(cols.start, cols.stop, dtype=torch.float64) + 0.5 - box.left) / box.side * 2 - 1
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)[None].float()
    slices = probabilities.transpose(0, 1)  # n x K x h x w
    grid = grid.expand(len(slices), -1, -1, -1).to(probabilities.device)
    out = F.grid_sample(slices.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.transpose(0, 1), (rows, cols)
