"""3d training on the tiny synthetic volumes: the cached 3d_frozen preset (the CPU default) end to end with
prediction, decoding every slice of a stack or only its centre, the encoder-adapter 3d_adapter preset, and
kill-and-resume."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoprompt import cli
from autoprompt.commands.common import model_folder_from_args
from pipeline.checkpoint import load_checkpoint
from pipeline.io import read_image
from pipeline.model_folder import ModelFolder
from pipeline.training.run import train
from pipeline.training.trainer import TrainingResult
from tests.training.conftest import DATASET, PlannedDataset
from tests.training.helpers import assert_same_run, kill_after_first_epoch_and_resume

# the presets made small: the tiny backbone, narrow heads, single-stack steps, 3 views (as the 2d tests')
SMALL = ["model.backbone=tiny", "model.head_channels=16", "batch_size=1", "final_validation=false"]
FROZEN_3D = [
    *SMALL,
    "model.train_decoder=false",
    "epochs=2",
    "iterations_per_epoch=1",
    "val_iterations=1",
    "views.count=3",
]
ROTATED = (0.96, -0.28, 0.0, 0.28, 0.96, 0.0, 0.0, 0.0, 1.0)  # 16 degrees about z


@pytest.fixture(scope="module")
def trained_3d(planned: PlannedDataset, tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """``-c 3d`` on the CPU without a preset: 3d_frozen, uninterrupted."""
    results = tmp_path_factory.mktemp("results_3d")
    return train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=results,
        configuration="3d",
        overrides=FROZEN_3D,
        device="cpu",
    )


def test_3d_on_a_cpu_trains_3d_frozen_from_cached_embeddings(trained_3d: TrainingResult) -> None:
    assert trained_3d.model_folder.name == "autoprompt__3d_frozen__3d"
    assert trained_3d.steps == 2
    folder = ModelFolder(trained_3d.model_folder)
    assert folder.configuration == "3d" and folder.plans.configuration("3d").stack_depth == 3
    model = folder.load_model(0, checkpoint="final", device="cpu")
    assert model.stack_depth == 3 and model.uses_frozen_encoder and model.depth_adapter is not None
    assert model.centre_slice_only and model.output_depth == 1  # the other slices of a stack are context
    state = load_checkpoint(trained_3d.fold_dir / "checkpoint_final.pt")
    assert any(key.startswith("depth_adapter.") for key in state["model"])
    assert not any(key.startswith("backbone.image_encoder.") for key in state["model"])
    assert state["metadata"]["views"]["count"] == 3
    log = (trained_3d.fold_dir / "training_log.txt").read_text()
    assert "(3d)" in log and "frozen-encoder embeddings cached" in log


def test_a_3d_frozen_model_predicts_in_the_input_geometry(
    trained_3d: TrainingResult, planned: PlannedDataset, tmp_path: Path
) -> None:
    assert_3d_prediction_keeps_the_input_geometry(trained_3d, planned, tmp_path)


def test_a_3d_model_decoding_every_slice_trains_and_predicts(planned: PlannedDataset, tmp_path: Path) -> None:
    """``model.decoded_slices=all``: every slice of a stack is decoded and scored (3d_frozen decodes the centre)."""
    result = train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=tmp_path / "results",
        configuration="3d",
        overrides=[*FROZEN_3D, "model.decoded_slices=all"],
        device="cpu",
    )
    assert result.steps == 2 and np.isfinite(result.history[-1]["train_loss"])
    model = ModelFolder(result.model_folder).load_model(0, checkpoint="final", device="cpu")
    assert model.stack_depth == 3 and not model.centre_slice_only and model.output_depth == 3
    assert_3d_prediction_keeps_the_input_geometry(result, planned, tmp_path)


def assert_3d_prediction_keeps_the_input_geometry(
    trained: TrainingResult, planned: PlannedDataset, tmp_path: Path
) -> None:
    """Through ``autoprompt predict -c 3d``: 5 slices (stacks padded at both ends), oblique, other spacing."""
    source = sitk.ReadImage(str(planned.raw / DATASET / "imagesTr" / "case_000_0000.nii.gz"))
    voxels = sitk.GetArrayFromImage(source)
    image = sitk.GetImageFromArray(np.concatenate([voxels, voxels[:2]]))  # (5, 40, 32)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-31.5, 12.25, 7.0))
    image.SetDirection(ROTATED)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(image, str(tmp_path / "in" / "scan_0000.nii.gz"))
    code = cli.main(
        [
            "predict",
            "-i",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "-d",
            DATASET,
            "-c",
            "3d",
            "--results",
            str(trained.model_folder.parent.parent),
            "--device",
            "cpu",
            "--no-tta",
        ]
    )
    assert code == 0
    labels, geometry = read_image(tmp_path / "out" / "scan.nii.gz")
    _, input_geometry = read_image(tmp_path / "in" / "scan_0000.nii.gz")
    assert labels.shape == (5, 40, 32) and geometry.size == input_geometry.size
    assert geometry.matches(input_geometry), geometry.mismatches(input_geometry)
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_3d_kill_and_resume_equals_an_uninterrupted_run(
    trained_3d: TrainingResult, planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resumed = kill_after_first_epoch_and_resume(
        monkeypatch,
        tmp_path / DATASET / "autoprompt__3d_frozen__3d" / "fold_0",
        preprocessed=planned.preprocessed,
        results=tmp_path,
        configuration="3d",
        overrides=FROZEN_3D,
        device="cpu",
    )
    assert resumed.steps == 2 and len(resumed.history) == 2
    assert_same_run(resumed, trained_3d)


def test_3d_adapter_trains_encoder_adapters_without_a_cache(planned: PlannedDataset, tmp_path: Path) -> None:
    result = train(
        DATASET,
        0,
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="3d_adapter",
        overrides=[*SMALL, "val_iterations=0", "num_workers=0"],
        epochs=1,
        iterations_per_epoch=1,
        device="cpu",
    )
    assert result.model_folder.name == "autoprompt__3d_adapter__3d" and result.steps == 1
    model = ModelFolder(result.model_folder).load_model(0, checkpoint="final", device="cpu")
    assert model.stack_depth == 3 and not model.uses_frozen_encoder
    weights = load_checkpoint(result.fold_dir / "checkpoint_final.pt")["model"]
    encoder = {key: value for key, value in weights.items() if key.startswith("backbone.image_encoder.")}
    ups = [value for key, value in encoder.items() if ".adapter.up." in key]
    depth = [key for key in encoder if ".depth_adapter." in key]
    assert ups and depth  # bottleneck and depth adapters inside the encoder are trained weights
    assert any(bool(torch.any(up != 0)) for up in ups)  # zero-initialised, moved by the step
    assert "encoder run every step" in (result.fold_dir / "training_log.txt").read_text()


def test_predict_finds_the_3d_model_of_either_preset(tmp_path: Path) -> None:
    """``predict -d -c 3d`` without ``--preset``: the device's default 3d preset first, else the other one."""
    args = Namespace(
        model_dir=None, dataset=DATASET, configuration="3d", preset=None, results=str(tmp_path), device="cpu"
    )
    (tmp_path / DATASET / "autoprompt__3d_adapter__3d").mkdir(parents=True)  # trained on a GPU
    assert model_folder_from_args(args).name == "autoprompt__3d_adapter__3d"
    (tmp_path / DATASET / "autoprompt__3d_frozen__3d").mkdir()
    assert model_folder_from_args(args).name == "autoprompt__3d_frozen__3d"  # the CPU's own default
