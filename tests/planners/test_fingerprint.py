"""Fingerprint values on a tiny dataset whose spacing, crop and foreground intensities are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.errors import AutoPromptError
from pipeline.dataset import load_raw_dataset
from planners.fingerprint import extract_fingerprint

SPACING_XYZ = (0.5, 0.7, 2.0)


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(path))


def _case(
    folder: Path, name: str, num_slices: int, blocks: list[tuple[tuple[slice, ...], int, float]]
) -> None:
    """Tissue of value 5 in [1:, 2:8, 1:11] (zero around it); each block gets a label and an intensity."""
    image = np.zeros((num_slices, 10, 12), dtype=np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    image[1:, 2:8, 1:11] = 5.0
    for where, value, intensity in blocks:
        label[where] = value
        image[where] = intensity
    _write(image, folder / "imagesTr" / f"{name}_0000.nii.gz")
    _write(2 * image, folder / "imagesTr" / f"{name}_0001.nii.gz")
    _write(label, folder / "labelsTr" / f"{name}.nii.gz")


@pytest.fixture
def known_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "Dataset950_Known"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    # case a: 8 voxels of 10 (label 1) and 8 of 30 (label 2); case b: 16 voxels of 20 (label 1)
    _case(folder, "a", 4, [(np.s_[1:3, 3:5, 2:4], 1, 10.0), (np.s_[1:3, 5:7, 6:8], 2, 30.0)])
    _case(folder, "b", 6, [(np.s_[2:4, 3:7, 2:4], 1, 20.0)])
    dataset_json = {
        "channel_names": {"0": "MRI", "1": "CT"},
        "labels": {"background": 0, "one": 1, "two": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def test_fingerprint_of_a_known_dataset(known_dataset: Path) -> None:
    fingerprint = extract_fingerprint(load_raw_dataset(known_dataset), num_processes=2)
    assert fingerprint["dataset_name"] == "Dataset950_Known"
    assert fingerprint["ndim"] == 3
    assert fingerprint["num_cases"] == 2
    # spacing in array order (Z, Y, X); the crop removes slice 0, rows 0-1 and 8-9, columns 0 and 11
    case_a, case_b = fingerprint["cases"]["a"], fingerprint["cases"]["b"]
    assert case_a["spacing"] == case_b["spacing"] == pytest.approx([2.0, 0.7, 0.5])
    assert (case_a["shape"], case_a["shape_after_crop"]) == ([4, 10, 12], [3, 6, 10])
    assert (case_b["shape"], case_b["shape_after_crop"]) == ([6, 10, 12], [5, 6, 10])
    assert fingerprint["median_spacing"] == pytest.approx([2.0, 0.7, 0.5])
    assert fingerprint["median_shape_after_crop"] == [4.0, 6.0, 10.0]
    # pooled foreground: 8 x 10, 16 x 20, 8 x 30 -> mean 20, variance (8*100 + 8*100) / 32 = 50
    stats = fingerprint["foreground_intensity_properties_per_channel"]
    assert stats["0"] == pytest.approx(
        {
            "mean": 20.0,
            "std": math.sqrt(50),
            "min": 10.0,
            "max": 30.0,
            "median": 20.0,
            "percentile_00_5": 10.0,
            "percentile_99_5": 30.0,
        }
    )
    assert stats["1"] == pytest.approx(
        {
            "mean": 40.0,
            "std": 2 * math.sqrt(50),
            "min": 20.0,
            "max": 60.0,
            "median": 40.0,
            "percentile_00_5": 20.0,
            "percentile_99_5": 60.0,
        }
    )
    json.dumps(fingerprint)  # plain JSON


def test_a_dataset_without_foreground_is_refused(known_dataset: Path) -> None:
    for path in (known_dataset / "labelsTr").iterdir():
        _write(np.zeros((sitk.ReadImage(str(path)).GetDepth(), 10, 12), dtype=np.uint8), path)
    with pytest.raises(AutoPromptError, match=r"labelsTr: no label map has a foreground voxel"):
        extract_fingerprint(load_raw_dataset(known_dataset), num_processes=1)
