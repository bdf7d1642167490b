from __future__ import annotations

import math

import torch

from autoprompt.modeling.class_decoder import DecoderRegion, combine_logits, decode_classes, regions_around


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


def _decode(backbone, embeddings, boxes, coarse, tokens, region=None):
    with torch.no_grad():
        return decode_classes(
            backbone.prompt_encoder,
            backbone.mask_decoder,
            embeddings,
            boxes=boxes,
            coarse_logits=coarse,
            class_tokens=tokens,
            output_size=256,
            region=region,
        )


def test_a_region_of_the_whole_grid_decodes_the_whole_window(tiny_backbone):
    torch.manual_seed(1)
    embeddings, coarse = torch.randn(2, 256, 64, 64), torch.randn(2, 3, 256, 256)
    boxes, tokens = torch.tensor([0.1, 0.2, 0.6, 0.7]).repeat(2, 3, 1), torch.randn(2, 3, 256)
    whole = DecoderRegion(torch.zeros(2, 2, dtype=torch.int64), tokens=64, grid=64)
    expected = _decode(tiny_backbone, embeddings, boxes, coarse, tokens)
    assert torch.equal(_decode(tiny_backbone, embeddings, boxes, coarse, tokens, whole), expected)


def test_a_square_decodes_as_the_same_square_moved_to_the_centre(tiny_backbone):
    """Decoding slice A on its square at (8, 30) = decoding slice B, which holds A's square in the centre
    square (tokens 20..43) and its boxes moved with it."""
    torch.manual_seed(2)
    t, (row, column), centre = 24, (8, 30), 20
    a_embedding, a_coarse = torch.randn(1, 256, 64, 64), torch.randn(1, 2, 256, 256)
    b_embedding, b_coarse = torch.randn(1, 256, 64, 64), torch.randn(1, 2, 256, 256)
    b_embedding[..., centre : centre + t, centre : centre + t] = a_embedding[
        ..., row : row + t, column : column + t
    ]
    b_coarse[..., 4 * centre : 4 * (centre + t), 4 * centre : 4 * (centre + t)] = a_coarse[
        ..., 4 * row : 4 * (row + t), 4 * column : 4 * (column + t)
    ]
    a_boxes = torch.tensor([[[0.5, 0.05, 0.7, 0.3], [0.45, 0.1, 0.6, 0.2]]])
    shift = torch.tensor([centre - column, centre - row, centre - column, centre - row]) / 64
    tokens = torch.randn(1, 2, 256)
    a_region = DecoderRegion(torch.tensor([[row, column]]), tokens=t, grid=64)
    b_region = DecoderRegion(torch.tensor([[centre, centre]]), tokens=t, grid=64)
    a_square = _decode(tiny_backbone, a_embedding, a_boxes, a_coarse, tokens, a_region)
    b_square = _decode(tiny_backbone, b_embedding, a_boxes + shift, b_coarse, tokens, b_region)
    assert a_square.shape == (1, 2, 4 * t, 4 * t)
    assert torch.allclose(a_square, b_square, atol=1e-4)
    moved_elsewhere = DecoderRegion(torch.tensor([[row + 1, column]]), tokens=t, grid=64)
    assert not torch.allclose(
        _decode(tiny_backbone, a_embedding, a_boxes, a_coarse, tokens, moved_elsewhere), a_square, atol=1e-3
    )


def test_a_region_crops_each_slice_at_its_own_offset():
    maps = torch.arange(2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    region = DecoderRegion(torch.tensor([[0, 1], [2, 3]]), tokens=2, grid=8)  # 2 pixels per token
    cropped = region.crop(maps)
    assert cropped.shape == (2, 3, 4, 4)
    assert torch.equal(cropped[0], maps[0, :, 0:4, 2:6])
    assert torch.equal(cropped[1], maps[1, :, 4:8, 6:10])


def test_paste_writes_back_what_crop_cut():
    maps = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    region = DecoderRegion(torch.tensor([[0, 1], [2, 3]]), tokens=2, grid=8)
    pasted = region.paste(region.crop(maps), torch.zeros_like(maps))
    inside = region.paste(torch.ones(2, 3, 4, 4), torch.zeros_like(maps)).bool()
    assert int(inside.sum()) == 2 * 3 * 16
    assert torch.equal(pasted[inside], maps[inside]) and not pasted[~inside].any()


def test_regions_around_centre_fitting_boxes_and_leave_the_others_whole():
    boxes = torch.tensor(
        [
            [0.4, 0.3, 0.6, 0.5],  # 12.8 tokens + 2 x 4 margin fit 32: centred on (25.6, 32) -> (10, 16)
            [0.0, 0.0, 0.1, 0.05],  # fits, at the corner: kept inside the grid
            [0.1, 0.1, 0.5, 0.3],  # 25.6 tokens wide: with the margins more than 32
            [0.0, 0.0, 1.0, 1.0],  # an empty foreground
        ]
    )
    fits, region = regions_around(boxes, tokens=32, grid=64)
    assert fits.tolist() == [True, True, False, False]
    assert region.offsets.tolist() == [[10, 16], [0, 0]] and (region.tokens, region.grid) == (32, 64)
