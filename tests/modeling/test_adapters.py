from __future__ import annotations

import pytest
import torch

from autoprompt.modeling.adapters import (
    AdaptedEncoderBlock,
    AdaptedTwoWayBlock,
    BottleneckAdapter,
    DepthAdapter3d,
    add_decoder_adapters,
    add_encoder_adapters,
)
from autoprompt.modeling.backbone import load_backbone


def test_bottleneck_adapter_is_identity_at_init_and_trainable():
    adapter = BottleneckAdapter(12, 4)
    x = torch.randn(2, 5, 12)
    assert torch.equal(adapter(x), x)
    adapter(x).pow(2).sum().backward()
    assert adapter.up.weight.grad.abs().sum() > 0


def test_depth_adapter_single_slice_is_identity_even_when_trained():
    adapter = DepthAdapter3d(4, kernel=(3, 3, 3))
    torch.nn.init.normal_(adapter.conv.weight)
    x = torch.randn(5, 4, 6, 6)  # 5 stacks of depth 1
    assert torch.equal(adapter(x, depth=1), x)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (3, 1, 1), (5, 3, 1), (7, 1, 1)])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_depth_adapter_centre_equals_the_centre_slice_of_the_whole_stack(kernel, depth):
    """``centre`` computes only the centre slices, with kernels shorter or longer than the stack."""
    generator = torch.Generator().manual_seed(depth)
    adapter = DepthAdapter3d(4, kernel=kernel)
    with torch.no_grad():
        adapter.conv.weight.copy_(torch.randn(adapter.conv.weight.shape, generator=generator))
        adapter.conv.bias.copy_(torch.randn(4, generator=generator))
    x = torch.randn(2 * depth, 4, 6, 7, generator=generator)  # 2 stacks
    whole = adapter(x, depth=depth).reshape(2, depth, 4, 6, 7)[:, depth // 2]
    torch.testing.assert_close(adapter.centre(x, depth=depth), whole, atol=1e-5, rtol=1e-5)


def test_depth_adapter_mixes_neighbour_slices_by_hand():
    # kernel (3, 1, 1): out[d] = x[d] + w0 * x[d-1] + w1 * x[d] + w2 * x[d+1] + b (zero padding at the ends)
    adapter = DepthAdapter3d(1, kernel=(3, 1, 1))
    with torch.no_grad():
        adapter.conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 3, 1, 1))
        adapter.conv.bias.fill_(0.5)
    slices = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)  # one stack of D=3 slices, 1 x 1 pixels
    out = adapter(slices, depth=3).flatten().tolist()
    assert out == [1 + 10 * 1 + 100 * 2 + 0.5, 2 + 1 * 1 + 10 * 2 + 100 * 3 + 0.5, 3 + 1 * 2 + 10 * 3 + 0.5]


def test_depth_adapter_keeps_stacks_apart():
    adapter = DepthAdapter3d(2, kernel=(3, 1, 1))
    torch.nn.init.normal_(adapter.conv.weight)
    x = torch.randn(4, 2, 3, 3)  # two stacks of depth 2
    changed = x.clone()
    changed[2:] += 1.0  # only the second stack
    assert torch.equal(adapter(x, depth=2)[:2], adapter(changed, depth=2)[:2])


def test_encoder_and_decoder_adapters_wrap_every_transformer_block():
    backbone = load_backbone("tiny")
    backbone.encoder_runtime = "eager"  # the same PyTorch encoder before and after wrapping, compared exactly
    x = torch.rand(2, 3, 256, 256)  # one stack of D = 2 slices
    with torch.no_grad():
        before = backbone.encode(x)
        wrapped = add_encoder_adapters(
            backbone.image_encoder, bottleneck_dim=4, stack_depth=2, depth_kernel=(3, 3, 3)
        )
        after = backbone.encode(x)
    blocks = [m for m in backbone.image_encoder.modules() if isinstance(m, AdaptedEncoderBlock)]
    assert wrapped == len(blocks) == 3  # tiny TinyViT: one block in each of layers 1..3
    assert torch.equal(before, after)
    layers = add_decoder_adapters(backbone.mask_decoder, bottleneck_dim=4)
    assert layers == 1 and isinstance(backbone.mask_decoder.transformer.layers[0], AdaptedTwoWayBlock)
