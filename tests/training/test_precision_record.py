"""``auto`` precision in training: resolved into the embedding cache key and the checkpoint, and used by
prediction unless ``precision`` overrides it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoprompt.devices import Precision
from pipeline.checkpoint import load_checkpoint
from pipeline.files import load_json
from pipeline.inference.predictor import Predictor
from pipeline.model_folder import ModelFolder
from pipeline.training.run import train
from tests.runtime.test_precision import fake_cpu
from tests.training.conftest import DATASET, TINY, PlannedDataset


def test_auto_precision_lands_in_cache_key_and_checkpoint_and_prediction_uses_it(
    planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(
        config="tiny", overrides=[*TINY, "val_iterations=1"], epochs=1, iterations_per_epoch=1, device="cpu"
    )
    preprocessed = tmp_path / "preprocessed"  # a copy: the shared fixture keeps its one cache key
    shutil.copytree(planned.folder, preprocessed / DATASET)
    cache_keys = {}
    for bf16 in (True, False):
        fake_cpu(monkeypatch, bf16=bf16)
        result = train(DATASET, 0, preprocessed=preprocessed, results=tmp_path / str(bf16), **options)
        metadata = load_checkpoint(result.fold_dir / "checkpoint_final.pt")["metadata"]
        expected = "bf16" if bf16 else "fp32"
        assert metadata["trainer_config"]["encoder_precision"] == "auto"
        assert (metadata["encoder_precision"], metadata["amp_precision"]) == (expected, expected)
        cache_keys[expected] = {
            key.name
            for key in (preprocessed / DATASET / "embeddings").iterdir()
            if load_json(key / "cache.json")["precision"] == expected
        }
    assert cache_keys["bf16"] and cache_keys["fp32"] and not cache_keys["bf16"] & cache_keys["fp32"]

    model = tmp_path / "True" / DATASET / "autoprompt__tiny__2d"  # trained on bf16 embeddings
    assert ModelFolder(model).trained_precision(0, "final") is Precision.BF16
    fake_cpu(monkeypatch, bf16=True)
    predictor = Predictor.from_model_folder(model, checkpoint="final", device="cpu")
    assert predictor.precision is Precision.BF16
    assert not [note for note in predictor.notes if "precision" in note]
    overridden = Predictor.from_model_folder(model, checkpoint="final", device="cpu", precision="fp32")
    assert overridden.precision is Precision.FP32
    fake_cpu(monkeypatch, bf16=False)  # a CPU without bf16 instructions: its native fp32, with a note
    predictor = Predictor.from_model_folder(model, checkpoint="final", device="cpu")
    assert predictor.precision is Precision.FP32
    assert (
        "note: predicting in fp32, the native precision of cpu; the folds were trained in bf16 "
        "(--precision chooses another)"
    ) in predictor.notes
    fp32_model = tmp_path / "False" / DATASET / "autoprompt__tiny__2d"
    fake_cpu(monkeypatch, bf16=True)  # trained on fp32 embeddings: predicts in fp32 on a bf16 CPU too
    assert (
        Predictor.from_model_folder(fp32_model, checkpoint="final", device="cpu").precision is Precision.FP32
    )
