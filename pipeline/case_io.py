"""One case as a volume: its channel files read onto one grid, a 2D image as a single slice.

What planning (the fingerprint) and preprocessing (training and inference) read, so both see the same
``C x Z x Y x X`` array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from autoprompt.errors import AutoPromptError
from pipeline.io import Geometry, grey, read_channels

PSEUDO_SLICE_SPACING_2D = 1.0
"""Slice spacing (mm) given to a 2D image, which is treated as a single slice."""


def read_case(
    image_files: Sequence[str | os.PathLike], *, num_channels: int | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case onto one grid.

    Channels are counted as nnU-Net counts them: a file gives its values per pixel (an RGB picture three,
    :func:`~pipeline.io.read_channels`), so one colour ``{case}_0000.png`` fills a three-channel dataset.
    With one file per channel, a colour picture becomes grey (its luminance).

    Args:
        image_files: the case's files in channel order.
        num_channels: the channels the dataset has; None: one per file.

    Returns:
        ``C x Z x Y x X`` float32 (a 2D image is ``C x 1 x Y x X``) and the geometry of the first file.

    Raises:
        AutoPromptError: a file is unreadable, the files do not hold ``num_channels`` channels, or channels
            differ in size, spacing, origin or direction.
    """
    if not image_files:
        raise ValueError("image_files is empty")
    num_channels = len(image_files) if num_channels is None else num_channels
    files, geometry = [], None
    for path in image_files:
        values, channel_geometry = read_channels(path)
        if geometry is None:
            geometry = channel_geometry
        elif mismatches := geometry.mismatches(channel_geometry):
            raise AutoPromptError(
                f"{path}: its {'/'.join(mismatches)} differs from {image_files[0]}; "
                "all channels of a case must lie on the same voxel grid (resample them first)"
            )
        files.append(values)
    if sum(len(values) for values in files) != num_channels:
        if len(files) != num_channels:
            held = sum(len(values) for values in files)
            raise AutoPromptError(
                f"{image_files[0]}: the case's {len(files)} file(s) hold {held} channel(s), {num_channels} are "
                "needed; give one file per channel ({case}_0000, {case}_0001, ...) or, for three channels, "
                "one RGB picture"
            )
        files = [values if len(values) == 1 else grey(values)[None] for values in files]
    data = np.concatenate([values.astype(np.float32, copy=False) for values in files])
    return (data[:, None] if data.ndim == 3 else data), geometry
