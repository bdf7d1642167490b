"""``segment_volume``: LiteMedSAM's slice-by-slice propagation from one 3D box, with the real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoprompt.interactive.predictor import ModelOptions
from autoprompt.interactive.volume import segment_volume
from autoprompt.modeling.backbone import SamBackbone
from pipeline.io import read_image
from tests.interactive.cases import dice, ellipse_case


def test_propagates_through_an_ellipsoid(litemedsam: SamBackbone, tmp_path: Path) -> None:
    case = ellipse_case((7, 96, 112), radii=(3.4, 30, 38), seed=3)
    slices_with_object = np.flatnonzero(case.truth.any(axis=(1, 2)))
    assert slices_with_object.tolist() == list(range(7))
    x1, y1, x2, y2 = case.box
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing((0.9, 0.9, 4.0))
    image.SetOrigin((-3.0, 8.0, 20.0))
    path = tmp_path / "ellipsoid.nii.gz"
    sitk.WriteImage(image, str(path))
    output = tmp_path / "ellipsoid_mask.nii.gz"
    mask = segment_volume(
        path, box3d=(x1, y1, 0, x2, y2, 6), output=output, model=ModelOptions(litemedsam, device="cpu")
    )
    assert dice(mask, case.truth) > 0.8
    written, geometry = read_image(output)
    assert geometry.matches(read_image(path)[1])
    np.testing.assert_array_equal(written, mask)
