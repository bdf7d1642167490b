"""``segment_volume``: an object through a volume from one 3D box, slice by slice (LiteMedSAM's 3D
inference)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from autoprompt.errors import AutoPromptError
from autoprompt.interactive.images import ImageLike, LoadedImage, check_output
from autoprompt.interactive.predictor import ModelOptions, SliceFrame, box_from_mask, check_box
from autoprompt.progress import progress
from pipeline.io import write_image

PROPAGATION_MARGIN = 3
"""Pixels (in the 256 frame) added around the previous slice's mask box in :func:`segment_volume`."""


def propagation_order(z_min: int, z_max: int) -> Iterator[tuple[int, int | None]]:
    """``(slice, neighbour whose mask gives its box)``: the middle slice first (``None``: use the 3D box's
    2D box), then up to ``z_max``, then down to ``z_min``, both inclusive (LiteMedSAM's 3D inference)."""
    middle = (z_min + z_max) // 2
    yield middle, None
    for z in range(middle + 1, z_max + 1):
        yield z, z - 1
    for z in range(middle - 1, z_min - 1, -1):
        yield z, z + 1


def segment_volume(
    image: ImageLike,
    *,
    box3d: Sequence[float],
    output: str | os.PathLike | None = None,
    model: ModelOptions | None = None,
) -> np.ndarray:
    """Segment an object through a volume from one 3D box, slice by slice (LiteMedSAM's 3D inference).

    The middle slice of the box's z-range is segmented with the box's 2D part; each further slice, going
    up and then down, takes the bounding box of its neighbour's mask (widened by
    :data:`PROPAGATION_MARGIN` pixels of the 256 frame), or the 2D box again where that mask is empty.

    Args:
        image: a 3D image file or ``(Z, Y, X)`` array.
        box3d: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in voxels, z range inclusive.
        output: mask file to write in the image's geometry.
        model: as in :func:`~autoprompt.interactive.segment.segment`.

    Returns:
        The ``(Z, Y, X)`` uint8 0/1 mask.

    Raises:
        AutoPromptError: a 2D image, a box outside the volume, bad output name or weights.
    """
    loaded = LoadedImage.of(image)
    if loaded.array.ndim != 3:
        raise AutoPromptError(
            f"{loaded.source}: --box3d needs a 3D image, this one is 2D; give --box X1 Y1 X2 Y2"
        )
    if output is not None:
        check_output(output, ndim=3)
    values = np.asarray(box3d, dtype=np.float64).reshape(-1)
    if values.size != 6:
        raise AutoPromptError(
            f"{loaded.source}: a 3D box has 6 numbers, got {values.size}; give --box3d X1 Y1 Z1 X2 Y2 Z2"
        )
    if not np.all(np.isfinite(values)):
        raise AutoPromptError(
            f"{loaded.source}: 3D box ({', '.join(f'{v:g}' for v in values)}) holds a value that is not a "
            "finite number; give --box3d X1 Y1 Z1 X2 Y2 Z2 in voxels"
        )
    x1, y1, z1, x2, y2, z2 = values
    depth = loaded.array.shape[0]
    if not (0 <= z1 <= z2 <= depth - 1) or z1 != int(z1) or z2 != int(z2):
        raise AutoPromptError(
            f"{loaded.source}: 3D box z range {z1:g}..{z2:g} is not within slices 0..{depth - 1}; "
            "give whole slice numbers with Z1 <= Z2"
        )
    box2d = check_box((x1, y1, x2, y2), loaded.array.shape[1:], source=loaded.source)
    predictor = (model or ModelOptions()).predictor()
    clip = loaded.intensity_range
    frame = SliceFrame(*loaded.array.shape[1:], input_size=predictor.backbone.model_input_size)
    margin = PROPAGATION_MARGIN / frame.scale
    mask = np.zeros(loaded.array.shape, dtype=np.uint8)
    order = list(propagation_order(int(z1), int(z2)))
    for z, neighbour in progress(order, desc="segmenting slices", unit="slice"):
        previous = None if neighbour is None else mask[neighbour]
        box = box_from_mask(previous, margin=margin) if previous is not None and previous.any() else box2d
        predictor.set_image(loaded.array[z], intensity_range=clip)
        mask[z] = predictor.predict(box=box).mask
    if output is not None:
        write_image(mask, loaded.geometry, output)
    return mask
