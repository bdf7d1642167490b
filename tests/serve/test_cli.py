"""``autoprompt serve`` on the command line: help, and errors before anything is served."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprompt.cli import main


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model-dir",
        "--dataset",
        "--host",
        "--port",
        "--max-upload-mb",
        "--workers",
        "--data-dir",
    ):
        assert option in text
    assert "--job-ttl-hours" in text and "/openapi.json" in text


def test_missing_model_folder_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["serve", "--model-dir", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "jobs")]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.startswith("autoprompt: error: ") and "nowhere: model folder not found" in error
    assert len(error.splitlines()) == 1


def test_unknown_dataset_and_bad_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "-d", "27", "--results", str(tmp_path)]) == 2
    assert "Dataset027_*" in capsys.readouterr().err
    assert main(["serve", "--model-dir", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers 0 must be positive" in capsys.readouterr().err


def test_untrained_fold_is_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", "--model-dir", str(tiny_model_dir), "-f", "3", "--data-dir", str(tmp_path / "jobs")]
    assert main(args) == 2
    assert "fold(s) 3 have no checkpoint_best.pt (trained: 0)" in capsys.readouterr().err
