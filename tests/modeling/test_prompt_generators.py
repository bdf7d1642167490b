from __future__ import annotations

import pytest
import torch

from autoprompt.modeling.prompt_generators import (
    CoarseUNetGenerator,
    ContextPyramid,
    EncoderHeadGenerator,
    boxes_from_masks,
    channel_argmax,
    exclusive_masks,
    refined_boxes,
)


def test_boxes_from_masks_by_hand():
    masks = torch.zeros(3, 4, 8)  # H = 4, W = 8
    masks[0, 1:3, 2:6] = 1  # rows 1..2, cols 2..5
    masks[1, 0, 7] = 1  # one pixel in the top-right corner
    # masks[2] empty -> the whole window
    boxes = boxes_from_masks(masks > 0)
    expected = torch.tensor([[2 / 8, 1 / 4, 6 / 8, 3 / 4], [7 / 8, 0.0, 1.0, 1 / 4], [0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(boxes, expected)


def test_exclusive_masks_give_each_pixel_to_its_most_confident_class_by_hand():
    logits = torch.full((1, 2, 1, 4), -1.0)
    logits[0, 0, 0] = torch.tensor([2.0, 3.0, -1.0, -2.0])
    logits[0, 1, 0] = torch.tensor([1.0, 4.0, 0.5, -3.0])
    masks = exclusive_masks(logits)
    assert masks[0, 0, 0].tolist() == [True, False, False, False]  # pixel 1 goes to the larger class 2
    assert masks[0, 1, 0].tolist() == [False, True, True, False]  # pixel 3: both negative, background


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [1, -3, 0])
def test_channel_argmax_equals_torchs_argmax_ties_included(dtype, dim):
    torch.manual_seed(0)
    scores = torch.randint(-2, 3, (2, 4, 5, 6)).to(dtype)  # few values: many ties
    scores[1, :, 0, 0] = 1.0  # a pixel where every channel ties
    labels = channel_argmax(scores, dim=dim)
    assert torch.equal(labels, scores.argmax(dim=dim))
    assert labels.shape == scores.argmax(dim=dim).shape


def test_refined_boxes_keep_the_previous_box_of_an_empty_mask():
    masks = torch.zeros(1, 2, 4, 8, dtype=torch.bool)
    masks[0, 0, 1:3, 2:6] = True
    previous = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]]])
    boxes = refined_boxes(masks, previous)
    assert torch.allclose(boxes[0, 0], torch.tensor([2 / 8, 1 / 4, 6 / 8, 3 / 4]))
    assert torch.equal(boxes[0, 1], previous[0, 1])


@pytest.mark.parametrize("generator_kind", ["encoder_head", "coarse_unet"])
def test_generators_give_valid_prompts_per_class(generator_kind):
    torch.manual_seed(0)
    if generator_kind == "encoder_head":
        generator = EncoderHeadGenerator(embed_dim=256, channels=16, num_classes=3, window_size=256)
        inputs = {"embeddings": torch.randn(2, 256, 64, 64)}
    else:
        generator = CoarseUNetGenerator(
            in_channels=2, features=(8, 16, 32), channels=16, num_classes=3, token_dim=256, window_size=256
        )
        inputs = {"images": torch.rand(2, 2, 256, 256)}
    with torch.no_grad():
        for module in generator.modules():  # random boxes, not the all-zero initial head
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight)
        prompts = generator(**inputs)
    assert prompts.presence_logits.shape == (2, 3)
    assert prompts.coarse_logits.shape == (2, 3, 256, 256)
    assert prompts.class_tokens.shape == (2, 3, 256)
    boxes = prompts.boxes
    assert boxes.shape == (2, 3, 4)
    assert bool((boxes >= 0).all() and (boxes <= 1).all())
    assert bool((boxes[..., 2:] >= boxes[..., :2]).all())
    # the class tokens differ between classes (learned per-class embeddings)
    assert not torch.allclose(prompts.class_tokens[:, 0], prompts.class_tokens[:, 1])


def test_context_pyramid_starts_as_identity_and_then_sees_the_whole_map():
    torch.manual_seed(0)
    pyramid = ContextPyramid(8, levels=3)
    features = torch.randn(1, 8, 32, 32)
    assert torch.equal(pyramid(features), features)  # a new pyramid changes nothing
    torch.nn.init.normal_(pyramid.out.weight)
    features.requires_grad_(True)
    pyramid(features)[0, :, 0, 0].sum().backward()  # the top-left output position ...
    assert features.grad[0, :, -1, -1].abs().sum() > 0  # ... depends on the bottom-right input position
    assert pyramid(torch.randn(2, 8, 64, 64)).shape == (2, 8, 64, 64)


def test_encoder_head_with_context_levels_has_the_pyramid_and_gives_prompts():
    head = EncoderHeadGenerator(embed_dim=32, channels=16, num_classes=2, window_size=64, context_levels=2)
    assert any(isinstance(module, ContextPyramid) for module in head.modules())
    prompts = head(embeddings=torch.randn(1, 32, 16, 16))
    assert prompts.coarse_logits.shape == (1, 2, 64, 64)
