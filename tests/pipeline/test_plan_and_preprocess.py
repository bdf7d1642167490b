"""``autoprompt plan-and-preprocess`` end to end on synthetic datasets: outputs, resume, edits, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprompt import api, cli
from pipeline.dataset import ACDC_GROUP_REGEX
from tests.synthetic_data import make_synthetic_dataset

CASES = [f"case_{i:03d}" for i in range(6)]


def run_cli(tmp_path: Path, *extra: str) -> int:
    return cli.main(
        [
            "plan-and-preprocess",
            "-d",
            "901",
            "--raw",
            str(tmp_path / "raw"),
            "--preprocessed",
            str(tmp_path / "pre"),
            *extra,
        ]
    )


def test_end_to_end_resume_and_plan_edit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_synthetic_dataset(tmp_path / "raw")
    assert run_cli(tmp_path, "-np", "2") == 0
    summary = capsys.readouterr().out
    assert "2d: slice axis 0 (Z)" in summary and "stack 5" in summary

    out = tmp_path / "pre" / "Dataset901_Synthetic"
    for name in ("dataset.json", "fingerprint.json", "plans.json", "splits_final.json"):
        assert (out / name).is_file()
    assert len(json.loads((out / "splits_final.json").read_text())) == 5
    data_folder = (
        out / json.loads((out / "plans.json").read_text())["configurations"]["2d"]["data_identifier"]
    )
    expected = {f"{c}{suffix}" for c in CASES for suffix in (".npy", "_seg.npy", ".json")}
    assert {p.name for p in data_folder.iterdir()} == expected  # no temporary files left
    data, seg = np.load(data_folder / "case_000.npy"), np.load(data_folder / "case_000_seg.npy")
    properties = json.loads((data_folder / "case_000.json").read_text())
    assert data.dtype == np.float32 and seg.dtype == np.int16
    assert data.shape == (1, *seg.shape) and list(seg.shape) == properties["shape_after_resampling"]

    # a second run skips every finished case
    times = {p.name: p.stat().st_mtime_ns for p in data_folder.iterdir()}
    assert run_cli(tmp_path, "-np", "1") == 0
    assert {p.name: p.stat().st_mtime_ns for p in data_folder.iterdir()} == times

    # an edit to plans.json is kept and preprocesses the cases again (here: no resampling, 8 x 48 x 40)
    plans = json.loads((out / "plans.json").read_text())
    for configuration in plans["configurations"].values():
        configuration["target_spacing"] = [3.0, 0.8, 0.8]
    (out / "plans.json").write_text(json.dumps(plans))
    assert run_cli(tmp_path, "-np", "1", "-c", "2d") == 0
    assert np.load(data_folder / "case_000.npy").shape == (1, 8, 48, 40)
    assert json.loads((out / "plans.json").read_text())["configurations"]["2d"]["target_spacing"] == [
        3.0,
        0.8,
        0.8,
    ]
    assert all(p.stat().st_mtime_ns > times[p.name] for p in data_folder.iterdir())

    # --overwrite-plans plans from scratch again
    assert run_cli(tmp_path, "-np", "1", "--overwrite-plans") == 0
    assert json.loads((out / "plans.json").read_text())["configurations"]["2d"]["target_spacing"] != [
        3.0,
        0.8,
        0.8,
    ]
    assert np.load(data_folder / "case_000.npy").shape == data.shape


def test_a_dataset_with_problems_exits_nonzero_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = make_synthetic_dataset(tmp_path / "raw")
    (folder / "labelsTr" / "case_002.nii.gz").unlink()
    (folder / "imagesTr" / "case_004_0000.nii.gz").write_bytes(b"not an image")
    assert run_cli(tmp_path) == 2
    err = capsys.readouterr().err
    assert "case_002.nii.gz: missing label" in err
    assert "case_004_0000.nii.gz" in err
    assert "autoprompt: error: 2 problems in dataset" in err and "Traceback" not in err
    assert not (tmp_path / "pre").exists()

    assert run_cli(tmp_path, "--verify-only") == 2
    assert not (tmp_path / "pre").exists()


def test_verify_only_and_a_bad_group_regex_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_synthetic_dataset(tmp_path / "raw")
    assert run_cli(tmp_path, "--verify-only") == 0
    assert "6 cases, no problems found" in capsys.readouterr().out
    assert run_cli(tmp_path, "--group-regex", ACDC_GROUP_REGEX) == 2
    assert "case_000: does not match the group regex" in capsys.readouterr().err
    assert not (tmp_path / "pre").exists()


def test_api_groups_folds_by_patient(tmp_path: Path) -> None:
    folder = make_synthetic_dataset(tmp_path / "raw", num_cases=10, shape=(4, 24, 20))
    for index in range(10):
        new = f"patient{index // 2:03d}_frame{index % 2 + 1:02d}"
        (folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz").rename(
            folder / "imagesTr" / f"{new}_0000.nii.gz"
        )
        (folder / "labelsTr" / f"case_{index:03d}.nii.gz").rename(folder / "labelsTr" / f"{new}.nii.gz")
    out = api.plan_and_preprocess(
        folder, tmp_path / "pre", configurations=("2d",), num_processes=1, group_regex=ACDC_GROUP_REGEX
    )
    assert out == tmp_path / "pre" / folder.name
    for fold in json.loads((out / "splits_final.json").read_text()):
        patients = {case.split("_")[0] for case in fold["val"]}
        assert sorted(fold["val"]) == sorted(f"{p}_frame{f:02d}" for p in patients for f in (1, 2))
    identifier = json.loads((out / "plans.json").read_text())["configurations"]["2d"]["data_identifier"]
    assert len(list((out / identifier).glob("*_seg.npy"))) == 10


def test_help_explains_the_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan-and-preprocess", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for snippet in ("--group-regex", "patient", "--overwrite-plans", "--verify-only", "-np", "plans.json"):
        assert snippet in text


def test_a_sam_vit_backbone_gets_its_own_1024_plans_and_other_backbones_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_synthetic_dataset(tmp_path / "raw", num_cases=4, shape=(4, 24, 20))
    assert run_cli(tmp_path, "-c", "2d", "-np", "1", "--folds", "2", "--backbone", "sam_vit_b") == 0
    assert "1024x1024 windows" in capsys.readouterr().out
    out = tmp_path / "pre" / "Dataset901_Synthetic"
    plan = json.loads((out / "plans.json").read_text())["configurations"]["2d"]
    assert plan["window_size"] == [1024, 1024]
    assert len(list((out / plan["data_identifier"]).glob("*_seg.npy"))) == 4
    # only the 1024-window cases: LiteMedSAM's (256 or smaller windows) are not made or touched
    assert [p.name for p in out.iterdir() if p.name.startswith("autoprompt_slices")] == [
        plan["data_identifier"]
    ]

    # planning again for LiteMedSAM without --overwrite-plans, and training a LiteMedSAM-family model
    # (the tiny preset) on the 1024 plans: one line each, before any training work
    assert run_cli(tmp_path, "-c", "2d") == 2
    err = capsys.readouterr().err
    assert "plans.json: planned for 1024 x 1024 windows, but backbone litemedsam takes 256 x 256" in err
    assert "--overwrite-plans" in err and "Traceback" not in err
    train = ["train", "901", "0", "-c", "2d", "--config", "tiny", "--device", "cpu"]
    roots = ["--preprocessed", str(tmp_path / "pre"), "--results", str(tmp_path / "results")]
    assert cli.main([*train, *roots]) == 2
    err = capsys.readouterr().err
    assert "configuration '2d' has 1024 x 1024 windows, which backbone tiny does not take" in err
    assert "--backbone tiny --overwrite-plans" in err and "Traceback" not in err
    assert not list((tmp_path / "results").rglob("checkpoint_*.pt"))
