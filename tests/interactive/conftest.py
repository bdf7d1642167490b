"""Backbones and images shared by the interactive tests (the real LiteMedSAM is loaded once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.modeling.backbone import SamBackbone, load_backbone


@pytest.fixture(scope="session")
def litemedsam() -> SamBackbone:
    """The real, checksum-verified LiteMedSAM backbone."""
    return load_backbone("litemedsam")


@pytest.fixture(scope="session")
def tiny() -> SamBackbone:
    """The small random backbone: right shapes and interfaces, meaningless masks."""
    return load_backbone("tiny")


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    """A 3 x 40 x 48 NIfTI volume with anisotropic spacing, an offset origin and a rotated direction."""
    rng = np.random.default_rng(1)
    array = rng.normal(100.0, 10.0, size=(3, 40, 48)).astype(np.float32)
    array[:, 10:30, 12:36] += 200.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetOrigin((12.5, -40.0, 7.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    """A 50 x 70 8-bit PNG with a bright rectangle."""
    array = np.full((50, 70), 40, dtype=np.uint8)
    array[15:35, 20:50] = 220
    path = tmp_path / "picture.png"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path
