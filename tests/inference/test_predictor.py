"""The Predictor with tiny-backbone fold models: ensembling, the shared-encoder path, loading errors."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoprompt import progress as progress_module
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.backbone import load_backbone
from pipeline.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from pipeline.inference import predictor as predictor_module
from pipeline.inference.predictor import Predictor
from pipeline.model_folder import ModelFolder
from pipeline.preprocessing import preprocess_case, revert_probabilities
from tests.inference.conftest import InferenceSetup


def first_case_data(setup: InferenceSetup, configuration: str, *, slices: int) -> np.ndarray:
    image = setup.raw / "imagesTr" / "case_000_0000.nii.gz"
    folder = ModelFolder(setup.model_2d)
    return preprocess_case([image], folder.plans, configuration).data[:, :slices]


def test_fold_ensemble_averages_the_folds_probabilities(inference_setup: InferenceSetup) -> None:
    folder = ModelFolder(inference_setup.model_2d)
    backbone = load_backbone("tiny", window=folder.window())
    models = [folder.load_model(fold, device="cpu", backbone=backbone) for fold in (0, 1)]
    data = first_case_data(inference_setup, "2d", slices=1)

    def probabilities(fold_models: list) -> np.ndarray:
        return Predictor(fold_models, folder.plans, "2d", device="cpu", tta=False).predict_preprocessed(data)

    single = [probabilities([model]) for model in models]
    both = probabilities(models)
    assert both.shape == (3, *data.shape[1:])
    assert np.abs(single[0] - single[1]).max() > 1e-3  # the folds really differ
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(both.sum(axis=0), 1.0, atol=1e-5)


def test_3d_stacks_from_shared_embeddings_equal_encoding_every_stack(inference_setup: InferenceSetup) -> None:
    """Encoding each slice once and gathering stacks gives what encoding every stack of D slices gives."""
    folder = ModelFolder(inference_setup.model_3d)
    model = folder.load_model(0, device="cpu")
    assert model.stack_depth > 1 and model.depth_adapter is not None
    with torch.no_grad():  # the zero-initialised depth adapter would hide a neighbour mix-up: make it mix
        generator = torch.Generator().manual_seed(0)
        for parameter in model.depth_adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    data = first_case_data(inference_setup, "3d", slices=2)
    predictor = Predictor([model], folder.plans, "3d", device="cpu", tta=False)
    assert predictor.shares_encoder
    shared = predictor.predict_preprocessed(data)
    predictor.shares_encoder = False
    per_stack = predictor.predict_preprocessed(data)
    np.testing.assert_allclose(shared, per_stack, atol=1e-5)


def test_case_reverted_slab_by_slab_equals_reverting_all_its_probabilities(
    inference_setup: InferenceSetup, tmp_path: Path
) -> None:
    """predict_case reverts each slab of finished slices as it comes (never K+1 whole volumes): the labels are
    those of reverting the whole case's probabilities at once, the probabilities those in float16."""
    folder = ModelFolder(inference_setup.model_3d)
    source = sitk.ReadImage(str(inference_setup.raw / "imagesTr" / "case_000_0000.nii.gz"))
    slices = sitk.GetArrayFromImage(source)
    image = sitk.GetImageFromArray(np.concatenate([slices, slices[::-1]] * 4)[:20])  # 20 slices: two slabs
    image.SetSpacing(source.GetSpacing())
    path = tmp_path / "long_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    predictor = Predictor.from_model_folder(folder.path, device="cpu", tta=False)
    prediction = predictor.predict_case([path], return_probabilities=True)

    case = preprocess_case([path], folder.plans, "3d")
    slabs = list(predictor.predict_slabs(case.data))
    assert [(first, slab.shape[1]) for first, slab in slabs] == [(0, 15), (15, 5)]  # D = 3, 16 stacks a chunk
    whole = revert_probabilities(np.concatenate([slab for _, slab in slabs], axis=1), case.properties)
    np.testing.assert_array_equal(prediction.labels, predictor.labels_from_probabilities(whole))
    assert prediction.probabilities.dtype == np.float16 and prediction.probabilities.shape == whole.shape
    np.testing.assert_allclose(prediction.probabilities, whole, atol=1e-3)


def test_tta_predicts_each_flip_of_the_mirror_axes_and_averages_them(inference_setup: InferenceSetup) -> None:
    folder = ModelFolder(inference_setup.model_2d)
    model = folder.load_model(0, device="cpu", backbone=load_backbone("tiny", window=folder.window()))
    data = first_case_data(inference_setup, "2d", slices=1)
    # an even margin to the window: the slice's mirror image is then padded into the window's mirror image
    data = np.ascontiguousarray(data[..., : data.shape[-1] - (folder.window() - data.shape[-1]) % 2])

    def probabilities(images: np.ndarray, **tta) -> np.ndarray:
        return Predictor([model], folder.plans, "2d", device="cpu", **tta).predict_preprocessed(images)

    plain = probabilities(data, tta=False)
    flipped = probabilities(np.ascontiguousarray(data[..., ::-1]), tta=False)[..., ::-1]
    columns = probabilities(data, tta=True, mirror_axes=(-1,))
    np.testing.assert_allclose(columns, (plain + flipped) / 2, atol=2e-3)
    assert np.abs(probabilities(data, tta=True) - columns).max() > 1e-4  # rows and columns: two more flips


def test_from_model_folder_loads_all_trained_folds_with_one_backbone(inference_setup: InferenceSetup) -> None:
    predictor = Predictor.from_model_folder(inference_setup.model_2d, device="cpu")
    assert len(predictor.models) == 2
    assert predictor.models[0].backbone.image_encoder is predictor.models[1].backbone.image_encoder
    assert predictor.postprocessing == {"steps": []}  # no fold has postprocessing.json


def test_tta_by_default_only_when_every_fold_was_trained_with_mirroring(
    inference_setup: InferenceSetup,
) -> None:
    folder = inference_setup.model_2d  # fold 0 trained with mirror augmentation, fold 1 on cached embeddings
    assert Predictor.from_model_folder(folder, folds=[0], device="cpu").tta
    assert not Predictor.from_model_folder(folder, folds=[1], device="cpu").tta
    assert not Predictor.from_model_folder(folder, folds=[0, 1], device="cpu").tta
    assert Predictor.from_model_folder(folder, folds=[1], device="cpu", tta=True).tta


def test_decoding_overrides_reach_every_fold_and_out_of_range_values_are_refused(
    inference_setup: InferenceSetup,
) -> None:
    trained = Predictor.from_model_folder(inference_setup.model_2d, device="cpu").models[0]
    decoding = {
        "presence_floor": 0.2,
        "box_refinement": trained.box_refinement + 1,
        "refinement_tolerance": 0.03,
    }
    predictor = Predictor.from_model_folder(inference_setup.model_2d, device="cpu", decoding=decoding)
    for model in predictor.models:
        assert (model.presence_floor, model.box_refinement) == (0.2, trained.box_refinement + 1)
        assert model.refinement_tolerance == 0.03
        assert model.skip_presence_below == trained.skip_presence_below  # not given: as trained
    with pytest.raises(AutoPromptError, match=r"model.box_refinement = -1 must be 0 or more"):
        Predictor.from_model_folder(inference_setup.model_2d, device="cpu", decoding={"box_refinement": -1})
    with pytest.raises(ValueError, match="not decoding settings: head_dropout"):
        Predictor.from_model_folder(inference_setup.model_2d, device="cpu", decoding={"head_dropout": 0.1})


def test_from_model_folder_reads_each_checkpoint_once(
    inference_setup: InferenceSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.model_folder

    loaded: list[Path] = []

    def counting_load(path: Path) -> dict:
        loaded.append(Path(path))
        return load_checkpoint(path)

    monkeypatch.setattr(pipeline.model_folder, "load_checkpoint", counting_load)
    assert not Predictor.from_model_folder(inference_setup.model_2d, folds=[0, 1], device="cpu").tta
    assert sorted(path.parent.name for path in loaded) == ["fold_0", "fold_1"]


def test_missing_model_folder_fold_and_checkpoint_name_the_path(
    inference_setup: InferenceSetup, tmp_path: Path
) -> None:
    with pytest.raises(AutoPromptError, match=f"{tmp_path / 'nothing'}: model folder not found"):
        Predictor.from_model_folder(tmp_path / "nothing", device="cpu")
    with pytest.raises(AutoPromptError, match=r"fold_3/checkpoint_best\.pt: checkpoint not found"):
        Predictor.from_model_folder(inference_setup.model_2d, folds=[0, 3], device="cpu")
    with pytest.raises(AutoPromptError, match="no fold has checkpoint_final.pt"):
        Predictor.from_model_folder(inference_setup.model_2d, checkpoint="final", device="cpu")


def copy_with_metadata(model_dir: Path, copy: Path, fold: int, **metadata) -> Path:
    """A copy of ``model_dir`` whose fold's best checkpoint has ``metadata`` entries replaced."""
    shutil.copytree(model_dir, copy)
    path = checkpoint_path(copy / f"fold_{fold}", "best")
    state = load_checkpoint(path)
    state["metadata"].update(metadata)
    save_checkpoint({key: value for key, value in state.items() if key != "format"}, path)
    return copy


def test_models_trained_on_cached_views_mirror_only_the_columns(
    inference_setup: InferenceSetup, tmp_path: Path
) -> None:
    views = {"count": 4, "key": "0123456789abcdef"}
    copy = copy_with_metadata(
        inference_setup.model_2d, tmp_path / "model", 1, mirror_augmented=True, views=views
    )
    cached = Predictor.from_model_folder(copy, folds=[1], device="cpu")
    assert cached.tta and cached.mirror_axes == (-1,)
    assert Predictor.from_model_folder(copy, folds=[0], device="cpu").mirror_axes == (-2, -1)  # on the fly
    assert Predictor.from_model_folder(copy, folds=[0, 1], device="cpu").mirror_axes == (-2, -1)


def test_model_trained_on_another_backbone_is_refused(
    inference_setup: InferenceSetup, tmp_path: Path
) -> None:
    copy = copy_with_metadata(
        inference_setup.model_2d, tmp_path / "model", 0, backbone_checksum="0123456789abcdef"
    )
    with pytest.raises(AutoPromptError, match=r"fold_0/checkpoint_best\.pt: incompatible model"):
        Predictor.from_model_folder(copy, folds=[0], device="cpu")


def test_empty_image_is_refused_before_any_work(inference_setup: InferenceSetup, tmp_path: Path) -> None:
    path = tmp_path / "blank_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 24, 20), 7, dtype=np.int16)), str(path))
    predictor = Predictor.from_model_folder(inference_setup.model_2d, folds=[0], device="cpu")
    with pytest.raises(AutoPromptError, match=rf"{path}: image is empty \(all 7\)"):
        predictor.predict_case([path])


def test_a_case_reports_its_slices_in_a_log(
    inference_setup: InferenceSetup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without a terminal a long case writes slice progress lines (here with no start delay)."""
    quick = functools.partial(progress_module.progress, delay=0.0, interval=0.0)
    monkeypatch.setattr(predictor_module, "progress", quick)
    folder = ModelFolder(inference_setup.model_2d)
    model = folder.load_model(0, device="cpu")
    data = first_case_data(inference_setup, "2d", slices=3)
    Predictor([model], folder.plans, "2d", device="cpu", tta=False).predict_preprocessed(data)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slices:")]
    assert any(line.startswith("slices: 100% (3/3 slice)") for line in lines)
    assert lines[-1].startswith("slices: done, 3 slice")


def test_the_zoomed_pass_replaces_the_first_pass_inside_the_region_of_interest(
    inference_setup: InferenceSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With zoom on, the probabilities inside the box come from predicting the box enlarged to the window, those
    outside it are the first pass's (float16-held), and a case without a box keeps its first pass."""
    from pipeline.roi_zoom import RoiBox, zoom_in, zoom_out
    from pipeline.trainer_config import ZoomConfig

    folder = ModelFolder(inference_setup.model_2d)
    model = folder.load_model(0, device="cpu")
    data = first_case_data(inference_setup, "2d", slices=2)
    plain = Predictor([model], folder.plans, "2d", device="cpu", tta=False)
    zoomed = Predictor(
        [model], folder.plans, "2d", device="cpu", tta=False, zoom=ZoomConfig(second_pass=True)
    )
    box = RoiBox(top=2.0, left=3.0, side=12.0)
    monkeypatch.setattr(predictor_module, "roi_box", lambda *args, **kwargs: box)
    first = plain.predict_preprocessed(data)
    both = zoomed.predict_preprocessed(data)
    window = folder.plans.configuration("2d").window_size
    second = plain.predict_preprocessed(zoom_in(torch.from_numpy(data), box, window).numpy())
    region, (rows, cols) = zoom_out(torch.from_numpy(second), box, data.shape[-2:])
    np.testing.assert_allclose(both[:, :, rows, cols], region.numpy(), atol=2e-3)
    outside = np.ones(data.shape[-2:], dtype=bool)
    outside[rows, cols] = False
    np.testing.assert_allclose(both[:, :, outside], first[:, :, outside], atol=2e-3)
    assert np.abs(both[:, :, rows, cols] - first[:, :, rows, cols]).max() > 1e-2  # the second pass differs

    monkeypatch.setattr(predictor_module, "roi_box", lambda *args, **kwargs: None)
    np.testing.assert_allclose(zoomed.predict_preprocessed(data), first, atol=2e-3)
