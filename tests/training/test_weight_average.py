"""Weight averaging: the average is what is saved as the model, and a killed run resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.checkpoint import load_checkpoint
from pipeline.training.run import train
from pipeline.training.weight_average import WeightAverage
from tests.training.conftest import DATASET, TINY, PlannedDataset
from tests.training.helpers import assert_same_run, kill_after_first_epoch_and_resume

AVERAGED = [*TINY, "weight_average_decay=0.5"]


def test_the_average_equals_torchs_ema_of_every_weight_and_buffer() -> None:
    """Averaging only the trainable weights and copying only the buffers of modules in training mode gives
    torch's ``AveragedModel`` EMA of every weight and buffer (a frozen layer and an eval-mode norm included)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)
    )
    model[2].requires_grad_(False)
    ours = WeightAverage(model, 0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(4):
        model.train()
        model[3].eval()  # a frozen norm: its running statistics stay
        optimizer.zero_grad()
        model(torch.randn(16, 4)).square().sum().backward()
        optimizer.step()
        ours.update()
        reference.update_parameters(model)
    assert ours.updates == 4
    expected = reference.module.state_dict()
    for name, value in ours.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert not torch.equal(ours.model[0].weight, model[0].weight)  # an average, not a copy
    assert torch.equal(ours.model[1].running_mean, model[1].running_mean)


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
