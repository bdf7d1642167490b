"""Decoder regions: squares of the embedding around each window's labels, inside the window."""

from __future__ import annotations

import torch

from autoprompt.modeling.autoprompt_sam import AutoPromptOutput
from autoprompt.modeling.class_decoder import DecoderRegion
from pipeline.trainer_config import LossConfig
from pipeline.training.decoder_regions import decoder_regions
from pipeline.training.losses import AutoPromptLoss


def test_the_square_holds_a_small_label_and_stays_inside_the_window():
    target = torch.zeros(3, 256, 256, dtype=torch.int64)
    target[0, 100:120, 60:90] = 1  # a small object: inside its square whatever the jitter
    target[1, 0:8, 240:256] = 2  # in a corner: the square is clamped to the window
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        region = decoder_regions(target, num_classes=2, tokens=16, grid=64, generator=generator)
        assert region.offsets.shape == (3, 2)
        assert bool(((region.offsets >= 0) & (region.offsets <= 48)).all())  # the empty window too
        squares = region.crop(target)
        assert squares.shape == (3, 64, 64)
        assert int((squares[0] == 1).sum()) == 20 * 30
        assert int(region.offsets[1, 0]) <= 2 and int(region.offsets[1, 1]) == 48


def test_the_same_generator_seed_gives_the_same_squares():
    target = torch.randint(0, 3, (4, 256, 256))
    first = decoder_regions(
        target, num_classes=2, tokens=32, grid=64, generator=torch.Generator().manual_seed(5)
    )
    again = decoder_regions(
        target, num_classes=2, tokens=32, grid=64, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(first.offsets, again.offsets)


def test_the_segmentation_loss_scores_the_squares_and_the_prompt_terms_the_window():
    torch.manual_seed(0)
    k, n = 2, 2
    target = torch.zeros(n, 64, 64, dtype=torch.int64)
    target[:, 10:20, 30:40] = 1
    target[:, 40:50, 5:15] = 2  # outside the squares below: only the prompt terms see class 2
    region = DecoderRegion(torch.tensor([[2, 6], [3, 7]]), tokens=4, grid=16)  # 4 pixels per token
    square_logits = torch.randn(n, k + 1, 16, 16)
    window_parts = {
        "coarse_logits": torch.randn(n, k, 64, 64),
        "boxes": torch.rand(n, k, 4).sort(dim=-1).values,
        "presence_logits": torch.randn(n, k),
    }
    loss = AutoPromptLoss(k, LossConfig())
    with_region = loss(
        AutoPromptOutput(square_logits, square_logits[:, 1:], **window_parts, decoder_region=region), target
    )
    on_squares = loss(
        AutoPromptOutput(square_logits, square_logits[:, 1:], **_resized(window_parts)), region.crop(target)
    )
    assert torch.allclose(with_region["ce_dice"], on_squares["ce_dice"])
    whole = loss(
        AutoPromptOutput(torch.randn(n, k + 1, 64, 64), torch.randn(n, k, 64, 64), **window_parts), target
    )
    for term in ("coarse", "box", "presence"):
        assert torch.allclose(with_region[term], whole[term])

    ignored = target.clone()
    ignored[:, 0:4, 0:4] = k + 1  # the ignore label, outside the squares: the same segmentation term
    masked = loss(
        AutoPromptOutput(square_logits, square_logits[:, 1:], **window_parts, decoder_region=region), ignored
    )
    assert torch.allclose(masked["ce_dice"], with_region["ce_dice"], atol=1e-5)


def _resized(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The window parts at the squares' size (only their shapes matter for ``ce_dice``)."""
    return {**parts, "coarse_logits": parts["coarse_logits"][..., :16, :16]}
