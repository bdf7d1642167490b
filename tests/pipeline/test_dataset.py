"""pipeline.dataset: loading nnU-Net v2 raw datasets and reporting every problem, naming the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autoprompt.errors import AutoPromptError
from pipeline.dataset import load_raw_dataset, verify_dataset
from pipeline.io import read_image, write_image
from tests.synthetic_data import make_synthetic_dataset


def _dataset(tmp_path: Path, **kwargs) -> Path:
    """A small clean dataset: 3 cases of 4 x 16 x 12 voxels."""
    return make_synthetic_dataset(tmp_path / "raw", num_cases=3, shape=(4, 16, 12), **kwargs)


def _problems(folder: Path, *, num_processes: int = 1) -> list[str]:
    return verify_dataset(load_raw_dataset(folder), num_processes=num_processes)


def _rewrite(path: Path, *, array=None, **geometry_changes) -> None:
    """Write ``path`` again with a new array and/or changed geometry fields."""
    old_array, geometry = read_image(path)
    array = old_array if array is None else array
    size = tuple(reversed(array.shape))
    write_image(array, dataclasses.replace(geometry, size=size, **geometry_changes), path)


def _edit_json(folder: Path, **changes) -> None:
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _only_problem(folder: Path) -> str:
    problems = _problems(folder)
    assert len(problems) == 1, problems
    assert "\n" not in problems[0]
    return problems[0]


def test_load_lists_cases_channels_and_labels(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, num_channels=2)
    dataset = load_raw_dataset(folder)
    assert dataset.name == "Dataset901_Synthetic"
    assert list(dataset.cases) == ["case_000", "case_001", "case_002"]
    case = dataset.cases["case_001"]
    assert case.images == [
        folder / "imagesTr" / "case_001_0000.nii.gz",
        folder / "imagesTr" / "case_001_0001.nii.gz",
    ]
    assert case.label == folder / "labelsTr" / "case_001.nii.gz"
    assert dataset.labels == {"background": 0, "class1": 1, "class2": 2}
    assert dataset.channel_names == {"0": "MRI", "1": "MRI"}


def test_clean_dataset_has_no_problems_with_worker_processes(tmp_path: Path) -> None:
    assert _problems(_dataset(tmp_path, num_channels=2), num_processes=2) == []


def test_missing_channel_is_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, num_channels=2)
    missing = folder / "imagesTr" / "case_001_0001.nii.gz"
    missing.unlink()
    assert _only_problem(folder).startswith(f"{missing}: missing channel 1 of case case_001")


def test_missing_label_is_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    missing = folder / "labelsTr" / "case_002.nii.gz"
    missing.unlink()
    assert _only_problem(folder).startswith(f"{missing}: missing label of case case_002")


def test_label_without_images_is_reported(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    (folder / "imagesTr" / "case_002_0000.nii.gz").rename(folder / "imagesTr" / "case_009_0000.nii.gz")
    problems = _problems(folder)
    assert (
        f"{folder / 'imagesTr' / 'case_002_0000.nii.gz'}: missing channel 0 of case case_002" in problems[-2]
    )
    assert problems[-1].startswith(f"{folder / 'labelsTr' / 'case_009.nii.gz'}: missing label")


def test_size_mismatch_is_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    label = folder / "labelsTr" / "case_000.nii.gz"
    _rewrite(label, array=np.zeros((4, 16, 10), dtype=np.int16))
    problem = _only_problem(folder)
    assert problem.startswith(f"{label}: size [10, 16, 4] differs from [12, 16, 4] of case_000_0000.nii.gz")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spacing", (0.8, 0.8, 2.0)),
        ("origin", (10.0, -5.0, 12.5)),
        ("direction", (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)),
    ],
)
def test_label_geometry_mismatch_is_named(tmp_path: Path, field: str, value: tuple) -> None:
    folder = _dataset(tmp_path)
    label = folder / "labelsTr" / "case_001.nii.gz"
    _rewrite(label, **{field: value})
    problem = _only_problem(folder)
    assert problem.startswith(f"{label}: {field} ")
    assert f"copy the {field} of case_001_0000.nii.gz onto it" in problem


def test_channel_geometry_mismatch_is_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, num_channels=2)
    channel = folder / "imagesTr" / "case_002_0001.nii.gz"
    _rewrite(channel, spacing=(1.0, 0.8, 3.0))
    assert _only_problem(folder).startswith(
        f"{channel}: spacing [1.0, 0.8, 3.0] differs from [0.8, 0.8, 3.0]"
    )


def test_unexpected_label_values_are_listed(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    label = folder / "labelsTr" / "case_000.nii.gz"
    array, _ = read_image(label)
    array[0, 0, :2] = (7, 4)
    _rewrite(label, array=array)
    assert _only_problem(folder).startswith(
        f"{label}: unexpected label values [4, 7] (dataset.json declares [0, 1, 2])"
    )


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_inf_image_is_named(tmp_path: Path, bad_value: float) -> None:
    """In .mha: ITK's NIfTI reader itself turns NaN/inf into 0, so NIfTI data never reaches the check."""
    folder = _dataset(tmp_path, file_ending=".mha")
    image = folder / "imagesTr" / "case_001_0000.mha"
    array, _ = read_image(image)
    array[1, 2, 3] = bad_value
    _rewrite(image, array=array)
    assert _only_problem(folder).startswith(f"{image}: contains NaN or infinite values")


def test_empty_image_is_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    image = folder / "imagesTr" / "case_002_0000.nii.gz"
    _rewrite(image, array=np.zeros((4, 16, 12), dtype=np.float32))
    assert _only_problem(folder).startswith(f"{image}: empty image (every voxel is 0.0)")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    image = folder / "imagesTr" / "case_000_0000.nii.gz"
    image.write_bytes(b"garbage")
    assert _only_problem(folder).startswith(f"{image}: not a readable image")


def test_num_training_mismatch_names_dataset_json(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    _edit_json(folder, numTraining=5)
    problem = _only_problem(folder)
    assert problem.startswith(
        f"{folder / 'dataset.json'}: numTraining is 5 but imagesTr/labelsTr hold 3 cases"
    )


def test_misnamed_files_are_named(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    stray = [folder / "imagesTr" / "case_000.nii.gz", folder / "imagesTr" / "case_000_0001.nii.gz"]
    for path in stray:  # no channel number; a channel dataset.json does not declare
        path.write_bytes(b"")
    problems = _problems(folder)
    assert [p.split(": ")[0] for p in problems] == [str(p) for p in stray]
    assert all("fits no case" in p for p in problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    _edit_json(folder, numTraining=4)
    (folder / "labelsTr" / "case_000.nii.gz").unlink()
    _rewrite(folder / "imagesTr" / "case_002_0000.nii.gz", array=np.ones((4, 16, 12), dtype=np.float32))
    assert len(_problems(folder, num_processes=2)) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "missing; write it as in nnU-Net v2"),
        ("{not json", "not valid JSON"),
        ('{"modality": {"0": "MRI"}, "labels": {"0": "background"}}', "nnU-Net v1 format"),
        ('{"channel_names": {"0": "MRI"}, "labels": {"background": 0}}', "missing numTraining, file_ending"),
    ],
)
def test_unusable_dataset_json_names_it_and_the_fix(tmp_path: Path, text: str | None, message: str) -> None:
    folder = _dataset(tmp_path)
    path = folder / "dataset.json"
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    _assert_refused(folder, message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channel_names": {"1": "MRI"}}, 'channel_names must map "0", "1"'),
        ({"labels": {"organ": 1}}, 'labels must contain "background": 0'),
        ({"labels": {"background": 0, "whole": [1, 2], "core": [2]}}, "region-based labels (whole, core)"),
        ({"labels": {"background": 0, "a": 1, "b": 1}}, "distinct non-negative integers"),
        ({"numTraining": "3"}, "numTraining must be a positive integer"),
        ({"file_ending": ".dcm"}, "file_ending '.dcm' is not one of"),
    ],
)
def test_schema_errors_name_dataset_json_and_the_fix(tmp_path: Path, changes: dict, message: str) -> None:
    folder = _dataset(tmp_path)
    _edit_json(folder, **changes)
    _assert_refused(folder, message)


def _assert_refused(folder: Path, message: str) -> None:
    with pytest.raises(AutoPromptError) as error:
        load_raw_dataset(folder)
    assert str(error.value).startswith(f"{folder / 'dataset.json'}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_folder_without_images_tr_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AutoPromptError, match=f"{tmp_path}: no imagesTr folder"):
        load_raw_dataset(tmp_path)


@pytest.mark.slow
def test_real_acdc_verifies_clean(shared_data: Path) -> None:
    dataset = load_raw_dataset(shared_data / "Dataset027_ACDC")
    assert len(dataset.cases) == 160
    assert verify_dataset(dataset, num_processes=2) == []


def test_bundled_sample_is_a_clean_20_case_dataset_with_its_attribution() -> None:
    sample = Path(__file__).resolve().parents[2] / "sample"
    dataset = load_raw_dataset(sample / "Dataset904_HippocampusSample")
    assert len(dataset.cases) == 20 and dataset.dataset_json["numTraining"] == 20
    assert verify_dataset(dataset, num_processes=2) == []
    readme = (sample / "README.md").read_text()
    assert all(text in readme for text in ("CC-BY-SA 4.0", "arXiv:1902.09063", "Antonelli", "subset"))
