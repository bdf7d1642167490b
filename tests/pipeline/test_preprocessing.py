"""preprocess_case and its inverse: exact round trips, plan edits that take effect, 2D inputs, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.errors import AutoPromptError
from pipeline.dataset import load_raw_dataset
from pipeline.io import read_image
from pipeline.preprocessing import (
    geometry_of,
    prediction_spacing,
    preprocess_case,
    revert_probabilities,
    revert_probability_slices,
    revert_segmentation,
)
from planners.fingerprint import extract_fingerprint
from planners.planner import plan_dataset
from planners.plans import ChannelNormalization, ConfigurationPlan, Plans
from tests.pipeline.test_natural_images import plans_with
from tests.planners.helpers import add_zero_border, label_inside
from tests.synthetic_data import make_synthetic_dataset

BORDER = ((1, 0), (3, 2), (2, 1))  # zero voxels (before, after) per (Z, Y, X): cropping must remove them


def planned_dataset(root: Path, **synthetic) -> tuple[Path, Plans]:
    folder = make_synthetic_dataset(root, num_cases=3, **synthetic)
    add_zero_border(folder, width=BORDER)
    raw = load_raw_dataset(folder)
    return folder, plan_dataset(extract_fingerprint(raw, num_processes=1), raw.dataset_json)


def check_round_trip(
    image_files: list[Path], label_file: Path, plans: Plans, *, crop: list[list[int]]
) -> None:
    """Preprocess, then map the labels (and one-hot probabilities) back: the original voxels, exactly."""
    label, label_geometry = read_image(label_file)
    case = preprocess_case(image_files, plans, "2d", label_file=label_file)
    assert case.data.dtype == np.float32 and case.seg.dtype == np.int16
    assert case.data.shape[1:] == case.seg.shape == tuple(case.properties["shape_after_resampling"])
    assert 0.0 <= case.data.min() and case.data.max() <= 1.0
    assert case.properties["crop_bbox"] == crop
    properties = json.loads(json.dumps(case.properties))  # as stored in {case}.json

    assert np.array_equal(revert_segmentation(case.seg, properties), label)
    num_labels = len(plans.labels)
    one_hot = np.eye(num_labels, dtype=np.float32)[case.seg].transpose(3, 0, 1, 2)
    probabilities = revert_probabilities(one_hot, properties)
    assert probabilities.shape == (num_labels, *label.shape)
    assert np.array_equal(probabilities.argmax(0), label)
    outside = np.ones(label.shape, dtype=bool)
    outside[tuple(slice(lo, hi) for lo, hi in crop[-label.ndim :])] = False
    assert outside.any() and np.all(probabilities[0][outside] == 1.0)
    assert geometry_of(properties).matches(label_geometry)

    # slab by slab (as prediction reverts): the very values of the whole case reverted at once
    mixed = np.random.default_rng(0).random(one_hot.shape, dtype=np.float32)
    whole = revert_probabilities(mixed, properties)
    pieced = np.zeros_like(whole)
    pieced[0] = 1.0
    cuts = sorted({0, *(cut for cut in (1, 3) if cut < mixed.shape[1]), mixed.shape[1]})
    for first, stop in zip(cuts, cuts[1:], strict=False):
        block, index = revert_probability_slices(mixed[:, first:stop], properties, first=first)
        pieced[(slice(None), *index)] = block
    assert np.array_equal(pieced, whole)


@pytest.mark.parametrize(("spacing", "slice_axis"), [((0.8, 0.8, 3.0), 0), ((3.0, 0.8, 0.8), 2)])
def test_preprocess_then_revert_is_exact(tmp_path: Path, spacing: tuple, slice_axis: int) -> None:
    folder, plans = planned_dataset(tmp_path, spacing=spacing)
    plan = plans.configuration("2d")
    assert plan.slice_axis == slice_axis
    assert plan.inplane_rule == "finer_to_fill"  # 48 x 40 px slices are enlarged: a real resampling
    crop = [[lo, size - hi] for (lo, hi), size in zip(BORDER, (8, 48, 40), strict=True)]
    for case in ("case_000", "case_001"):
        label_file = folder / "labelsTr" / f"{case}.nii.gz"
        assert label_inside(read_image(label_file)[0], width=BORDER)
        check_round_trip([folder / "imagesTr" / f"{case}_0000.nii.gz"], label_file, plans, crop=crop)
    case = preprocess_case([folder / "imagesTr" / "case_000_0000.nii.gz"], plans, "3d")
    assert case.seg is None and "class_slices" not in case.properties
    assert case.data.shape[1] == [8, 48, 40][slice_axis] - sum(BORDER[slice_axis])


def test_edited_spacing_and_normalization_take_effect(tmp_path: Path) -> None:
    folder, plans = planned_dataset(tmp_path)
    image_file = folder / "imagesTr" / "case_000_0000.nii.gz"
    planned = preprocess_case([image_file], plans, "2d")
    # edit: keep the original 0.8 mm (no resampling) and clip at fixed intensities 50..250 (CT-like)
    data = plans.to_dict()
    for configuration in data["configurations"].values():
        configuration["target_spacing"] = [3.0, 0.8, 0.8]
    data["normalization"] = [{"scheme": "ct", "lower": 50.0, "upper": 250.0}]
    edited = preprocess_case([image_file], Plans.from_dict(data), "2d")

    image, _ = read_image(image_file)
    crop = image[1:8, 3:46, 2:39]
    assert planned.data.shape == (1, 7, 256, round(37 * 256 / 43))  # the 43-row crop fills the window
    assert edited.data.shape == (1, *crop.shape)
    np.testing.assert_allclose(edited.data[0], np.clip((crop - 50.0) / 200.0, 0, 1), atol=1e-6)


def test_mr_normalization_uses_each_images_own_percentiles(tmp_path: Path) -> None:
    folder, plans = planned_dataset(tmp_path)
    plans.configuration("2d").target_spacing = plans.configuration("3d").target_spacing = [3.0, 0.8, 0.8]
    plans.normalization = [ChannelNormalization("mr", 10.0, 90.0)]
    image, _ = read_image(folder / "imagesTr" / "case_000_0000.nii.gz")
    crop = image[1:8, 3:46, 2:39]
    low, high = np.percentile(crop, [10.0, 90.0])
    data = preprocess_case([folder / "imagesTr" / "case_000_0000.nii.gz"], plans, "2d").data
    np.testing.assert_allclose(data[0], np.clip((crop - low) / (high - low), 0, 1), atol=1e-5)
    assert np.mean(data == 0.0) == pytest.approx(0.1, abs=0.01)


def test_a_2d_png_is_one_slice(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset970_Png"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        image = np.zeros((60, 80), dtype=np.uint8)
        image[4:57, 3:75] = rng.integers(20, 120, size=(53, 72))
        label = np.zeros(image.shape, dtype=np.uint8)
        label[20:35, 10:30] = 1
        image[label == 1] += 100
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "imagesTr" / f"{case}_0000.png"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "labelsTr" / f"{case}.png"))
    dataset_json = {
        "channel_names": {"0": "photo"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": 2,
        "file_ending": ".png",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    raw = load_raw_dataset(folder)
    plans = plan_dataset(extract_fingerprint(raw, num_processes=1), raw.dataset_json)
    assert list(plans.configurations) == ["2d"]
    case = preprocess_case([folder / "imagesTr" / "a_0000.png"], plans, "2d")
    assert case.data.shape[:2] == (1, 1)
    check_round_trip(
        [folder / "imagesTr" / "a_0000.png"],
        folder / "labelsTr" / "a.png",
        plans,
        crop=[[0, 1], [4, 57], [3, 75]],
    )


def test_channels_on_different_grids_are_refused(tmp_path: Path) -> None:
    folder = make_synthetic_dataset(tmp_path, num_cases=1, num_channels=2)
    raw = load_raw_dataset(folder)
    plans = plan_dataset(extract_fingerprint(raw, num_processes=1), raw.dataset_json)
    second = folder / "imagesTr" / "case_000_0001.nii.gz"
    image = sitk.ReadImage(str(second))
    image.SetSpacing((0.9, 0.8, 3.0))
    sitk.WriteImage(image, str(second))
    with pytest.raises(
        AutoPromptError, match=r"case_000_0001\.nii\.gz: its spacing differs from .*case_000_0000"
    ):
        preprocess_case(raw.cases["case_000"].images, plans, "2d")
    with pytest.raises(AutoPromptError, match=r"1 file\(s\) hold 1 channel\(s\), 2 are needed"):
        preprocess_case(raw.cases["case_000"].images[:1], plans, "2d")
    with pytest.raises(AutoPromptError, match="configuration '3D'"):
        preprocess_case(raw.cases["case_000"].images, plans, "3D")


@pytest.mark.slow
def test_real_acdc_cases_round_trip(shared_data: Path) -> None:
    raw = load_raw_dataset(shared_data / "Dataset027_ACDC")
    raw = dataclasses.replace(raw, cases=dict(list(raw.cases.items())[:12]))  # 6 patients plan like all 80
    plans = plan_dataset(extract_fingerprint(raw, num_processes=2), raw.dataset_json)
    plan = plans.configuration("2d")
    assert (plan.slice_axis, plan.inplane_rule) == (0, "median")
    assert plan.target_spacing == pytest.approx([10.0, 1.5625, 1.5625])
    for case_id in ("patient002_frame01", "patient003_frame01"):
        files = raw.cases[case_id]
        case = preprocess_case(files.images, plans, "3d", label_file=files.label)
        label, _ = read_image(files.label)
        assert np.array_equal(revert_segmentation(case.seg, case.properties), label)
        assert sorted(case.properties["class_slices"]) == ["1", "2", "3"]


def _plan(rule: str) -> ConfigurationPlan:
    """256 x 256 windows at 1 mm in-plane, planned by ``rule``."""
    plan = plans_with(ChannelNormalization("mr", 0.5, 99.5)).configuration("2d")
    return dataclasses.replace(plan, target_spacing=[3.0, 1.0, 1.0], inplane_rule=rule)


def test_prediction_spacing_makes_slices_fit_one_window_at_most_twice_coarser() -> None:
    spacing = (5.0, 0.5, 0.5)  # the image's own; the plans resample it to 1 mm
    assert prediction_spacing((4, 400, 300), spacing, _plan("median")) == [5.0, 1.0, 1.0]  # 200 x 150: fits
    assert prediction_spacing((4, 400, 576), spacing, _plan("median")) == pytest.approx([5.0, 1.125, 1.125])
    # 1024 pixels, 4 windows: shrunk at most twice, then tiled
    assert prediction_spacing((4, 2048, 100), spacing, _plan("median")) == [5.0, 2.0, 2.0]
    # plans whose median slice does not fit tile on purpose (their model was trained on tiles)
    assert prediction_spacing((4, 400, 576), spacing, _plan("coarser_capped")) == [5.0, 1.0, 1.0]


def test_a_slice_larger_than_the_window_is_predicted_whole_and_reverts_exactly(tmp_path: Path) -> None:
    folder, plans = planned_dataset(tmp_path)
    for configuration in plans.configurations.values():  # the 43 x 37 voxel crop becomes 344 x 296 pixels
        configuration.target_spacing = [3.0, 0.1, 0.1]
    image_file = folder / "imagesTr" / "case_000_0000.nii.gz"
    label_file = folder / "labelsTr" / "case_000.nii.gz"
    tiled = preprocess_case([image_file], plans, "2d", label_file=label_file)
    whole = preprocess_case([image_file], plans, "2d", label_file=label_file, fit_window=True)
    assert tiled.data.shape[2:] == (344, 296)
    assert whole.data.shape[2:] == (256, round(296 * 256 / 344))
    assert whole.properties["spacing_after_resampling"][1:] == pytest.approx([0.1 * 344 / 256] * 2)
    label, _ = read_image(label_file)
    assert np.array_equal(revert_segmentation(whole.seg, whole.properties), label)
