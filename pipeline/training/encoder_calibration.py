"""Calibration windows for the int8 image encoder: windows of the training cases, spread evenly.

The int8 encoder (:mod:`autoprompt.modeling.encoder_quantization`) learns its activation ranges from
these; they are windows exactly as inference cuts them (:func:`pipeline.training.data.fixed_windows`), taken
at evenly spaced places of the list of every (case, slice, window), so every part of the training set counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autoprompt.modeling.autoprompt_sam import to_three_channels
from autoprompt.modeling.backbone import SamBackbone
from autoprompt.modeling.encoder_quantization import CALIBRATION_WINDOWS, quantize_encoder
from pipeline.training.data import TrainingCase, crop_window, fixed_windows


def calibration_windows(cases: Sequence[TrainingCase], window: Sequence[int], count: int) -> np.ndarray:
    """``min(count, all windows)`` windows of ``cases``, ``N x C x h x w`` float32 in [0, 1]."""
    places = [
        (case, index, corner)
        for case in cases
        for index in range(case.num_slices)
        for corner in fixed_windows(case.data.shape[-2:], window)
    ]
    if not places:
        raise ValueError("calibration windows need at least one training case")
    picks = np.linspace(0, len(places) - 1, min(count, len(places))).round().astype(int)
    return np.stack(
        [
            crop_window(np.asarray(case.data[:, index], dtype=np.float32), *corner, window)
            for case, index, corner in (places[pick] for pick in picks)
        ]
    )


def encoder_inputs(backbone: SamBackbone, windows: np.ndarray) -> np.ndarray:
    """``N x C x S x S`` windows in [0, 1] -> ``N x 3 x S x S`` float32 as ``backbone``'s encoder takes them."""
    with torch.no_grad():
        images = to_three_channels(torch.from_numpy(windows).to(backbone.pixel_mean.device))
        return backbone.encoder_input(images).float().cpu().numpy()


def quantize_on_cases(
    backbone: SamBackbone, cases: Sequence[TrainingCase], window: Sequence[int], folder: Path
) -> tuple[Path, int]:
    """``backbone``'s frozen encoder quantised into ``folder`` on :data:`CALIBRATION_WINDOWS` windows of
    ``cases`` (:func:`calibration_windows`); the ``encoder.xml`` written and the number of windows used."""
    windows = calibration_windows(cases, window, CALIBRATION_WINDOWS)
    return quantize_encoder(backbone.image_encoder, encoder_inputs(backbone, windows), folder), len(windows)
