"""Weight averaging: the average is what is saved as the model, and a killed run resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.training.run import train
from tests.training.conftest import DATASET, TINY, PlannedDataset
from tests.training.helpers import assert_same_run, kill_after_first_epoch_and_resume

AVERAGED = [*TINY, "weight_average_decay=0.5"]


def test_the_average_is_the_saved_model_and_resumes_exactly(
    planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(preprocessed=planned.preprocessed, config="tiny", overrides=AVERAGED, device="cpu")
    whole = train(DATASET, 0, results=tmp_path / "whole", **options)
    final = load_checkpoint(whole.fold_dir / "checkpoint_final.pt")
    assert final["weight_average"]["updates"] == whole.steps == 6
    trained = final["weight_average"]["trained_model"]
    assert trained.keys() == final["model"].keys()
    assert any(not torch.equal(final["model"][key], trained[key]) for key in trained)

    fold_dir = tmp_path / "resumed" / DATASET / "autoprompt__tiny__2d" / "fold_0"
    resumed = kill_after_first_epoch_and_resume(
        monkeypatch, fold_dir, results=tmp_path / "resumed", **options
    )
    assert_same_run(resumed, whole)
    resumed_trained = load_checkpoint(fold_dir / "checkpoint_final.pt")["weight_average"]["trained_model"]
    for key in trained:
        torch.testing.assert_close(resumed_trained[key], trained[key], rtol=1e-5, atol=1e-6)
