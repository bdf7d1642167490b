"""Datasets of 1 to 4 patients (case groups) plan, train and predict with the README's commands.

Fewer groups than folds give one fold per group (leave-one-group-out, with a note), a single group gives no
folds and only fold ``all``; ``--folds N`` sets the number. Every end-to-end test runs the README's ACDC
commands (``-d 27``) on a synthetic copy with the ``tiny`` preset, shortened to one epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoprompt import cli
from pipeline.dataset import (
    ACDC_GROUP_REGEX,
    fold_indices,
    group_cases,
    make_splits,
    read_splits,
    splits_note,
)
from pipeline.io import read_image
from tests.synthetic_data import make_synthetic_dataset

DATASET = "Dataset027_ACDC"
SHAPE = (2, 40, 32)  # (Z, Y, X): two slices of one 256 x 256 window each, as in tests/training
SHORT = ["--epochs", "1", "--iterations-per-epoch", "2", "--set", "val_iterations=1"]


def case_ids(groups: int, grouped: bool) -> list[str]:
    """ACDC-style ids: ``groups`` patients of two frames each, or ``groups`` plain cases."""
    if grouped:
        return [f"patient{p:03d}_frame{f:02d}" for p in range(1, groups + 1) for f in (1, 12)]
    return [f"case_{i:03d}" for i in range(groups)]


def make_dataset(root: Path, groups: int, *, grouped: bool) -> Path:
    """A synthetic ``Dataset027_ACDC`` under ``root/raw`` with the cases of :func:`case_ids` and one image in
    ``imagesTs``."""
    ids = case_ids(groups, grouped)
    folder = make_synthetic_dataset(root / "raw", dataset_name=DATASET, num_cases=len(ids), shape=SHAPE)
    for index, case in enumerate(ids):
        old = f"case_{index:03d}"
        (folder / "imagesTr" / f"{old}_0000.nii.gz").rename(folder / "imagesTr" / f"{case}_0000.nii.gz")
        (folder / "labelsTr" / f"{old}.nii.gz").rename(folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "imagesTs").mkdir()
    shutil.copy(folder / "imagesTr" / f"{ids[0]}_0000.nii.gz", folder / "imagesTs" / "test_0000.nii.gz")
    return folder


def roots(root: Path, *names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(root / name))]


def plan(root: Path, *extra: str) -> int:
    """The README's ACDC planning command (2d only, one process)."""
    command = ["plan-and-preprocess", "-d", "27", "-c", "2d", "-np", "1"]
    return cli.main([*command, *extra, *roots(root, "raw", "preprocessed")])


def train(root: Path, fold: str, *extra: str) -> int:
    """``autoprompt train 27 FOLD -c 2d`` with the tiny preset, one short epoch."""
    return cli.main(
        ["train", "27", fold, "-c", "2d", "--config", "tiny", "--device", "cpu", *SHORT, *extra]
        + roots(root, "raw", "preprocessed", "results")
    )


def predict(root: Path, output: str, *folds: str) -> int:
    """``autoprompt predict -i imagesTs -o OUTPUT -d 27 -c 2d`` for the tiny model (``-f`` when given),
    without mirroring TTA (4x the work, and the same for every dataset size)."""
    fold_args = ["-f", *folds] if folds else []
    images = root / "raw" / DATASET / "imagesTs"
    return cli.main(
        ["predict", "-i", str(images), "-o", str(root / output), "-d", "27", "-c", "2d", "--preset", "tiny"]
        + [*fold_args, "--no-tta", "--device", "cpu", *roots(root, "results")]
    )


# ------------------------------------------------------------------------------------------- fold rule
@pytest.mark.parametrize("grouped", [False, True], ids=["cases", "patients"])
@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_fewer_groups_than_folds_make_one_fold_per_group(groups: int, grouped: bool) -> None:
    ids = case_ids(groups, grouped)
    regex = ACDC_GROUP_REGEX if grouped else None
    splits = make_splits(ids, group_regex=regex)
    assert len(group_cases(ids, regex)) == groups
    note = splits_note(groups, grouped=grouped)
    unit = "group" if grouped else "case"
    if groups == 1:  # a single group: no folds, only fold all, which trains every case
        assert splits == [{"train": sorted(ids), "val": []}]
        assert fold_indices(splits) == []
        assert note == (
            f"note: a single {unit} cannot be cross-validated: splits_final.json holds no folds; "
            "train fold all (every case)"
        )
        return
    assert fold_indices(splits) == list(range(groups))  # leave-one-group-out
    assert sorted(c for fold in splits for c in fold["val"]) == sorted(ids)
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)
        assert len({c.split("_frame")[0] for c in fold["val"]}) == 1  # one patient (with both frames)
    assert note == f"note: {groups} {unit}s are fewer than 5 folds: made {groups} folds, leave-one-{unit}-out"


def test_num_folds_sets_the_number_and_is_capped_by_the_groups() -> None:
    ids = case_ids(4, True)
    assert len(make_splits(ids, num_folds=3, group_regex=ACDC_GROUP_REGEX)) == 3
    assert splits_note(4, 3, grouped=True) is None
    assert len(make_splits(ids, num_folds=2, group_regex=ACDC_GROUP_REGEX)) == 2
    assert len(make_splits(ids, num_folds=9, group_regex=ACDC_GROUP_REGEX)) == 4
    assert len(make_splits(case_ids(12, False), num_folds=10)) == 10


def test_the_single_group_file_is_read_and_names_no_fold(tmp_path: Path) -> None:
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(make_splits(case_ids(1, True), group_regex=ACDC_GROUP_REGEX)))
    splits = read_splits(path, "fix it")
    assert fold_indices(splits) == [] and splits[0]["train"] == ["patient001_frame01", "patient001_frame12"]


def test_folds_option_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_dataset(tmp_path, 4, grouped=False)
    assert plan(tmp_path, "--folds", "1") == 2
    error = capsys.readouterr().err
    assert "autoprompt: error: 1 folds asked for: cross-validation needs at least 2; pass --folds 2" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "preprocessed").exists()

    assert plan(tmp_path, "--folds", "3") == 0
    captured = capsys.readouterr()
    assert "note:" not in captured.err
    assert "  folds: 0-2 (splits_final.json) and all (every case)" in captured.out
    splits_file = tmp_path / "preprocessed" / DATASET / "splits_final.json"
    assert len(json.loads(splits_file.read_text())) == 3

    assert plan(tmp_path, "--folds", "2") == 0  # an existing file is kept, and the note says how to remake it
    captured = capsys.readouterr()
    assert (
        f"note: the existing {DATASET}/splits_final.json is kept with 3 folds; delete it and re-run to make 2"
        in (captured.err)
    )
    assert len(json.loads(splits_file.read_text())) == 3


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize(
    ("groups", "grouped"),
    [(1, False), (1, True), (2, False), (3, True), (4, False)],
    ids=["1-case", "1-patient", "2-cases", "3-patients", "4-cases"],
)
def test_small_dataset_plans_trains_and_predicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], groups: int, grouped: bool
) -> None:
    make_dataset(tmp_path, groups, grouped=grouped)
    assert plan(tmp_path, *(["--group-regex", ACDC_GROUP_REGEX] if grouped else [])) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert notes == [splits_note(groups, grouped=grouped)]  # one line
    splits = json.loads((tmp_path / "preprocessed" / DATASET / "splits_final.json").read_text())
    model = tmp_path / "results" / DATASET / "autoprompt__tiny__2d"

    if groups == 1:
        assert "  folds: none in splits_final.json" in captured.out
        assert "next: autoprompt train 27 all -c 2d" in captured.out
        assert train(tmp_path, "0") == 2
        error = capsys.readouterr().err
        assert "splits_final.json: has no cross-validation folds" in error
        assert f"there is no fold 0; train fold all: 'autoprompt train {DATASET} all'" in error
    else:
        assert f"  folds: 0-{groups - 1} (splits_final.json) and all (every case)" in captured.out
        assert "next: autoprompt train 27 0 -c 2d" in captured.out
        assert train(tmp_path, str(groups)) == 2
        assert (
            f"has folds 0-{groups - 1}, there is no fold {groups}; choose 0-{groups - 1} or all"
            in capsys.readouterr().err
        )
        assert train(tmp_path, "0") == 0  # the final validation runs on the fold's held-out cases
        summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
        assert sorted(case["case"] for case in summary["metric_per_case"]) == splits[0]["val"]
        assert "steps" in json.loads((model / "fold_0" / "postprocessing.json").read_text())

    assert train(tmp_path, "all") == 0
    log = (model / "fold_all" / "training_log.txt").read_text()
    assert f"{len(case_ids(groups, grouped))} training / {len(case_ids(groups, grouped))} validation" in log
    assert (
        "fold 'all' has no held-out cases: final validation skipped; postprocessing decided from the" in log
    )
    rules = json.loads((model / "fold_all" / "postprocessing.json").read_text())
    assert rules["decided_from"].startswith("training labels") and rules["num_cases"] == len(
        case_ids(groups, grouped)
    )
    capsys.readouterr()

    assert predict(tmp_path, "preds_all", "all") == 0
    captured = capsys.readouterr()
    assert "no postprocessing applied" not in captured.err
    assert "1 done, 0 skipped, 0 failed" in captured.out
    labels, _ = read_image(tmp_path / "preds_all" / "test.nii.gz")
    assert labels.shape == SHAPE
    assert predict(tmp_path, "preds") == 0  # every trained fold (0 and all, or all alone)
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert (tmp_path / "preds" / "test.nii.gz").is_file()
