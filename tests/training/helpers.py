"""What the 2d and 3d training tests share: a run killed after its first epoch and resumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoprompt.errors import AutoPromptError
from pipeline.checkpoint import load_checkpoint
from pipeline.training.run import train
from pipeline.training.trainer import Trainer, TrainingResult
from tests.training.conftest import DATASET


class Killed(Exception):
    """Stands for the process being killed right after an epoch's checkpoint was written."""


def kill_after_first_epoch_and_resume(
    monkeypatch: pytest.MonkeyPatch, fold_dir: Path, **options: object
) -> TrainingResult:
    """Train fold 0 with ``options`` (``train``'s keywords), killed right after epoch 1 wrote its
    checkpoints; check what the kill left in ``fold_dir`` and that a restart needs ``--resume``; resume."""
    original = Trainer.on_epoch_end

    def kill_after_first_epoch(self: Trainer, epoch: int, record: dict) -> None:
        original(self, epoch, record)
        if epoch == 0:
            raise Killed

    monkeypatch.setattr(Trainer, "on_epoch_end", kill_after_first_epoch)
    with pytest.raises(Killed):
        train(DATASET, 0, **options)
    monkeypatch.setattr(Trainer, "on_epoch_end", original)
    assert load_checkpoint(fold_dir / "checkpoint_latest.pt")["epoch"] == 1
    assert not (fold_dir / "checkpoint_final.pt").exists()
    with pytest.raises(AutoPromptError, match="pass --resume"):
        train(DATASET, 0, **options)
    return train(DATASET, 0, resume=True, **options)


def assert_same_run(resumed: TrainingResult, uninterrupted: TrainingResult) -> None:
    """The resumed run took the same steps, losses and final weights as the uninterrupted one."""
    assert resumed.steps == uninterrupted.steps
    assert len(resumed.history) == len(uninterrupted.history)
    final_whole = load_checkpoint(uninterrupted.fold_dir / "checkpoint_final.pt")["model"]
    final_resumed = load_checkpoint(resumed.fold_dir / "checkpoint_final.pt")["model"]
    assert final_whole.keys() == final_resumed.keys()
    for key in final_whole:
        torch.testing.assert_close(final_resumed[key], final_whole[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        [r["train_loss"] for r in resumed.history],
        [r["train_loss"] for r in uninterrupted.history],
        rtol=1e-5,
    )
