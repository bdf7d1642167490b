"""End-to-end training on a tiny synthetic dataset with the tiny backbone (real files, real cache)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from autoprompt import cli
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.files import load_json, save_json
from pipeline.inference.predictor import Predictor
from pipeline.model_folder import ModelFolder
from pipeline.training.run import train
from pipeline.training.trainer import TrainingResult
from tests.training.conftest import DATASET, SHAPE, TINY, PlannedDataset
from tests.training.helpers import assert_same_run, kill_after_first_epoch_and_resume

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(planned: PlannedDataset, tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """One full run of the tiny preset (2 epochs x 3 steps), final validation through the Predictor."""
    results = tmp_path_factory.mktemp("results")
    return train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=results,
        config="tiny",
        device="cpu",
        raw=planned.raw,
    )


def test_training_writes_a_complete_model_folder(trained: TrainingResult, planned: PlannedDataset) -> None:
    fold_dir = trained.fold_dir
    assert trained.model_folder.name == "autoprompt__tiny__2d"
    assert trained.epochs == 2 and trained.steps == 6
    history = trained.history
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert set(history[0]["train_terms"]) == {"ce_dice", "coarse", "box", "presence"}

    for name in ("best", "final", "latest"):
        state = load_checkpoint(fold_dir / f"checkpoint_{name}.pt")
        assert state["metadata"]["backbone"] == "tiny"
        assert state["metadata"]["mirror_augmented"] is True  # view 1 of the cached views is the mirror image
        assert state["metadata"]["views"]["count"] == 3  # configs/tiny.yaml
        assert not any(key.startswith("backbone.image_encoder.") for key in state["model"])  # trainable only
    assert load_checkpoint(fold_dir / "checkpoint_final.pt")["epoch"] == 2

    png = (fold_dir / "progress.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from PIL import Image

    with Image.open(fold_dir / "progress.png") as image:
        image.verify()
    log = (fold_dir / "training_log.txt").read_text()
    assert "epoch 2/2" in log and "pseudo-Dice class1" in log and "final validation" in log

    split = load_json(planned.folder / "splits_final.json")[0]
    summary = load_json(fold_dir / "validation" / "summary.json")
    assert sorted(case["case"] for case in summary["metric_per_case"]) == sorted(split["val"])
    assert set(summary["mean"]) == {"1", "2"}
    assert summary["reference_source"] == "raw labelsTr"
    for case in split["val"]:
        assert (fold_dir / "validation" / f"{case}.nii.gz").is_file()
    assert "steps" in load_json(fold_dir / "postprocessing.json")


def test_model_folder_loads_the_trained_weights(trained: TrainingResult, tmp_path: Path) -> None:
    folder = ModelFolder(trained.model_folder)
    assert folder.trained_folds() == [0] and folder.configuration == "2d"
    model = folder.load_model(0, checkpoint="final", device="cpu")
    assert isinstance(model, AutoPromptSAM)
    saved = load_checkpoint(trained.fold_dir / "checkpoint_final.pt")["model"]
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, saved[key])

    state = load_checkpoint(trained.fold_dir / "checkpoint_final.pt")
    state["metadata"]["backbone_checksum"] = "0" * 64
    copy = tmp_path / "copy"
    shutil.copytree(trained.model_folder, copy)
    save_checkpoint(
        {k: v for k, v in state.items() if k != "format"}, copy / "fold_0" / "checkpoint_final.pt"
    )
    with pytest.raises(AutoPromptError, match="incompatible model"):
        ModelFolder(copy).load_model(0, checkpoint="final", device="cpu")
    with pytest.raises(AutoPromptError, match="fold_3/checkpoint_best.pt: checkpoint not found"):
        ModelFolder(copy).load_model(3, device="cpu")
    with pytest.raises(AutoPromptError, match="trainer_config.yaml is missing"):
        (copy / "trainer_config.yaml").unlink()
        ModelFolder(copy)


def test_kill_and_resume_equals_an_uninterrupted_run(
    trained: TrainingResult, planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trained`` is the uninterrupted run; the same run killed after epoch 1 and resumed must match it."""
    resumed = kill_after_first_epoch_and_resume(
        monkeypatch,
        tmp_path / DATASET / "autoprompt__tiny__2d" / "fold_0",
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="tiny",
        overrides=TINY,
        device="cpu",
    )
    assert resumed.steps == 6 and len(resumed.history) == 2
    assert_same_run(resumed, trained)


def test_batches_made_by_background_workers_train_the_same_run(
    trained: TrainingResult, planned: PlannedDataset, tmp_path: Path
) -> None:
    """Two batch-making processes give the same batches, losses and weights as batches made inline."""
    with_workers = train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="tiny",
        overrides=[*TINY, "num_workers=2"],
        device="cpu",
        raw=planned.raw,
    )
    assert_same_run(with_workers, trained)


def count_encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of the backbone's image encoder (``SamBackbone.encode``, used by every encoding path)."""
    from autoprompt.modeling.backbone import SamBackbone

    calls = [0]
    original = SamBackbone.encode

    def counting(self: SamBackbone, images: torch.Tensor, **options: object) -> torch.Tensor:
        calls[0] += 1
        return original(self, images, **options)

    monkeypatch.setattr(SamBackbone, "encode", counting)
    return calls


def test_embedding_cache_is_reused_and_rebuilt_when_plans_change(
    trained: TrainingResult, planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(
        config="tiny", overrides=[*TINY, "val_iterations=1"], epochs=1, iterations_per_epoch=1, device="cpu"
    )
    keys_before = sorted(p.name for p in (planned.folder / "embeddings").iterdir())
    assert len(keys_before) == 1
    calls = count_encoder_calls(monkeypatch)
    train(DATASET, 0, preprocessed=planned.preprocessed, results=tmp_path / "again", **options)
    assert calls[0] == 0  # every embedding came from the cache

    copy = tmp_path / "preprocessed"
    shutil.copytree(planned.folder, copy / DATASET)
    plans = load_json(copy / DATASET / "plans.json")
    plans["normalization"][0]["upper"] = 99.0  # a preprocessing change: the old embeddings no longer apply
    save_json(plans, copy / DATASET / "plans.json")
    train(DATASET, 0, preprocessed=copy, results=tmp_path / "edited", **options)
    assert calls[0] > 0
    keys_after = sorted(p.name for p in (copy / DATASET / "embeddings").iterdir())
    assert len(keys_after) == 2 and keys_before[0] in keys_after
    new_key = next(k for k in keys_after if k != keys_before[0])
    assert (
        load_json(copy / DATASET / "embeddings" / new_key / "cache.json")["normalization"][0]["upper"] == 99.0
    )


def test_cli_errors_and_time_budget(
    trained: TrainingResult, planned: PlannedDataset, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = [
        "train",
        DATASET,
        "0",
        "--config",
        "tiny",
        "--preprocessed",
        str(planned.preprocessed),
        "--results",
        str(tmp_path),
        "--device",
        "cpu",
        "--set",
        "final_validation=false",
    ]
    assert cli.main([*base, "--set", "epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert cli.main(["train", DATASET, "7", *base[3:]]) == 2
    assert "there is no fold 7" in capsys.readouterr().err
    assert cli.main(["train", "902", "0", *base[3:]]) == 2
    assert "no folder Dataset902_*" in capsys.readouterr().err

    assert cli.main([*base, "--epochs", "50", "--iterations-per-epoch", "1", "--time-budget", "0.0001"]) == 0
    fold_dir = tmp_path / DATASET / "autoprompt__tiny__2d" / "fold_0"
    final = load_checkpoint(fold_dir / "checkpoint_final.pt")
    assert final["epoch"] == 1 and final["planned_epochs"] == 1  # only one epoch fits the budget
    assert "time budget" in (fold_dir / "training_log.txt").read_text()
    assert cli.main([*base, "--epochs", "50", "--iterations-per-epoch", "1"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_max_steps_per_window_limits_the_epochs_even_under_a_long_time_budget(
    planned: PlannedDataset, tmp_path: Path
) -> None:
    training_cases = load_json(planned.folder / "splits_final.json")[0]["train"]
    windows = len(training_cases) * SHAPE[0]  # one window per slice (see the conftest)
    result = train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="tiny",
        overrides=[*TINY, "max_steps_per_window=0.5", "time_budget_minutes=60"],
        epochs=50,
        iterations_per_epoch=1,
        device="cpu",
    )
    limit = math.ceil(0.5 * windows)
    assert result.epochs == limit and result.steps == limit
    final = load_checkpoint(result.fold_dir / "checkpoint_final.pt")
    assert final["planned_epochs"] == limit  # the budget's plans never went past the limit
    log = (result.fold_dir / "training_log.txt").read_text()
    assert f"at most {limit} epochs (max_steps_per_window 0.5 x {windows} training windows)" in log


def test_a_fold_the_step_limit_ends_early_trains_an_ensemble_that_validates_and_predicts_together(
    planned: PlannedDataset, tmp_path: Path
) -> None:
    training_cases = load_json(planned.folder / "splits_final.json")[0]["train"]
    limit = math.ceil(0.5 * len(training_cases) * SHAPE[0])
    options = {
        "preprocessed": planned.preprocessed,
        "results": tmp_path,
        "config": "tiny",
        "overrides": ["max_steps_per_window=0.5", "ensemble_members=2", "val_iterations=1"],
        "epochs": 50,
        "iterations_per_epoch": 1,
        "device": "cpu",
    }
    result = train(DATASET, 0, **options)
    assert result.members == 2 and result.steps == 2 * limit
    folder = ModelFolder(result.model_folder)
    fold_dir, member_dir = folder.fold_dir(0), folder.fold_dir(0) / "member_1"
    assert folder.member_dirs(0) == [fold_dir, member_dir]
    seeds = [
        load_checkpoint(d / "checkpoint_final.pt")["metadata"]["trainer_config"]["seed"]
        for d in (fold_dir, member_dir)
    ]
    assert seeds == [12345, 12346]
    assert "ensemble: 2 models for this fold" in (fold_dir / "training_log.txt").read_text()
    assert (
        "an ensemble of 2 models" in (member_dir / "training_log.txt").read_text()
    )  # validated once, together
    assert (fold_dir / "postprocessing.json").is_file() and (
        fold_dir / "validation" / "summary.json"
    ).is_file()
    assert not (member_dir / "validation").exists()
    weights = [load_checkpoint(d / "checkpoint_final.pt")["model"] for d in (fold_dir, member_dir)]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    predictor = Predictor.from_model_folder(folder.path, folds=[0], device="cpu")
    assert len(predictor.models) == 2 and "fold 0 is an ensemble of 2 models" in " ".join(predictor.notes)
    # a member that did not finish is not predicted with, and --resume finishes it
    (member_dir / "checkpoint_final.pt").unlink()
    assert folder.member_dirs(0) == [fold_dir]
    resumed = train(DATASET, 0, resume=True, **options)
    assert resumed.members == 2 and folder.member_dirs(0) == [fold_dir, member_dir]


def test_without_the_cache_the_encoder_runs_every_step_on_augmented_windows(
    planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_encoder_calls(monkeypatch)
    overrides = [*TINY, "cache_embeddings=false", "val_iterations=1"]
    result = train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="tiny",
        overrides=overrides,
        epochs=1,
        iterations_per_epoch=2,
        device="cpu",
    )
    assert result.steps == 2 and calls[0] >= 3  # two training steps and one validation batch
    assert "batchgenerators augmentation" in (result.fold_dir / "training_log.txt").read_text()
    assert load_checkpoint(result.fold_dir / "checkpoint_final.pt")["metadata"]["mirror_augmented"] is True


def test_training_on_decoder_regions_and_a_region_as_large_as_the_embedding_decodes_whole_windows(
    planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.training.trainer as trainer_module

    squares, choose = [], trainer_module.decoder_regions

    def recorded(*args, **kwargs):
        squares.append(choose(*args, **kwargs))
        return squares[-1]

    monkeypatch.setattr(trainer_module, "decoder_regions", recorded)
    result = train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="tiny",
        overrides=[*TINY, "decoder_region_tokens=8", "val_iterations=1"],
        epochs=1,
        iterations_per_epoch=2,
        device="cpu",
    )
    assert result.steps == 2 and len(squares) == 2  # one region per training step, none in validation
    # 64 x 64 windows: a 16-token grid
    assert all(region.tokens == 8 and region.grid == 16 for region in squares)
    assert (
        load_checkpoint(result.fold_dir / "checkpoint_final.pt")["metadata"]["trainer_config"][
            "decoder_region_tokens"
        ]
        == 8
    )

    squares.clear()
    train(
        DATASET,
        1,
        preprocessed=planned.preprocessed,
        results=tmp_path / "whole",
        config="tiny",
        overrides=[*TINY, "decoder_region_tokens=16", "val_iterations=1"],
        epochs=1,
        iterations_per_epoch=2,
        device="cpu",
    )
    assert squares == []  # a square as large as the 16-token grid is the whole window: no region drawn
