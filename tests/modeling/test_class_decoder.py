from __future__ import annotations

import math

import torch

from autoprompt.modeling.class_decoder import combine_logits, decode_classes


def test_combine_logits_by_hand():
    class_logits = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    presence = torch.tensor([[0.0, 3.0]])
    logits = combine_logits(class_logits, presence)
    log_sigmoid = torch.nn.functional.logsigmoid
    expected = [
        0.0,
        2.0 + log_sigmoid(torch.tensor(0.0)).item(),
        -1.0 + log_sigmoid(torch.tensor(3.0)).item(),
    ]
    assert logits.shape == (1, 3, 1, 1)
    assert torch.allclose(logits.flatten(), torch.tensor(expected))


def test_one_class_softmax_equals_sam_sigmoid_when_present():
    class_logits = torch.randn(2, 1, 4, 4)
    presence = torch.full((2, 1), 30.0)  # surely present
    probabilities = combine_logits(class_logits, presence).softmax(dim=-3)[:, 1:]
    assert torch.allclose(probabilities, class_logits.sigmoid(), atol=1e-6)


def test_absent_class_is_suppressed():
    class_logits = torch.full((1, 2, 2, 2), 5.0)
    presence = torch.tensor([[20.0, -20.0]])
    labels = combine_logits(class_logits, presence).argmax(dim=-3)
    assert bool((labels == 1).all())


def test_batched_decoding_equals_decoding_each_slice_and_class_alone(tiny_backbone):
    torch.manual_seed(0)
    n, k = 2, 3
    embeddings = torch.randn(n, 256, 64, 64)
    boxes = torch.tensor([0.1, 0.2, 0.6, 0.7]).repeat(n, k, 1) + torch.rand(n, k, 1) * 0.2
    coarse = torch.randn(n, k, 256, 256)
    tokens = torch.randn(n, k, 256)
    parts = (tiny_backbone.prompt_encoder, tiny_backbone.mask_decoder)
    with torch.no_grad():
        batched = decode_classes(
            *parts, embeddings, boxes=boxes, coarse_logits=coarse, class_tokens=tokens, output_size=256
        )
        alone = decode_classes(
            *parts,
            embeddings[1:2],
            boxes=boxes[1:2, 2:3],
            coarse_logits=coarse[1:2, 2:3],
            class_tokens=tokens[1:2, 2:3],
            output_size=256,
        )
    assert batched.shape == (n, k, 256, 256)
    assert torch.allclose(batched[1, 2], alone[0, 0], atol=1e-5)
    assert not torch.allclose(batched[1, 2], batched[0, 2], atol=1e-3)  # slices are not mixed up


def test_a_presence_floor_bounds_the_suppression_by_hand():
    class_logits = torch.tensor([4.0, -1.0]).view(1, 2, 1, 1)
    presence = torch.tensor([[-30.0, 5.0]])  # class 1 judged surely absent
    logits = combine_logits(class_logits, presence, presence_floor=0.05)
    expected = [0.0, 4.0 + math.log(0.05), -1.0 + torch.nn.functional.logsigmoid(torch.tensor(5.0)).item()]
    assert torch.allclose(logits.flatten(), torch.tensor(expected))
    assert int(logits.argmax(dim=-3)) == 1  # a confident mask survives an over-confident "absent"
    assert int(combine_logits(class_logits, presence).argmax(dim=-3)) == 0  # without the floor it is erased
