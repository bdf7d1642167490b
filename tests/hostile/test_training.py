"""A failing ``train`` leaves the model folder as it was (issue #20, items 5, 7 and 8).

No rewritten trainer_config.yaml next to trained folds, no skeleton in an empty results folder, one line
(exit 2) for a results folder that cannot be written, and ``--resume`` never silently drops ``--epochs``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import save_checkpoint
from tests.hostile.conftest import DATASET, Outcome, Setup, assert_one_line_error, tree

MODEL = f"{DATASET}/autoprompt__tiny__2d"
QUICK = ["--epochs", "1", "--iterations-per-epoch", "1", "--set", "val_iterations=1"]
NO_CACHE = ["--set", "cache_embeddings=false", "--set", "final_validation=false"]


def _train(setup: Setup, results: Path, fold: str, *extra: str) -> list[str | Path]:
    return [
        "train", "901", fold, "--config", "tiny", "--preprocessed", setup.preprocessed,
        "--results", results, "--device", "cpu", *extra,
    ]  # fmt: skip


def _trained_results(setup: Setup, tmp_path: Path) -> Path:
    """A copy of the session's results with fold 0 trained (checkpoint_latest and _best)."""
    results = tmp_path / "results"
    shutil.copytree(setup.results, results)
    fold = results / MODEL / "fold_0"
    shutil.copy(fold / "checkpoint_best.pt", fold / "checkpoint_latest.pt")
    return results


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failing_train_next_to_a_trained_fold_changes_nothing(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    results = _trained_results(setup, tmp_path)
    before = _snapshot(results)
    outcome = cli(*_train(setup, results, "7", "--set", "learning_rate=0.5"))
    assert_one_line_error(outcome, "there is no fold 7")
    assert _snapshot(results) == before  # trainer_config.yaml not rewritten with learning_rate 0.5


def test_failing_train_in_an_empty_results_folder_leaves_no_skeleton(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    assert_one_line_error(cli(*_train(setup, results, "7")), "there is no fold 7")
    assert tree(results) == []


@pytest.mark.parametrize(
    "failure",
    [errno.ENOSPC, errno.EROFS, errno.EACCES],
    ids=["full disk", "read-only", "no permission"],
)
def test_unwritable_results_folder_is_one_line_and_leaves_nothing(
    setup: Setup,
    tmp_path: Path,
    cli: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
    failure: int,
) -> None:
    """The first write into the results folder fails (simulated: the tests may run as root)."""
    import pipeline.files

    real_mkstemp = pipeline.files.tempfile.mkstemp
    results = tmp_path / "results"

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - mkstemp's own keyword
        if dir is not None and Path(dir).is_relative_to(results):
            raise OSError(failure, os.strerror(failure), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(pipeline.files.tempfile, "mkstemp", refuse)
    outcome = cli(*_train(setup, results, "0", *QUICK, *NO_CACHE))
    assert_one_line_error(outcome, f"cannot write ({os.strerror(failure)})", "run the same command again")
    assert tree(results) == []


def test_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_nothing(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One real (tiny) epoch, then the checkpoint write finds the disk full."""

    def disk_full(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(handle, "name", str(handle)))

    monkeypatch.setattr(torch, "save", disk_full)
    results = tmp_path / "results"
    outcome = cli(*_train(setup, results, "0", *QUICK, *NO_CACHE))
    assert_one_line_error(outcome, "checkpoint_best.pt: cannot write (No space left on device)")
    assert ".tmp" not in outcome.err  # the file the user knows, not the temporary one
    assert tree(results) == []


def test_results_root_that_is_a_file_is_one_line(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    results = tmp_path / "results"
    results.write_text("a file")
    assert_one_line_error(cli(*_train(setup, results, "0", *QUICK, *NO_CACHE)), "cannot write")
    assert results.read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_folder_is_one_line(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    results = tmp_path / "results"
    results.mkdir(mode=0o555)
    try:
        assert_one_line_error(cli(*_train(setup, results, "0", *QUICK, *NO_CACHE)), "cannot write")
        assert tree(results) == []
    finally:
        results.chmod(0o755)


def test_resume_refuses_a_new_epoch_count(setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]) -> None:
    results = tmp_path / "results"
    fold = results / MODEL / "fold_0"
    save_checkpoint(
        {"model": {}, "metadata": {"trainer_config": {"epochs": 2}}}, fold / "checkpoint_latest.pt"
    )
    before = _snapshot(results)
    outcome = cli(*_train(setup, results, "0", "--resume", "--epochs", "5"))
    assert_one_line_error(
        outcome, "checkpoint_latest.pt: this run was planned for 2 epochs", "--epochs 5 would be ignored"
    )
    assert _snapshot(results) == before
