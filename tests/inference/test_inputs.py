"""Finding cases: channel grouping, plain names, DICOM folders, and the problems named per case."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprompt.errors import AutoPromptError
from pipeline.inference.inputs import find_cases, is_dicom_folder

TWO_CHANNELS = {"0": "T1", "1": "T2"}
ONE_CHANNEL = {"0": "MRI"}


def touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_channels_are_grouped_by_case_and_problems_name_the_file(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "a_0000.nii.gz",
        "a_0001.nii.gz",
        "b_0000.mha",
        "c.nii.gz",
        "notes.txt",
        ".DS_Store",
        "misc/readme.md",
    )
    search = find_cases(tmp_path, channel_names=TWO_CHANNELS)
    cases = {case.case_id: case for case in search.cases}
    assert sorted(cases) == ["a", "b", "c"]
    assert (
        cases["a"].files == [tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"]
        and cases["a"].problem is None
    )
    assert cases["a"].output_name() == "a.nii.gz" and cases["b"].output_name() == "b.mha"
    assert cases["b"].problem == (
        f"{tmp_path / 'b_0001.mha'}: missing channel 1 of case 'b'; the model needs 2 channels (0: T1, 1: T2)"
    )
    assert cases["c"].problem.startswith(
        f"{tmp_path / 'c.nii.gz'}: the model needs 2 channels (0: T1, 1: T2); name the files c_0000"
    )
    assert sorted(path.name for path in search.ignored) == ["misc", "notes.txt"]


def test_single_channel_models_take_plain_names_and_refuse_duplicates(tmp_path: Path) -> None:
    touch(tmp_path, "scan.nii.gz", "other_0000.png", "twice.nii.gz", "twice_0000.nii.gz")
    cases = {case.case_id: case for case in find_cases(tmp_path, channel_names=ONE_CHANNEL).cases}
    assert sorted(cases) == ["other", "scan", "twice"]
    assert cases["scan"].problem is None and cases["other"].output_name() == "other.png"
    assert "case 'twice' has two files for channel 0 (twice.nii.gz); keep one" in cases["twice"].problem


def test_dicom_series_folders_are_cases_written_as_nifti(tmp_path: Path) -> None:
    touch(tmp_path, "series_a/im1.dcm", "series_a/im2.dcm", "other_0000.nii.gz")
    assert is_dicom_folder(tmp_path / "series_a") and not is_dicom_folder(tmp_path)
    cases = {case.case_id: case for case in find_cases(tmp_path, channel_names=ONE_CHANNEL).cases}
    assert cases["series_a"].files == [tmp_path / "series_a"]
    assert cases["series_a"].output_name() == "series_a.nii.gz"
    direct = find_cases(tmp_path / "series_a", channel_names=ONE_CHANNEL).cases
    assert [(case.case_id, case.output_name()) for case in direct] == [("series_a", "series_a.nii.gz")]


def test_dicom_files_without_suffix_are_recognised_by_their_magic(tmp_path: Path) -> None:
    (tmp_path / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert is_dicom_folder(tmp_path)


def test_one_file_is_one_case(tmp_path: Path) -> None:
    touch(tmp_path, "liver_0000.nii.gz")
    [case] = find_cases(tmp_path / "liver_0000.nii.gz", channel_names=ONE_CHANNEL).cases
    assert (case.case_id, case.output_name(".mha"), case.problem) == ("liver", "liver.mha", None)
    [two] = find_cases(tmp_path / "liver_0000.nii.gz", channel_names=TWO_CHANNELS).cases
    assert "missing channel 1 of case 'liver'" in two.problem


def test_unusable_input_paths(tmp_path: Path) -> None:
    with pytest.raises(AutoPromptError, match=f"{tmp_path / 'missing'}: no such file or folder"):
        find_cases(tmp_path / "missing", channel_names=ONE_CHANNEL)
    touch(tmp_path, "notes.txt")
    with pytest.raises(AutoPromptError, match=r"no images found \(only non-image files, e.g. notes.txt\)"):
        find_cases(tmp_path, channel_names=ONE_CHANNEL)
