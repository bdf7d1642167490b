"""Images for promptable segmentation: a file or array with its geometry and its clipping range."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoprompt.errors import AutoPromptError
from pipeline.io import LOSSY_SUFFIXES, Geometry, image_suffix, lossy_output_error, read_image

INTENSITY_PERCENTILES = (0.5, 99.5)
"""Clipping percentiles of medical images (MedSAM's MR preprocessing)."""

EIGHT_BIT_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Pictures that are only min-max scaled, never clipped."""

ImageLike = str | os.PathLike | np.ndarray


def intensity_range(array: np.ndarray, *, eight_bit: bool) -> tuple[float, float] | None:
    """The clipping range of an image: its 0.5 / 99.5 percentiles, ``None`` for 8-bit pictures."""
    if eight_bit:
        return None
    low, high = np.percentile(array, INTENSITY_PERCENTILES)
    return float(low), float(high)


@dataclass
class LoadedImage:
    """An image with what the interactive functions need to know about it.

    Attributes:
        array: ``(Z, Y, X)`` or ``(Y, X)`` voxels.
        geometry: where they lie (default: 1 mm spacing at the origin, for arrays).
        source: the file name for messages (``"array"`` for arrays).
        eight_bit: a PNG/JPEG picture or a uint8 array (min-max only, no percentile clipping).
    """

    array: np.ndarray
    geometry: Geometry
    source: str
    eight_bit: bool

    @classmethod
    def of(cls, image: ImageLike) -> LoadedImage:
        """Read a file (any :func:`pipeline.io.read_image` format) or wrap a 2D/3D array."""
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise ValueError(f"image arrays are (Y, X) or (Z, Y, X), got shape {image.shape}")
            ndim = image.ndim
            identity = tuple(float(i == j) for i in range(ndim) for j in range(ndim))
            geometry = Geometry((1.0,) * ndim, (0.0,) * ndim, identity, tuple(reversed(image.shape)))
            return cls(image, geometry, "array", image.dtype == np.uint8)
        array, geometry = read_image(image)
        return cls(array, geometry, str(image), image_suffix(image) in EIGHT_BIT_SUFFIXES)

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """Clipping range over the whole image (volume or slice)."""
        return intensity_range(self.array, eight_bit=self.eight_bit)

    def slice(
        self, slice_index: int | None, *, volume_hint: str = "give the slice with --slice Z"
    ) -> np.ndarray:
        """The ``H x W`` slice to work on: the image itself (2D) or ``array[slice_index]`` (3D).

        Raises:
            AutoPromptError: a slice index for a 2D image, none for a 3D one, or out of range.
        """
        if self.array.ndim == 2:
            if slice_index is not None:
                raise AutoPromptError(
                    f"{self.source}: --slice {slice_index} was given but the image is 2D; leave out --slice"
                )
            return self.array
        depth = self.array.shape[0]
        if slice_index is None:
            raise AutoPromptError(f"{self.source}: the image is 3D with {depth} slices; {volume_hint}")
        if not 0 <= slice_index < depth:
            raise AutoPromptError(
                f"{self.source}: --slice {slice_index} is out of range; the image has slices 0..{depth - 1} (axis 0 = Z)"
            )
        return self.array[slice_index]


def check_output(output: str | os.PathLike, *, ndim: int) -> None:
    """Fail before any model work if ``output`` cannot hold an ``ndim``-D mask."""
    suffix = image_suffix(Path(output)) if Path(output).suffix else ""
    if suffix == "":
        raise AutoPromptError(f"{output}: give the mask file an image ending such as .nii.gz or .png")
    if suffix in LOSSY_SUFFIXES:
        raise lossy_output_error(output)
    if ndim == 3 and suffix in EIGHT_BIT_SUFFIXES:
        raise AutoPromptError(f"{output}: a 3D mask does not fit in {suffix}; write .nii.gz")
