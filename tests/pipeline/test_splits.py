"""pipeline.dataset folds: nnU-Net's seeded KFold, grouped folds for ACDC patients, splits_final.json kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nnunetv2.utilities.crossval_split import generate_crossval_split

from autoprompt.errors import AutoPromptError
from pipeline.dataset import ACDC_GROUP_REGEX, load_or_create_splits, load_raw_dataset, make_splits

CASES = [f"case_{i:03d}" for i in range(23)]


def _assert_partition(splits: list[dict[str, list[str]]], case_ids: list[str]) -> None:
    """Every case is in exactly one val set, and train is the rest."""
    vals = [c for fold in splits for c in fold["val"]]
    assert sorted(vals) == sorted(case_ids)
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(case_ids)


def test_ungrouped_folds_are_nnunets_and_cover_every_case_once() -> None:
    splits = make_splits(list(reversed(CASES)), num_folds=5, seed=7)
    assert len(splits) == 5
    _assert_partition(splits, CASES)
    expected = generate_crossval_split(CASES, seed=7, n_splits=5)  # nnU-Net on the sorted ids
    assert [sorted(f["val"]) for f in expected] == [f["val"] for f in splits]
    assert all(type(c) is str for fold in splits for c in fold["train"])  # JSON-able, not numpy strings


def test_same_seed_same_folds_other_seed_other_folds() -> None:
    assert make_splits(CASES, seed=3) == make_splits(list(reversed(CASES)), seed=3)
    assert make_splits(CASES, seed=3) != make_splits(CASES, seed=4)


def test_grouped_folds_keep_groups_together() -> None:
    case_ids = [f"p{p:02d}_scan{s}" for p in range(12) for s in range(p % 3 + 1)]
    splits = make_splits(case_ids, num_folds=4, seed=1, group_regex=r"^(p\d+)_scan\d$")
    _assert_partition(splits, case_ids)
    for fold in splits:
        assert {c.split("_")[0] for c in fold["val"]}.isdisjoint({c.split("_")[0] for c in fold["train"]})


def test_group_regex_that_misses_a_case_names_it() -> None:
    with pytest.raises(AutoPromptError, match="case case_003: does not match the group regex"):
        make_splits(["patient001_frame01", "case_003"], num_folds=2, group_regex=ACDC_GROUP_REGEX)


def test_fewer_cases_than_folds_leave_one_case_out() -> None:
    splits = make_splits(CASES[:3])  # never refused: one fold per case (more in test_small_datasets.py)
    assert len(splits) == 3 and all(len(fold["val"]) == 1 for fold in splits)
    _assert_partition(splits, CASES[:3])
    with pytest.raises(AutoPromptError, match="cross-validation needs at least 2"):
        make_splits(CASES, num_folds=1)


@pytest.mark.slow
def test_acdc_grouped_folds_keep_both_frames_of_every_patient_together(shared_data: Path) -> None:
    case_ids = list(load_raw_dataset(shared_data / "Dataset027_ACDC").cases)
    splits = make_splits(case_ids, group_regex=ACDC_GROUP_REGEX)
    _assert_partition(splits, case_ids)
    for fold in splits:
        val_patients = {c.split("_")[0] for c in fold["val"]}
        assert val_patients.isdisjoint(c.split("_")[0] for c in fold["train"])
        assert len(fold["val"]) == 2 * len(val_patients)  # both frames of each val patient
    ungrouped = make_splits(case_ids)
    assert any(
        {c.split("_")[0] for c in fold["val"]} & {c.split("_")[0] for c in fold["train"]}
        for fold in ungrouped
    ), "plain KFold separates some frames of a patient; the grouping is what keeps them together"


def test_splits_are_written_once_and_an_existing_file_is_kept(tmp_path: Path) -> None:
    created = load_or_create_splits(tmp_path, CASES, num_folds=3, seed=5)
    path = tmp_path / "splits_final.json"
    assert json.loads(path.read_text()) == created
    edited = [{"train": CASES[1:], "val": CASES[:1]}]  # a user's own single split
    path.write_text(json.dumps(edited))
    assert load_or_create_splits(tmp_path, CASES, num_folds=5, seed=99) == edited
    assert json.loads(path.read_text()) == edited
    assert [p.name for p in tmp_path.iterdir()] == ["splits_final.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            [{"train": ["case_000", "ghost"], "val": ["case_001"]}],
            "names cases that are not in the dataset: [ghost]",
        ),
        ({"train": [], "val": []}, "must be a list of"),
        ([{"train": ["case_000"]}], "must be a list of"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_existing_splits_name_the_file(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "splits_final.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(AutoPromptError) as error:
        load_or_create_splits(tmp_path, CASES)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "delete it to have the folds made again" in str(error.value)
