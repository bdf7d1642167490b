"""Predicting a case costs one read of its voxels and one encoder pass per window (and per mirror)."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from pipeline.inference.predictor import Predictor
from pipeline.model_folder import ModelFolder
from pipeline.preprocessing import preprocess_case
from tests.inference.conftest import InferenceSetup


def count_voxel_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files SimpleITK reads voxels from from now on (header-only reads are not counted)."""
    reads: list[str] = []
    original = sitk.ReadImage

    def spy(path: str, *args, **kwargs) -> sitk.Image:
        reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(sitk, "ReadImage", spy)
    return reads


def count_encoded_windows(predictor: Predictor) -> list[int]:
    """Windows per image-encoder call of the predictor's (shared) backbone (run by PyTorch, whose module
    calls a hook can count)."""
    for model in predictor.models:
        model.backbone.encoder_runtime = "eager"
    encoders = {id(model.backbone.image_encoder): model.backbone.image_encoder for model in predictor.models}
    assert len(encoders) == 1  # the folds share one frozen encoder
    batches: list[int] = []
    next(iter(encoders.values())).register_forward_hook(lambda _m, args, _out: batches.append(len(args[0])))
    return batches


@pytest.mark.parametrize(
    ("configuration", "folds", "tta"), [("2d", [0, 1], False), ("2d", [0, 1], True), ("3d", [0], True)]
)
def test_a_case_is_read_once_and_each_window_encoded_once(
    inference_setup: InferenceSetup,
    monkeypatch: pytest.MonkeyPatch,
    configuration: str,
    folds: list[int],
    tta: bool,
) -> None:
    image = inference_setup.raw / "imagesTr" / "case_000_0000.nii.gz"
    folder = getattr(inference_setup, f"model_{configuration}")
    data = preprocess_case([image], ModelFolder(folder).plans, configuration).data
    window = ModelFolder(folder).plans.configuration(configuration).window_size
    assert all(side <= size for side, size in zip(data.shape[-2:], window, strict=True))  # one window a slice
    predictor = Predictor.from_model_folder(folder, folds=folds, device="cpu", tta=tta, precision="fp32")
    batches = count_encoded_windows(predictor)
    reads = count_voxel_reads(monkeypatch)

    prediction = predictor.predict_case([Path(image)])

    assert reads == [str(image)]
    assert sum(batches) == data.shape[1] * (4 if tta else 1)  # every slice, every mirror, once for all folds
    assert max(batches) > 1  # windows of several slices go through the encoder together
    assert prediction.labels.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
