"""The pure sliding-window and TTA functions with small stand-in networks whose answers are known."""

from __future__ import annotations

import pytest
import torch

from pipeline.inference.sliding_window import (
    gaussian_importance,
    sliding_window_predict,
    sliding_window_slabs,
)
from pipeline.inference.tta import mirror_combinations, with_mirroring
from pipeline.windows import stack_indices, window_slicers

WINDOW = (64, 64)


def pointwise_probabilities(images: torch.Tensor) -> torch.Tensor:
    """``B x 1 x h x w`` in [0, 1] -> ``B x 3 x h x w``: a softmax of logits computed voxel by voxel."""
    x = images[:, 0]
    logits = torch.stack([2.0 - 4.0 * x, 3.0 * x, 6.0 * (x - 0.5) ** 2], dim=1)
    return torch.softmax(logits, dim=1)


def pointwise_fn(images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
    """A window_fn predicting every slice of every stack pointwise: ``B x D x 3 x h x w``."""
    flat = pointwise_probabilities(images[stacks.flatten()])
    return flat.view(*stacks.shape, *flat.shape[1:])


def test_stack_indices_repeat_the_edge_slices() -> None:
    expected = torch.tensor([[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    assert torch.equal(stack_indices(4, 3), expected)
    assert torch.equal(stack_indices(3, 1), torch.tensor([[0], [1], [2]]))
    with pytest.raises(ValueError, match="odd"):
        stack_indices(4, 2)


def test_window_slicers_cover_a_larger_slice_with_overlap() -> None:
    slicers = window_slicers((100, 64), WINDOW, step_size=0.5)
    assert [(rows.start, rows.stop) for rows, _ in slicers] == [(0, 64), (18, 82), (36, 100)]
    assert all((cols.start, cols.stop) == (0, 64) for _, cols in slicers)
    with pytest.raises(ValueError, match="smaller than the window"):
        window_slicers((50, 64), WINDOW)


@pytest.mark.parametrize("shape", [(3, 40, 30), (2, 150, 97), (2, 64, 64)])
def test_pointwise_model_gives_the_whole_slice_answer(shape: tuple[int, int, int]) -> None:
    """Padding (smaller slices) and Gaussian-blended windows (larger ones) change nothing for a pointwise model."""
    data = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))
    result = sliding_window_predict(data, pointwise_fn, num_outputs=3, window=WINDOW)
    expected = pointwise_probabilities(data.transpose(0, 1)).transpose(0, 1)
    assert result.shape == (3, *shape)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("num_slices", "depth", "chunk"), [(9, 3, 2), (9, 5, 1), (2, 5, 16)])
def test_3d_stacks_give_every_slice_its_own_prediction(num_slices: int, depth: int, chunk: int) -> None:
    """Stacks gathered in chunks, blended along depth: a pointwise model still gives each slice's own answer."""
    data = torch.rand(1, num_slices, 20, 24, generator=torch.Generator().manual_seed(1))
    result = sliding_window_predict(
        data, pointwise_fn, num_outputs=3, window=WINDOW, depth=depth, chunk_stacks=chunk
    )
    expected = pointwise_probabilities(data.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 16])
def test_a_slices_own_stack_counts_most(chunk: int) -> None:
    """A model that answers class 1 at a stack's centre and class 0 elsewhere: each slice gets 1 / (1 + 2a),
    a being the Gaussian weight of a stack's edge relative to its centre (D = 3), also when a slice's stacks
    fall into different chunks."""

    def centre_is_one(images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*stacks.shape, 2, *images.shape[-2:])
        out[:, :, 0] = 1.0
        out[:, stacks.shape[1] // 2] = torch.tensor([0.0, 1.0])[:, None, None]
        return out

    result = sliding_window_predict(
        torch.rand(1, 6, 8, 8), centre_is_one, num_outputs=2, window=WINDOW, depth=3, chunk_stacks=chunk
    )
    gaussian = gaussian_importance((3, *WINDOW))
    edge = (gaussian[0, 32, 32] / gaussian[1, 32, 32]).item()
    assert 0 < edge < 0.1
    torch.testing.assert_close(result[1], torch.full((6, 8, 8), 1 / (1 + 2 * edge)))
    torch.testing.assert_close(result.sum(dim=0), torch.ones(6, 8, 8))


@pytest.mark.parametrize(("num_slices", "depth", "chunk"), [(9, 3, 2), (7, 5, 16), (2, 5, 1)])
def test_centre_only_gives_each_slice_the_centre_answer_of_its_own_stack(num_slices, depth, chunk) -> None:
    """A window_fn that predicts only the centre slices (``B x 1 x ...``): each slice takes its own stack's
    answer, unblended along depth; here the answer names the stack's centre slice."""

    def own_centre(images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        centres = images[stacks[:, depth // 2], 0, 32, 32]  # the slice index the data holds (window centre)
        out = torch.zeros(len(stacks), 1, 2, *images.shape[-2:])
        out[:, 0, 1] = centres[:, None, None] / num_slices
        out[:, 0, 0] = 1 - out[:, 0, 1]
        return out

    data = torch.arange(num_slices, dtype=torch.float32).view(1, num_slices, 1, 1).expand(1, num_slices, 8, 8)
    result = sliding_window_predict(
        data, own_centre, num_outputs=2, window=WINDOW, depth=depth, chunk_stacks=chunk, centre_only=True
    )
    expected = (torch.arange(num_slices, dtype=torch.float32) / num_slices).view(-1, 1, 1).expand(-1, 8, 8)
    torch.testing.assert_close(result[1], expected)


def test_slabs_come_as_soon_as_their_slices_are_finished() -> None:
    """Each slice is handed back once the stacks reaching it (centred up to D // 2 slices past it) are
    predicted, before later chunks run: the accumulator never holds the whole case."""
    data = torch.rand(1, 9, 20, 24, generator=torch.Generator().manual_seed(2))
    centres_seen: list[int] = []

    def recording_fn(images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        centres_seen.append(len(stacks))
        return pointwise_fn(images, stacks)

    slabs = []
    for first, slab in sliding_window_slabs(
        data, recording_fn, num_outputs=3, window=WINDOW, depth=5, chunk_stacks=2
    ):
        slabs.append((first, slab.shape[1], sum(centres_seen)))
        assert slab.dtype == torch.float32 and slab.shape == (3, slab.shape[1], 20, 24)
    # (first slice, slices, stacks predicted so far): slices 0-1 need the stacks centred up to 3
    assert slabs == [(0, 2, 4), (2, 2, 6), (4, 2, 8), (6, 3, 9)]


def test_mirror_combinations_are_the_four_in_plane_flips() -> None:
    assert mirror_combinations() == [(), (-2,), (-1,), (-2, -1)]


def test_tta_with_a_flip_equivariant_model_changes_nothing() -> None:
    """A pointwise model on a non-symmetric input (a ramp): TTA must flip every prediction back."""
    ramp = torch.linspace(0, 1, 64 * 48).view(1, 1, 64, 48)
    data = torch.cat([ramp, ramp.flip(-1) ** 2], dim=1)  # 1 x 2 slices x 64 x 48
    plain = sliding_window_predict(data, pointwise_fn, num_outputs=3, window=WINDOW)
    mirrored = sliding_window_predict(data, with_mirroring(pointwise_fn), num_outputs=3, window=WINDOW)
    torch.testing.assert_close(mirrored, plain, atol=1e-6, rtol=1e-6)


def test_tta_averages_unmirrored_predictions_of_a_position_dependent_model() -> None:
    """A model that ignores its input and predicts class 1 more to the right: mirrored halves average to 0.5."""
    calls = []

    def rightward(images: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        calls.append(images[0, 0, 0, -1].item())
        width = images.shape[-1]
        right = torch.linspace(0, 1, width).expand(len(stacks), 1, 1, images.shape[-2], width)
        return torch.cat([1 - right, right], dim=2)

    images = torch.linspace(0, 1, 8).expand(1, 1, 8, 8).contiguous()
    result = with_mirroring(rightward)(images, torch.tensor([[0]]))
    torch.testing.assert_close(result, torch.full((1, 1, 2, 8, 8), 0.5))
    assert calls == [1.0, 1.0, 0.0, 0.0]  # the original, row flip, column flip, both: inputs really flipped
