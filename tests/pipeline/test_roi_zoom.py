"""The region-of-interest geometry shared by zoomed training views and the zoomed prediction pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.roi_zoom import MIN_FACTOR, RoiBox, roi_box, zoom_in, zoom_out

WINDOW = (64, 64)


def test_the_box_is_the_square_around_the_foreground_grown_by_the_margin() -> None:
    foreground = np.zeros((3, 100, 120), dtype=bool)
    foreground[1, 40:50, 30:50] = True  # 10 rows x 20 columns
    box = roi_box(foreground, margin=0.25, window=WINDOW, max_factor=4.0)
    assert box == RoiBox(top=45 - 15, left=40 - 15, side=30.0)  # side 20 x 1.5, same centre


def test_stray_fragments_do_not_widen_the_box_but_a_second_organ_does() -> None:
    foreground = np.zeros((4, 100, 100), dtype=bool)
    foreground[:, 20:40, 20:40] = True
    foreground[0, 90, 90] = True  # one stray voxel
    alone = roi_box(foreground, margin=0.0, window=WINDOW, max_factor=4.0)
    assert alone == RoiBox(20.0, 20.0, 20.0)
    foreground[:, 50:60, 50:60] = True  # a quarter of the first one's size: another structure, kept
    assert roi_box(foreground, margin=0.0, window=WINDOW, max_factor=4.0) == RoiBox(20.0, 20.0, 40.0)


def test_no_box_without_foreground_or_without_enough_enlargement() -> None:
    empty = np.zeros((2, 50, 50), dtype=bool)
    assert roi_box(empty, margin=0.25, window=WINDOW, max_factor=4.0) is None
    large = empty.copy()
    large[:, 2:48, 2:48] = True  # 46 x 1.5 > 64 / MIN_FACTOR
    assert 64 / (46 * 1.5) < MIN_FACTOR
    assert roi_box(large, margin=0.25, window=WINDOW, max_factor=4.0) is None


def test_a_tiny_structure_is_enlarged_at_most_max_factor() -> None:
    foreground = np.zeros((1, 100, 100), dtype=bool)
    foreground[0, 50:52, 50:52] = True
    box = roi_box(foreground, margin=0.25, window=WINDOW, max_factor=4.0)
    assert box.side == 16 and box.factor(WINDOW) == 4


def test_zoom_in_puts_the_box_on_the_window_and_keeps_labels_and_image_aligned() -> None:
    seg = np.zeros((2, 80, 90), dtype=np.int16)
    seg[:, 30:40, 40:50] = 2
    image = torch.from_numpy((seg > 0).astype(np.float32))[None]  # 1 x 2 x 80 x 90
    box = RoiBox(top=25.0, left=35.0, side=20.0)  # the square 25..45 x 35..55, zoomed 64 / 20 = 3.2 times
    zoomed = zoom_in(image, box, WINDOW)
    labels = zoom_in(torch.from_numpy(seg), box, WINDOW, labels=True)
    assert zoomed.shape == (1, 2, 64, 64) and labels.shape == (2, 64, 64) and labels.dtype == torch.int16
    assert set(labels.unique().tolist()) == {0, 2}
    inside = labels[0] == 2
    rows, cols = torch.nonzero(inside, as_tuple=True)
    # rows 30..40 of the slice are rows (30 - 25) x 3.2 = 16 .. 48 of the window
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (16, 48, 16, 48)
    assert ((zoomed[0, 0] > 0.5) == inside).float().mean() > 0.97


def test_zoom_out_returns_zoomed_predictions_to_their_place() -> None:
    rows, cols = np.mgrid[:70, :60]
    smooth = torch.from_numpy(np.stack([np.sin(rows / 9.0) + np.cos(cols / 7.0)] * 2).astype(np.float32))
    box = RoiBox(top=-5.0, left=20.5, side=30.0)  # reaches over the top edge
    zoomed = zoom_in(smooth[None], box, WINDOW)  # 1 x 2 x 64 x 64
    back, (row_slice, col_slice) = zoom_out(zoomed, box, smooth.shape[-2:])
    assert (row_slice, col_slice) == (slice(0, 25), slice(20, 51))
    assert back.shape == (1, 2, 25, 31)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the box's edge pixels are partial
    np.testing.assert_allclose(back[inner][0], smooth[:, row_slice, col_slice][inner[1:]], atol=0.02)


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_a_grown_box_keeps_its_centre(scale: float) -> None:
    box = RoiBox(10.0, 20.0, 8.0).grown(scale)
    assert (box.top + box.side / 2, box.left + box.side / 2, box.side) == (14.0, 24.0, 8.0 * scale)
