"""Prompt generators: per class a presence logit, a coarse mask, a box and a class token.

Two kinds share the same heads (:class:`PromptHeads`) and differ in the features they read:

1. :class:`EncoderHeadGenerator` (``encoder_head``, MaskSAM style): a small conv trunk on the image
   embedding ``N x 256 x 64 x 64``; with a frozen encoder it can be trained from cached embeddings.
2. :class:`CoarseUNetGenerator` (``coarse_unet``): a standalone small U-Net (nnU-Net's
   ``PlainConvUNet`` from ``dynamic_network_architectures``) on the input slice ``N x C x 256 x 256``.

Boxes are ``xyxy`` fractions in [0, 1] of the window, with pixel-edge semantics: a mask covering
columns ``c0..c1`` of a ``W``-wide window has ``x_min = c0 / W`` and ``x_max = (c1 + 1) / W``
(:func:`boxes_from_masks`; use it for box targets too).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Prompts:
    """What a prompt generator predicts for N slices and K classes.

    Attributes:
        presence_logits: ``N x K``, is the class in the slice.
        coarse_logits: ``N x K x S x S`` coarse mask logits at the window size S (256).
        boxes: ``N x K x 4`` regressed boxes, ``xyxy`` in [0, 1].
        class_tokens: ``N x K x E`` tokens for SAM's mask decoder (E = 256).
    """

    presence_logits: torch.Tensor
    coarse_logits: torch.Tensor
    boxes: torch.Tensor
    class_tokens: torch.Tensor

    def subset(self, index: torch.Tensor) -> Prompts:
        """The prompts of the slices ``index`` (a ``P`` int64 tensor)."""
        return Prompts(*(getattr(self, field.name)[index] for field in fields(self)))


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of binary masks.

    Args:
        masks: ``... x H x W`` boolean (or 0/1) masks.

    Returns:
        ``... x 4`` boxes ``xyxy`` in [0, 1] (pixel edges, see the module docstring); an empty mask
        gives the whole window ``(0, 0, 1, 1)``.
    """
    masks = masks.bool()
    height, width = masks.shape[-2:]
    rows = masks.any(dim=-1)  # ... x H
    cols = masks.any(dim=-2)  # ... x W
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    y_min = torch.where(rows, row_index, height).amin(dim=-1)
    y_max = torch.where(rows, row_index + 1, 0).amax(dim=-1)
    x_min = torch.where(cols, col_index, width).amin(dim=-1)
    x_max = torch.where(cols, col_index + 1, 0).amax(dim=-1)
    boxes = torch.stack([x_min / width, y_min / height, x_max / width, y_max / height], dim=-1).float()
    empty = ~rows.any(dim=-1)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device)
    return torch.where(empty[..., None], full, boxes)


def exclusive_masks(logits: torch.Tensor) -> torch.Tensor:
    """Per-class masks that share no pixel: each pixel goes to the argmax of (background 0, class logits).

    Args:
        logits: ``N x K x H x W`` per-class logits (coarse masks or SAM mask logits).

    Returns:
        ``N x K x H x W`` boolean; class k holds the pixels where its logit is positive and the largest.
    """
    labels = channel_argmax(torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1), dim=1)  # N x H x W
    return label_masks(labels, logits.shape[1])


def channel_argmax(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """``scores.argmax(dim)``, the same indices (ties to the first), computed along the last dimension of a
    copy with ``dim`` moved last: PyTorch's CPU argmax over a leading dimension of ``N x C x H x W`` maps
    reads them with a stride of ``H * W`` and is several times slower than the copy and a last-dimension
    argmax together."""
    return scores.movedim(dim, -1).contiguous().argmax(dim=-1)


def label_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``N x H x W`` label maps (0 background, 1..K classes) -> ``N x K x H x W`` boolean masks."""
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    return labels[:, None] == classes[None, :, None, None]


def refined_boxes(masks: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Boxes of ``masks`` where a mask has pixels, else the ``previous`` box.

    Args:
        masks: ``N x K x H x W`` boolean.
        previous: ``N x K x 4`` boxes ``xyxy`` in [0, 1].

    Returns:
        ``N x K x 4``.
    """
    empty = ~masks.flatten(2).any(dim=-1)
    return torch.where(empty[..., None], previous, boxes_from_masks(masks))


def _ordered_boxes(raw: torch.Tensor) -> torch.Tensor:
    """``... x 4`` unconstrained values -> ``xyxy`` in [0, 1] with ``min <= max``, smoothly."""
    low = torch.sigmoid(raw[..., :2])
    high = low + (1.0 - low) * torch.sigmoid(raw[..., 2:])
    return torch.cat([low, high], dim=-1)


class PromptHeads(nn.Module):
    """Per-class heads on a feature map.

    Each class attends over the feature map (a softmax over positions); the pooled feature plus a
    learned class embedding goes through an MLP to the presence logit, the box and a modulation of the
    class's learned token. The coarse mask is a 1x1 convolution, resized to the window.

    Args:
        channels: W, channels of the feature map.
        num_classes: K.
        token_dim: E, SAM's prompt token width (256).
        window_size: S, size of the coarse masks returned.
        dropout: dropout on the pooled class features (0: none).
    """

    def __init__(
        self, channels: int, *, num_classes: int, token_dim: int, window_size: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.dropout = nn.Dropout(dropout)
        self.coarse = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.attention = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.class_embedding = nn.Parameter(torch.randn(num_classes, channels) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.GELU())
        self.presence = nn.Linear(channels, 1)
        self.box = nn.Linear(channels, 4)
        self.class_tokens = nn.Parameter(torch.randn(num_classes, token_dim))
        self.token_modulation = nn.Linear(channels, token_dim)
        nn.init.zeros_(self.token_modulation.weight)
        nn.init.zeros_(self.token_modulation.bias)

    def forward(self, features: torch.Tensor) -> Prompts:
        """``N x W x h x w`` features -> :class:`Prompts` for K classes."""
        coarse = self.coarse(features)
        if coarse.shape[-2:] != (self.window_size, self.window_size):
            coarse = F.interpolate(coarse, size=(self.window_size,) * 2, mode="bilinear", align_corners=False)
        weights = self.attention(features).flatten(2).softmax(dim=-1)  # N x K x hw
        pooled = torch.einsum("nkp,ncp->nkc", weights, features.flatten(2))  # N x K x W
        hidden = self.mlp(self.dropout(pooled) + self.class_embedding)
        return Prompts(
            presence_logits=self.presence(hidden).squeeze(-1),
            coarse_logits=coarse,
            boxes=_ordered_boxes(self.box(hidden)),
            class_tokens=self.class_tokens + self.token_modulation(hidden),
        )


class EncoderHeadGenerator(nn.Module):
    """MaskSAM-style generator: a conv trunk on the image embedding, then :class:`PromptHeads`.

    Args:
        embed_dim: channels of the image embedding (256).
        channels: trunk and head width.
        num_classes: K.
        window_size: S (256).
        dropout: channel dropout on the trunk's features and dropout in the heads (0: none).
        context_levels: levels of the :class:`ContextPyramid` after the trunk (0: none).
    """

    needs_images = False

    def __init__(
        self,
        *,
        embed_dim: int,
        channels: int,
        num_classes: int,
        window_size: int,
        dropout: float = 0.0,
        context_levels: int = 0,
    ) -> None:
        super().__init__()
        groups = _group_count(channels)
        self.trunk = nn.Sequential(
            nn.Conv2d(embed_dim, channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.GELU(),
        )
        if context_levels:
            self.trunk.append(ContextPyramid(channels, levels=context_levels))
        self.feature_dropout = nn.Dropout2d(dropout)
        self.heads = PromptHeads(
            channels, num_classes=num_classes, token_dim=embed_dim, window_size=window_size, dropout=dropout
        )

    def forward(self, *, embeddings: torch.Tensor, images: torch.Tensor | None = None) -> Prompts:
        """``embeddings`` ``N x 256 x 64 x 64`` -> :class:`Prompts`; ``images`` is not used."""
        return self.heads(self.feature_dropout(self.trunk(embeddings)))


class ContextPyramid(nn.Module):
    """Wider context for a feature map: ``levels`` stride-2 conv stages down, then back up, each level
    upsampled and added to the one above (a small U-Net with additive skips), residual around the whole.

    The last convolution starts at zero, so a new pyramid leaves its input unchanged until it learns.

    Args:
        channels: W, channels in and out.
        levels: L, number of halvings (a ``h x w`` map goes down to ``h / 2**L x w / 2**L``).
    """

    def __init__(self, channels: int, *, levels: int) -> None:
        super().__init__()
        groups = _group_count(channels)

        def conv_block(stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=stride),
                nn.GroupNorm(groups, channels),
                nn.GELU(),
            )

        self.down = nn.ModuleList(conv_block(2) for _ in range(levels))
        self.up = nn.ModuleList(conv_block(1) for _ in range(levels))
        self.out = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``N x W x h x w`` -> ``N x W x h x w``."""
        skips = [features]
        for down in self.down:
            skips.append(down(skips[-1]))
        context = skips.pop()
        for up, skip in zip(reversed(self.up), reversed(skips), strict=True):
            context = up(
                F.interpolate(context, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
            )
        return features + self.out(context)


class CoarseUNetGenerator(nn.Module):
    """A small U-Net on the input slice (all C channels), then :class:`PromptHeads` at full resolution.

    The U-Net is ``dynamic_network_architectures``' ``PlainConvUNet`` (nnU-Net's 2D network: two 3x3
    conv + InstanceNorm + LeakyReLU per stage, stride-2 downsampling), ending in ``channels`` feature
    maps instead of class scores.

    Args:
        in_channels: C, channels of the preprocessed input.
        features: channels per stage (``len(features)`` stages).
        channels: width of the feature maps given to the heads.
        num_classes: K.
        token_dim: E (256).
        window_size: S (256).
    """

    needs_images = True

    def __init__(
        self,
        *,
        in_channels: int,
        features: tuple[int, ...],
        channels: int,
        num_classes: int,
        token_dim: int,
        window_size: int,
    ) -> None:
        super().__init__()
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        stages = len(features)
        self.unet = PlainConvUNet(
            input_channels=in_channels,
            n_stages=stages,
            features_per_stage=list(features),
            conv_op=nn.Conv2d,
            kernel_sizes=3,
            strides=[1] + [2] * (stages - 1),
            n_conv_per_stage=2,
            num_classes=channels,
            n_conv_per_stage_decoder=2,
            conv_bias=True,
            norm_op=nn.InstanceNorm2d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=False,
        )
        self.act = nn.GELU()
        self.heads = PromptHeads(
            channels, num_classes=num_classes, token_dim=token_dim, window_size=window_size
        )

    def forward(self, *, embeddings: torch.Tensor | None = None, images: torch.Tensor) -> Prompts:
        """``images`` ``N x C x 256 x 256`` in [0, 1] -> :class:`Prompts`; ``embeddings`` is not used."""
        return self.heads(self.act(self.unet(images)))


def _group_count(channels: int) -> int:
    """Largest of 32, 16, 8, 4, 2, 1 dividing ``channels`` (GroupNorm groups)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
