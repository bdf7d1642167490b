"""The stateful predictor: preprocessing frame, prompt checks, and the real LiteMedSAM on known objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoprompt.errors import AutoPromptError
from autoprompt.interactive.images import LoadedImage
from autoprompt.interactive.predictor import (
    InteractivePredictor,
    ModelOptions,
    SliceFrame,
    box_from_mask,
    check_box,
    check_points,
)
from autoprompt.interactive.segment import segment
from autoprompt.interactive.volume import propagation_order
from autoprompt.modeling.backbone import SamBackbone
from pipeline.io import read_image
from tests.interactive.cases import ACDC_CASE, acdc_lv_case, dice, ellipse_case


def test_slice_frame_resizes_longest_side_and_pads() -> None:
    frame = SliceFrame(128, 64)
    assert frame.scale == 2.0 and frame.resized == (256, 128)
    pixels = np.tile(np.arange(64, dtype=np.float32), (128, 1))  # a ramp along x
    inputs = frame.to_input(pixels, intensity_range=None)
    assert inputs.shape == (1, 3, 256, 256)
    assert torch.equal(inputs[:, 0], inputs[:, 2])  # grey repeated to three channels
    assert inputs[..., :128].min() == 0.0 and inputs[..., :128].max() == 1.0
    assert torch.count_nonzero(inputs[..., 128:]) == 0  # zero padding at the right
    assert torch.all(inputs[0, 0, 0, 1:128] >= inputs[0, 0, 0, :127])  # the ramp survives the resize


def test_slice_frame_clips_before_scaling() -> None:
    pixels = np.array([[0.0, 10.0], [20.0, 1000.0]], dtype=np.float32)
    inputs = SliceFrame(2, 2, input_size=2).to_input(pixels, intensity_range=(0.0, 20.0))
    assert inputs[0, 0].tolist() == [[0.0, 0.5], [1.0, 1.0]]


def test_mask_from_logits_crops_padding_and_resizes() -> None:
    frame = SliceFrame(100, 50)  # resized to 256 x 128 (+0.5 rounding)
    logits = -torch.ones(1, 1, 256, 256)
    logits[..., :128, :] = 1.0  # top half of the resized rows, and all the padding columns
    mask = frame.mask_from_logits(logits)
    assert mask.shape == (100, 50)
    assert mask[:50].all() and not mask[50:].any()


def test_box_from_mask_widens_and_clips() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:6, 10:25] = True
    assert box_from_mask(mask, margin=3).tolist() == [7.0, 0.0, 27.0, 8.0]
    mask[:] = False
    mask[18:, 28:] = True
    assert box_from_mask(mask, margin=3).tolist() == [25.0, 15.0, 30.0, 20.0]


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((1, 2, 3), "4 numbers"),
        ((10, 5, 4, 8), "corners swapped"),
        ((-1, 0, 10, 10), "outside the 30 x 20 image"),
        ((0, 0, 31, 10), "outside the 30 x 20 image"),
    ],
)
def test_bad_boxes(box: tuple, message: str) -> None:
    with pytest.raises(AutoPromptError, match=f"^scan.nii.gz: .*{message}"):
        check_box(box, (20, 30), source="scan.nii.gz")


@pytest.mark.parametrize(
    ("points", "message"),
    [([(1, 2)], "triples"), ([(1, 2, 2)], "label 2"), ([(5, 25, 1)], "outside")],
)
def test_bad_points(points: list, message: str) -> None:
    with pytest.raises(AutoPromptError, match=message):
        check_points(points, (20, 30), source="x.png")


def test_propagation_order_middle_out() -> None:
    assert list(propagation_order(2, 6)) == [(4, None), (5, 4), (6, 5), (3, 4), (2, 3)]
    assert list(propagation_order(3, 3)) == [(3, None)]


def test_predict_needs_an_image_and_a_prompt(tiny: SamBackbone) -> None:
    predictor = InteractivePredictor(tiny, device="cpu", precision="fp32")
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=(0, 0, 5, 5))
    predictor.set_image(np.zeros((30, 40), dtype=np.float32))
    with pytest.raises(AutoPromptError, match="no prompt"):
        predictor.predict()
    result = predictor.predict(points=[(10, 10, 1), (35, 25, 0)])
    assert result.mask.shape == (30, 40) and result.low_res_logits.shape == (256, 256)


@pytest.fixture(scope="module")
def ellipse_predictor(litemedsam: SamBackbone) -> tuple[InteractivePredictor, object]:
    """LiteMedSAM with the synthetic ellipse slice set (one encoder call for the tests below)."""
    case = ellipse_case()
    predictor = InteractivePredictor(litemedsam, device="cpu")
    predictor.set_image(case.image, intensity_range=LoadedImage.of(case.image).intensity_range)
    return predictor, case


def test_litemedsam_segments_ellipse_from_box(ellipse_predictor) -> None:
    predictor, case = ellipse_predictor
    result = predictor.predict(box=case.box)
    assert dice(result.mask, case.truth) > 0.9
    assert result.iou_prediction > 0.8


def test_background_point_outside_keeps_the_box_answer(ellipse_predictor) -> None:
    predictor, case = ellipse_predictor
    x1, y1, _, _ = case.box
    with_point = predictor.predict(box=case.box, points=[(x1 + 1, y1 + 1, 0)])  # a box corner is background
    assert dice(with_point.mask, case.truth) > 0.9


def test_litemedsam_segments_acdc_left_ventricle(
    litemedsam: SamBackbone, shared_data: Path, tmp_path: Path
) -> None:
    case, index = acdc_lv_case(shared_data)
    image = shared_data / "Dataset027_ACDC" / "imagesTr" / f"{ACDC_CASE}_0000.nii.gz"
    output = tmp_path / "lv.nii.gz"
    mask = segment(
        image, box=case.box, slice_index=index, output=output, model=ModelOptions(litemedsam, device="cpu")
    )
    assert dice(mask[index], case.truth) > 0.85
    assert not np.delete(mask, index, axis=0).any()
    written, geometry = read_image(output)
    assert geometry.matches(read_image(image)[1])
    np.testing.assert_array_equal(written, mask)
