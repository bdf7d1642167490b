"""nnU-Net's ignore label in training (issue #18): the loss is masked on it, a tiny dataset with an
``ignore`` label plans, trains, validates and predicts, and training_log.txt exists from the start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoprompt.modeling.autoprompt_sam import AutoPromptOutput
from pipeline.files import load_json
from pipeline.trainer_config import LossConfig
from pipeline.training.losses import AutoPromptLoss
from tests.synthetic_data import make_synthetic_dataset

K, SIZE = 2, 16


def _output(logits: torch.Tensor) -> AutoPromptOutput:
    """An output whose coarse masks are the class logits; boxes and presence fixed."""
    n = logits.shape[0]
    return AutoPromptOutput(
        logits=logits,
        class_mask_logits=logits[:, 1:],
        coarse_logits=logits[:, 1:],
        boxes=torch.tensor([[0.1, 0.1, 0.6, 0.6]]).repeat(n, K, 1),
        presence_logits=torch.zeros(n, K),
    )


@pytest.mark.parametrize("coarse_softmax", [False, True])
def test_masked_loss_equals_the_unmasked_one_without_ignore_voxels(coarse_softmax: bool) -> None:
    torch.manual_seed(0)
    loss = AutoPromptLoss(K, LossConfig(coarse_softmax=coarse_softmax))
    target = torch.randint(0, K + 1, (2, SIZE, SIZE))
    logits = torch.randn(2, K + 1, SIZE, SIZE)
    plain = loss(_output(logits), target)
    masked = loss._masked(_output(logits), target, torch.ones_like(target, dtype=torch.bool))
    for name in ("ce_dice", "coarse", "box", "presence", "total"):
        assert masked[name] == pytest.approx(float(plain[name]), rel=1e-4, abs=1e-5), name


def test_ignore_voxels_get_no_gradient_and_change_nothing() -> None:
    torch.manual_seed(1)
    loss = AutoPromptLoss(K, LossConfig())
    target = torch.randint(0, K + 1, (1, SIZE, SIZE))
    target[0, 10:, :] = K + 1  # unannotated rows: the ignore label (nnU-Net: the highest value)
    logits = torch.randn(1, K + 1, SIZE, SIZE, requires_grad=True)
    terms = loss(_output(logits), target)
    terms["ce_dice"].backward()
    assert torch.all(logits.grad[0, :, 10:, :] == 0) and logits.grad[0, :, :10].abs().sum() > 0
    changed = logits.detach().clone()
    changed[0, :, 10:, :] = torch.randn(K + 1, SIZE - 10, SIZE) * 50  # any answer under the ignore label
    again = loss(_output(changed), target)
    for name in ("ce_dice", "coarse", "box", "presence"):
        assert float(again[name]) == pytest.approx(float(terms[name].detach()), rel=1e-5), name


def _add_ignore_label(folder: Path) -> None:
    """Mark the last row of every label map as unannotated (value 3 = "ignore")."""
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        array[:, -4:, :] = 3
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(path))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["labels"]["ignore"] = 3
    (folder / "dataset.json").write_text(json.dumps(dataset_json))


def test_a_dataset_with_an_ignore_label_trains_validates_and_predicts(tmp_path: Path) -> None:
    from autoprompt import api

    raw = make_synthetic_dataset(tmp_path / "raw", num_cases=5, shape=(2, 40, 32), num_classes=2)
    _add_ignore_label(raw)
    api.plan_and_preprocess(raw, tmp_path / "pre", configurations=("2d",), num_processes=1)
    result = api.train(
        raw.name,
        0,
        preprocessed=tmp_path / "pre",
        results=tmp_path / "results",
        config="tiny",
        overrides=["epochs=1", "iterations_per_epoch=2", "val_iterations=1"],
        device="cpu",
        raw=tmp_path / "raw",
    )
    assert np.isfinite(result.history[-1]["train_loss"])
    log = (result.fold_dir / "training_log.txt").read_text().splitlines()
    assert "training fold 0 of Dataset901_Synthetic (2d) starts" in log[0]  # written before the cache
    cache_line = next(i for i, line in enumerate(log) if "embedding cache" in line and "encoded" in line)
    assert cache_line > 0
    assert "ignore" not in log[-1]  # the per-class Dice names the real classes only

    summary = load_json(result.fold_dir / "validation" / "summary.json")
    assert summary["labels"] == {"class1": 1, "class2": 2} and summary["ignore_label"] == 3
    predictions = api.predict(
        result.model_folder, raw / "imagesTr", tmp_path / "preds", folds=[0], device="cpu", progress=False
    )
    assert predictions.exit_code == 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preds" / "case_000.nii.gz")))
    assert set(np.unique(predicted)) <= {0, 1, 2}  # the model has K = 2 classes; 3 is never predicted
