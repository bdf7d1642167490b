"""Per-class brightness augmentation: each class scaled on its own, by one factor for all slices of a stack."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion

from pipeline.training.class_intensity import ClassIntensityTransform
from pipeline.training.data import run_seeded


def two_squares(samples: int = 2, slices: int = 3, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``samples x (slices*channels) x 40 x 40`` images of 0.4 with label 1 and label 2 squares."""
    seg = np.zeros((samples, slices, 40, 40), dtype=np.float32)
    seg[:, :, 4:16, 4:16] = 1
    seg[:, :, 22:36, 20:34] = 2
    return np.full((samples, slices * channels, 40, 40), 0.4, dtype=np.float32), seg


def test_each_class_gets_one_factor_for_all_its_slices_and_the_background_keeps_its_values() -> None:
    data, seg = two_squares()
    out = run_seeded(ClassIntensityTransform((0.3, 2.0), p_per_class=1.0), 3, data=data.copy(), seg=seg)[
        "data"
    ]
    factors = set()
    for sample in range(2):
        for label in (1, 2):
            interior = binary_erosion(seg[sample, 0] == label, iterations=4)
            values = out[sample][:, interior] / 0.4
            assert np.allclose(values, values.flat[0], rtol=1e-5)  # every slice and channel alike
            assert 0.3 <= values.flat[0] <= 2.0 and abs(values.flat[0] - 1) > 1e-3
            factors.add(round(float(values.flat[0]), 5))
        far = binary_erosion(seg[sample, 0] == 0, iterations=9)
        np.testing.assert_array_equal(out[sample][:, far], np.float32(0.4))
    assert len(factors) == 4  # drawn per sample and class


def test_with_probability_zero_nothing_changes() -> None:
    data, seg = two_squares()
    out = run_seeded(ClassIntensityTransform((0.3, 2.0), p_per_class=0.0), 3, data=data.copy(), seg=seg)
    np.testing.assert_array_equal(out["data"], data)
