"""A smaller learning rate for the backbone's own weights: two parameter groups that resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.checkpoint import load_checkpoint
from pipeline.training.run import train
from tests.training.conftest import DATASET, TINY, PlannedDataset
from tests.training.helpers import assert_same_run, kill_after_first_epoch_and_resume

SCALED = [*TINY, "model.train_decoder=true", "pretrained_learning_rate_scale=0.1"]


def test_the_decoder_trains_at_the_scaled_rate_and_resumes_exactly(
    planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(preprocessed=planned.preprocessed, config="tiny", overrides=SCALED, device="cpu")
    whole = train(DATASET, 0, results=tmp_path / "whole", **options)
    final = load_checkpoint(whole.fold_dir / "checkpoint_final.pt")
    new, pretrained = final["optimizer"]["param_groups"]
    assert pretrained["initial_lr"] == pytest.approx(0.1 * new["initial_lr"])
    assert pretrained["params"] and new["params"]  # the mask decoder; the head and the adapters

    fold_dir = tmp_path / "resumed" / DATASET / "autoprompt__tiny__2d" / "fold_0"
    resumed = kill_after_first_epoch_and_resume(
        monkeypatch, fold_dir, results=tmp_path / "resumed", **options
    )
    assert_same_run(resumed, whole)
