"""Window sampling, cropping and augmentation of training batches (no network involved)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.trainer_config import AugmentationConfig
from pipeline.training.data import (
    BatchDataset,
    TrainingCase,
    WindowSampler,
    build_augmentation,
    crop_window,
    fixed_windows,
)
from pipeline.windows import pad_to_window, window_slicers

WINDOW = (16, 16)


def make_case(
    name: str, shape: tuple[int, int, int], *, label_at: tuple[int, int, int] | None
) -> TrainingCase:
    """A case with data = slice index + 0.01 * row (so crops can be located) and one labelled voxel."""
    s, h, w = shape
    data = (np.arange(s)[:, None, None] + 0.01 * np.arange(h)[None, :, None] + np.zeros((1, 1, w))).astype(
        np.float32
    )
    seg = np.zeros(shape, dtype=np.int16)
    locations = {}
    if label_at is not None:
        seg[label_at] = 2
        locations[2] = np.array([label_at])
    return TrainingCase(name=name, data=data[None] / s, seg=seg, locations=locations)


def test_crop_window_matches_inference_padding() -> None:
    """A window of the centre-padded slice equals the same window cut from pad_to_window's output."""
    import torch

    rng = np.random.default_rng(0)
    for shape in [(10, 7), (16, 16), (20, 9), (35, 40)]:
        array = rng.random((1, *shape)).astype(np.float32)
        padded, _ = pad_to_window(torch.from_numpy(array), WINDOW)
        for top, left in fixed_windows(shape, WINDOW):
            expected = padded[:, top : top + WINDOW[0], left : left + WINDOW[1]].numpy()
            np.testing.assert_array_equal(crop_window(array, top, left, WINDOW), expected)


def test_fixed_windows_are_the_inference_windows() -> None:
    shape = (35, 40)
    expected = [(r.start, c.start) for r, c in window_slicers(shape, WINDOW)]
    assert fixed_windows(shape, WINDOW) == expected
    assert fixed_windows((10, 7), WINDOW) == [(0, 0)]  # smaller than the window: one padded window


@pytest.mark.parametrize("fixed", [False, True])
def test_foreground_oversampling_puts_the_last_third_on_foreground(fixed: bool) -> None:
    cases = [
        make_case("a", (6, 40, 40), label_at=(4, 30, 33)),
        make_case("b", (5, 12, 10), label_at=(1, 3, 4)),
    ]
    sampler = WindowSampler(cases, window=WINDOW, oversample_foreground=0.33, fixed=fixed)
    rng = np.random.default_rng(1)
    for _ in range(20):
        specs = sampler.sample(rng, 6)
        for index, spec in enumerate(specs):
            case = cases[spec.case]
            window_seg = crop_window(np.asarray(case.seg[spec.slice]), spec.top, spec.left, WINDOW)
            if index >= 4:  # round(6 * 0.33) = 2 foreground samples, the last two
                assert (window_seg == 2).any()
            if fixed:
                assert (spec.top, spec.left) == fixed_windows(case.data.shape[-2:], WINDOW)[spec.window_index]


def test_batches_depend_only_on_seed_epoch_and_iteration() -> None:
    cases = [make_case("a", (6, 40, 40), label_at=(4, 30, 33))]
    sampler = WindowSampler(cases, window=WINDOW, oversample_foreground=0.5, fixed=False)
    augmentation = build_augmentation(AugmentationConfig(), WINDOW)

    def batch(epoch: int, iteration: int, seed: int = 3):
        dataset = BatchDataset(
            sampler,
            batch_size=4,
            stack_depth=1,
            seed=seed,
            stream=0,
            epoch=epoch,
            length=5,
            augmentation=augmentation,
        )
        return dataset[iteration]

    first = batch(2, 3)
    np.random.seed(999)  # the global generator's state must not matter
    again = batch(2, 3)
    assert np.array_equal(first.images.numpy(), again.images.numpy())
    assert np.array_equal(first.target.numpy(), again.target.numpy())
    assert not np.array_equal(first.images.numpy(), batch(2, 4).images.numpy())
    assert not np.array_equal(first.images.numpy(), batch(2, 3, seed=4).images.numpy())
    assert first.images.shape == (4, 1, *WINDOW) and first.target.shape == (4, *WINDOW)
    assert 0.0 <= float(first.images.min()) and float(first.images.max()) <= 1.0
    assert set(np.unique(first.target.numpy())) <= {0, 2}


def test_stacks_repeat_edge_slices() -> None:
    case = make_case("a", (4, 16, 16), label_at=None)
    sampler = WindowSampler([case], window=WINDOW, oversample_foreground=0.0, fixed=True)
    dataset = BatchDataset(sampler, batch_size=8, stack_depth=3, seed=0, stream=0, epoch=0, length=1)
    batch = dataset[0]
    assert batch.images.shape == (8, 3, 1, *WINDOW)
    slice_of = (batch.images[:, :, 0, 0, 0] * 4).round().long()  # value at row 0 = slice index / S
    for stack in slice_of.tolist():
        centre = stack[1]
        assert stack == [max(centre - 1, 0), centre, min(centre + 1, 3)]


def test_centre_targets_are_the_labels_of_each_stacks_centre_slice() -> None:
    """For models that decode centre slices: all ``D`` slices of images, the centre slice of labels."""
    case = make_case("a", (4, 16, 16), label_at=None)
    case.seg[:] = np.arange(4, dtype=np.int16)[:, None, None]  # each slice labelled with its index
    sampler = WindowSampler([case], window=WINDOW, oversample_foreground=0.0, fixed=True)
    dataset = BatchDataset(
        sampler, batch_size=8, stack_depth=3, seed=0, stream=0, epoch=0, length=1, centre_target_only=True
    )
    batch = dataset[0]
    assert batch.images.shape == (8, 3, 1, *WINDOW) and batch.target.shape == (8, 1, *WINDOW)
    centre_slice = (batch.images[:, 1, 0, 0, 0] * 4).round().long()
    assert (batch.target[:, 0] == centre_slice[:, None, None]).all()


def test_slice_stride_samples_only_cached_slices() -> None:
    from pipeline.training.data import cached_slices

    assert cached_slices(10, 1).tolist() == list(range(10))
    assert cached_slices(10, 4).tolist() == [2, 6]
    assert cached_slices(1, 4).tolist() == [0]  # too few slices: the middle one
    case = make_case("a", (10, 40, 40), label_at=(3, 30, 33))
    case.seg[6, 5, 5] = 1
    case.locations[1] = np.array([[6, 5, 5]])
    sampler = WindowSampler([case], window=WINDOW, oversample_foreground=0.5, fixed=True, slice_stride=4)
    rng = np.random.default_rng(2)
    seen = {spec.slice for _ in range(30) for spec in sampler.sample(rng, 4)}
    assert seen <= {2, 6} and 6 in seen  # class 2 (slice 3) is not cached, class 1 (slice 6) is
