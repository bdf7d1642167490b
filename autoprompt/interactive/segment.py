"""``segment``: one 2D image or one slice of a volume from a box and/or points (MedSAM style)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from autoprompt.errors import AutoPromptError
from autoprompt.interactive.images import ImageLike, LoadedImage, check_output
from autoprompt.interactive.predictor import ModelOptions, check_box, check_points
from pipeline.io import write_image


def segment(
    image: ImageLike,
    *,
    box: Sequence[float] | None = None,
    slice_index: int | None = None,
    points: Sequence[Sequence[float]] | None = None,
    output: str | os.PathLike | None = None,
    model: ModelOptions | None = None,
) -> np.ndarray:
    """Segment one 2D image or one slice of a volume from a box and/or points (MedSAM style).

    Args:
        image: image file (NIfTI, MHA, NRRD, DICOM folder, PNG, JPEG, TIFF) or a ``(Y, X)`` / ``(Z, Y, X)`` array.
        box: ``[x_min, y_min, x_max, y_max]`` in the slice's pixels, x = column, y = row.
        slice_index: the slice of a 3D image (array axis 0 = Z); ``None`` for a 2D image.
        points: ``[(x, y, label), ...]``, label 1 = object, 0 = background.
        output: mask file to write in the image's geometry (a 3D image gives a 3D mask with that slice filled).
        model: the backbone, its weights, the device and the precision (:class:`ModelOptions`);
            None: LiteMedSAM on the best device at its native precision.

    Returns:
        The uint8 0/1 mask, shaped like the image.

    Raises:
        AutoPromptError: unreadable image, bad slice, prompt outside the image, bad output name or weights.
    """
    loaded = LoadedImage.of(image)
    if output is not None:
        check_output(output, ndim=loaded.array.ndim)
    pixels = loaded.slice(slice_index, volume_hint="give the slice with --slice Z, or a 3D box with --box3d")
    if box is None and points is None:
        raise AutoPromptError(
            f"{loaded.source}: no prompt given; give --box X1 Y1 X2 Y2 and/or --points X Y LABEL"
        )
    if box is not None:
        check_box(box, pixels.shape, source=loaded.source)
    if points is not None:
        check_points(points, pixels.shape, source=loaded.source)
    predictor = (model or ModelOptions()).predictor()
    predictor.set_image(pixels, intensity_range=loaded.intensity_range)
    mask = np.zeros(loaded.array.shape, dtype=np.uint8)
    target = mask if slice_index is None else mask[slice_index]
    target[...] = predictor.predict(box=box, points=points).mask
    if output is not None:
        write_image(mask, loaded.geometry, output)
    return mask
