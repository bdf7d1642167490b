"""Predicting a case costs one read of its voxels and one encoder pass per window (and per mirror), and
OpenVINO gets a position's windows in one call."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.modeling import encoder_runtime
from pipeline.inference.predict_folder import predict
from pipeline.inference.predictor import CPU_BATCH_SIZE, Predictor
from pipeline.model_folder import ModelFolder
from pipeline.preprocessing import MAX_FIT_COARSENING, preprocess_case
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


def _wide_case(inference_setup: InferenceSetup, folder: Path) -> Path:
    """A training image with 1.5 times its in-plane spacing, as ``folder/wide_0000.nii.gz``: at the plans'
    spacing its slices are larger than the window."""
    image = sitk.ReadImage(str(inference_setup.raw / "imagesTr" / "case_000_0000.nii.gz"))
    image.SetSpacing([side * 1.5 for side in image.GetSpacing()[:2]] + [image.GetSpacing()[2]])
    wide = folder / "wide_0000.nii.gz"
    sitk.WriteImage(image, str(wide))
    return wide


def test_a_case_wider_than_the_window_is_encoded_one_window_a_slice(
    inference_setup: InferenceSetup, tmp_path: Path
) -> None:
    folder = inference_setup.model_2d
    plans = ModelFolder(folder).plans
    wide = _wide_case(inference_setup, tmp_path)
    tiled = preprocess_case([wide], plans, "2d").data
    assert max(tiled.shape[-2:]) > plans.configuration("2d").window_size[0]  # at the plans' spacing: tiles
    predictor = Predictor.from_model_folder(folder, folds=[0], device="cpu", tta=False, precision="fp32")
    batches = count_encoded_windows(predictor)

    prediction = predictor.predict_case([wide])

    assert sum(batches) == tiled.shape[1]  # one window a slice: the slices were shrunk to fit it
    assert prediction.labels.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(wide))).shape
    assert 1 < prediction.coarsening <= MAX_FIT_COARSENING


def test_predict_names_the_cases_it_shrank_to_fit_the_window(inference_setup: InferenceSetup, tmp_path: Path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _wide_case(inference_setup, inputs)
    shutil.copy(
        inference_setup.raw / "imagesTr" / "case_000_0000.nii.gz", inputs
    )  # fits at the plans' spacing

    summary = predict(
        inference_setup.model_2d, inputs, tmp_path / "out", folds=[0], tta=False, progress=False
    )

    assert sorted(summary.done) == ["case_000", "wide"]
    notes = [note for note in summary.notes if "larger than the" in note]
    assert len(notes) == 1 and notes[0].startswith("note: 1 case(s)") and notes[0].endswith(": wide")


def test_through_openvino_the_windows_at_one_position_go_to_the_encoder_in_one_call(
    inference_setup: InferenceSetup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = sitk.ReadImage(str(inference_setup.raw / "imagesTr" / "case_000_0000.nii.gz"))
    array = sitk.GetArrayFromImage(source)
    slices = 2 * CPU_BATCH_SIZE - 1  # PyTorch would take them in batches, one of them uneven
    image = sitk.GetImageFromArray(np.concatenate([array] * -(-slices // len(array)))[:slices])
    image.SetSpacing(source.GetSpacing())
    path = tmp_path / "long_case_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    predictor = Predictor.from_model_folder(
        inference_setup.model_2d, folds=[0], device="cpu", tta=False, precision="fp32"
    )
    for model in predictor.models:
        model.backbone.runtime_cache_folder = tmp_path / "cache"
    calls: list[int] = []
    run = encoder_runtime._run
    monkeypatch.setattr(
        encoder_runtime, "_run", lambda compiled, inputs: calls.append(len(inputs)) or run(compiled, inputs)
    )

    predictor.predict_case([path])

    assert calls == [slices]  # one window a slice, all of them in one call
