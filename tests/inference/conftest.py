"""Tiny model folders for the inference tests: a synthetic dataset, really planned, and fold checkpoints of
freshly built tiny-backbone models (random prompt generators: right geometry, meaningless labels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from autoprompt.modeling.backbone import load_backbone
from autoprompt.modeling.config import ModelConfig
from pipeline.checkpoint import checkpoint_path, save_checkpoint
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import TrainerConfig
from tests.synthetic_data import make_synthetic_dataset

SHAPE = (3, 24, 20)  # (Z, Y, X): 3 slices keep every prediction to a few encoder calls


@dataclass(frozen=True)
class InferenceSetup:
    """Paths of the session's synthetic dataset and model folders."""

    raw: Path
    preprocessed: Path
    model_2d: Path  # folds 0 and 1
    model_3d: Path  # fold 0


def write_fold(folder: ModelFolder, fold: int | str, *, seed: int, mirror_augmented: bool = False) -> None:
    """Save a freshly built model's trainable weights as ``fold_<fold>/checkpoint_best.pt``."""
    backbone = load_backbone("tiny", window=folder.window())
    torch.manual_seed(seed)
    model = folder.build_model(device="cpu", backbone=backbone)
    metadata = {
        "backbone": backbone.name,
        "backbone_checksum": backbone.checksum,
        "mirror_augmented": mirror_augmented,
    }
    save_checkpoint(
        {"model": model.trainable_state_dict(), "metadata": metadata},
        checkpoint_path(folder.fold_dir(fold), "best"),
    )


def make_model_folder(path: Path, preprocessed: Path, configuration: str) -> ModelFolder:
    return ModelFolder.create(
        path,
        plans_file=preprocessed / "plans.json",
        dataset_json_file=preprocessed / "dataset.json",
        fingerprint_file=preprocessed / "fingerprint.json",
        trainer_config=TrainerConfig(model=ModelConfig(backbone="tiny"), configuration=configuration),
        configuration=configuration,
    )


@pytest.fixture(scope="session")
def inference_setup(tmp_path_factory: pytest.TempPathFactory) -> InferenceSetup:
    root = tmp_path_factory.mktemp("inference")
    raw = make_synthetic_dataset(root / "raw", num_cases=5, shape=SHAPE)
    preprocessed = plan_and_preprocess(raw, root / "preprocessed", num_processes=1)
    results = root / "results" / raw.name
    model_2d = make_model_folder(results / "autoprompt__tiny__2d", preprocessed, "2d")
    for fold in (0, 1):
        write_fold(model_2d, fold, seed=fold, mirror_augmented=fold == 0)
    model_3d = make_model_folder(results / "autoprompt__tiny__3d", preprocessed, "3d")
    write_fold(model_3d, 0, seed=7)
    return InferenceSetup(raw=raw, preprocessed=preprocessed, model_2d=model_2d.path, model_3d=model_3d.path)
