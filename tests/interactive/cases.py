"""Images with known answers for the promptable model: synthetic ellipses and a real ACDC left ventricle.

Shared by the tests in this folder and ``benchmarks/precision.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import read_image

ACDC_CASE = "patient002_frame01"
"""The fixed ACDC case (ED frame of patient 2, 10 slices of 256 x 232)."""
ACDC_LV_LABEL = 3
BOX_MARGIN = 3
"""Pixels added around a ground-truth mask's bounding box, as MedSAM does for its box prompts."""


@dataclass
class PromptCase:
    """A slice, its ground truth and a box prompt around it.

    Attributes:
        image: ``H x W`` (or ``Z x H x W``) intensities.
        truth: bool mask of the same shape.
        box: ``[x_min, y_min, x_max, y_max]`` of the truth (2D; for volumes the in-plane box), widened.
    """

    name: str
    image: np.ndarray
    truth: np.ndarray
    box: tuple[float, float, float, float]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, truth).sum() / total)


def box_around(mask: np.ndarray, *, margin: int = BOX_MARGIN) -> tuple[float, float, float, float]:
    """``[x_min, y_min, x_max, y_max]`` of the last two axes of a non-empty mask, widened and clipped."""
    plane = mask.reshape(-1, *mask.shape[-2:]).any(axis=0)
    rows, cols = np.nonzero(plane)
    height, width = plane.shape
    return (
        float(max(0, cols.min() - margin)),
        float(max(0, rows.min() - margin)),
        float(min(width - 1, cols.max() + margin)),
        float(min(height - 1, rows.max() + margin)),
    )


def ellipse_case(
    shape: tuple[int, ...] = (160, 200), *, radii: tuple[float, ...] = (30, 45), seed: int = 0
) -> PromptCase:
    """A bright ellipse (2D) or ellipsoid (3D, first axis = Z) in Gaussian noise, MR-like intensities.

    Args:
        shape: ``(H, W)`` or ``(Z, H, W)``.
        radii: semi-axes per axis, in voxels.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = [(n - 1) / 2 + 0.1 * n * (i == len(shape) - 1) for i, n in enumerate(shape)]  # off-centre in x
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0
    image = rng.normal(200.0, 25.0, size=shape) + 400.0 * inside
    return PromptCase(f"ellipse{len(shape)}d", image.astype(np.float32), inside, box_around(inside))


def acdc_lv_case(data_root: Path) -> tuple[PromptCase, int]:
    """The slice of :data:`ACDC_CASE` with the largest left ventricle, and its index.

    Args:
        data_root: folder holding ``Dataset027_ACDC``.
    """
    folder = Path(data_root) / "Dataset027_ACDC"
    volume, _ = read_image(folder / "imagesTr" / f"{ACDC_CASE}_0000.nii.gz")
    labels, _ = read_image(folder / "labelsTr" / f"{ACDC_CASE}.nii.gz")
    lv = labels == ACDC_LV_LABEL
    index = int(np.argmax(lv.sum(axis=(1, 2))))
    return PromptCase("acdc_lv", volume[index], lv[index], box_around(lv[index])), index
