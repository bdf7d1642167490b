"""Helpers shared by the planning and preprocessing tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def add_zero_border(dataset_folder: Path, *, width: tuple[tuple[int, int], ...]) -> None:
    """Set a border of every image in ``imagesTr`` to 0 so that cropping to nonzero removes it.

    Args:
        width: ``(before, after)`` voxels per array axis ``(Z, Y, X)``.
    """
    for path in sorted((dataset_folder / "imagesTr").iterdir()):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        keep = np.zeros(array.shape, dtype=bool)
        keep[tuple(slice(lo, size - hi) for (lo, hi), size in zip(width, array.shape, strict=True))] = True
        array[~keep] = 0
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))


def label_inside(label: np.ndarray, *, width: tuple[tuple[int, int], ...]) -> bool:
    """Whether every foreground voxel of ``label`` lies inside the border of ``width``."""
    inner = label[tuple(slice(lo, size - hi) for (lo, hi), size in zip(width, label.shape, strict=True))]
    return int((inner > 0).sum()) == int((label > 0).sum())
