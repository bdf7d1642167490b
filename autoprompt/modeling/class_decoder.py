"""Class-labelled decoding: every class's prompts through SAM's prompt encoder and mask decoder.

Decisions:

- **Boxes given to SAM are detached.** They come from the prompt generator (regressed head or the
  coarse mask's bounding box, chosen by ``ModelConfig.box_source``) and are trained by their own box
  loss only; gradients through SAM's Fourier box encoding would be noisy and would pull the boxes
  toward whatever helps the decoder rather than toward the object.
- **Coarse masks are not detached.** The dense mask embedding is smooth in its input, so the final
  segmentation loss also shapes the coarse masks, besides their own auxiliary loss.
- The class token joins the sparse prompt tokens after the two box-corner tokens.
- **One decoder call for both decoder kinds.** Both ``MaskDecoder.predict_masks`` start from
  ``src = image embedding + dense prompt embedding``, but they pair images with prompts differently:
  segment-anything's always repeats every image once per prompt (one image, many prompts), LiteMedSAM's
  only when the counts differ. So the image embeddings are added to the dense prompt embeddings here
  (one per prompt) and the decoder gets one zero image: both compute the same ``src`` for ``N*K`` prompts.
  The same holds for any subset of the prompts, so skipping classes (``keep``) decodes the kept ones as
  one smaller batch, each prompt with its own slice's embedding.
- **At bf16 on a CPU the decoder runs in bf16** without autocast (:mod:`autoprompt.modeling.low_precision`:
  a bf16 copy for inference, the weights cast in the graph for training): the same rounding of the products
  as bf16 autocast, without converting every activation between fp32 and bf16. fp32 and CUDA run it as is.
- **A decoder region trains on part of the window** (:class:`DecoderRegion`, training only): the decoder's
  cost grows with the number of image tokens, so each slice may be decoded on a ``t x t`` square of its
  ``G x G`` embedding only, as if the slice were moved so that its square lies in the window's centre:
  the image embedding and the coarse mask are cropped to the square, the dense positional encoding is
  the centre square's (one for every prompt, as the decoders take one), and the boxes move with the
  slice. The decoder then attends within the square only; the logits cover the square's pixels
  (:meth:`DecoderRegion.crop` of the window).
- The background logit is 0 and class k's logit is its SAM mask logit plus ``logsigmoid(presence_k)``,
  so for one class the softmax equals SAM's sigmoid, and a class judged absent is suppressed. With a
  presence floor ``f`` the suppression is at most ``log f``: presence learnt from a few patients can
  tip uncertain pixels, but cannot erase a mask the decoder is confident of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprompt.modeling.low_precision import low_precision_dtype, run_in_low_precision

ABSENT_LOGIT = -1.0e4
"""The mask logit of a class that is not decoded (:func:`decode_classes` with ``keep``): absent from any
label map, and finite in fp16 and bf16, so a softmax over it is 0, never NaN."""


@dataclass(frozen=True)
class DecoderRegion:
    """A ``tokens x tokens`` square of each slice's ``grid x grid`` image embedding that the decoder sees.

    Attributes:
        offsets: ``N x 2`` int64 (row, column) of each slice's square's first token, in ``0..grid-tokens``.
        tokens: t, the side of the square in embedding tokens.
        grid: G, the side of the embedding in tokens (64 for SAM and LiteMedSAM).
    """

    offsets: torch.Tensor
    tokens: int
    grid: int

    def crop(self, maps: torch.Tensor) -> torch.Tensor:
        """``N x ... x H x W`` maps of the window (H = W, a multiple of G) -> ``N x ... x h x h`` the square's
        pixels, ``h = H * tokens / grid``."""
        size = maps.shape[-1]
        if maps.shape[-2] != size or size % self.grid:
            raise ValueError(
                f"maps of shape {tuple(maps.shape)} are not square multiples of the {self.grid} grid"
            )
        scale = size // self.grid
        side = self.tokens * scale
        starts = (self.offsets.cpu() * scale).tolist()  # no read-back in training: offsets are on the host
        return torch.stack(
            [map_[..., r : r + side, c : c + side] for map_, (r, c) in zip(maps, starts, strict=True)]
        )

    @property
    def centre(self) -> int:
        """The first token (row and column) of the window's centre square."""
        return (self.grid - self.tokens) // 2

    def moved_boxes(self, boxes: torch.Tensor, frame_size: int) -> torch.Tensor:
        """``N x 4`` boxes ``xyxy`` in pixels of a ``frame_size`` frame, moved as each slice is moved to put its
        square on the centre square."""
        shift = (self.centre - self.offsets.to(boxes.device, boxes.dtype)) * (frame_size / self.grid)
        return boxes + shift.flip(-1).repeat(1, 2)  # (row, column) -> (x, y, x, y)

    def select(self, index: torch.Tensor) -> DecoderRegion:
        """The region of the slices ``index`` (a ``P`` int64 tensor)."""
        return DecoderRegion(self.offsets[index.to(self.offsets.device)], self.tokens, self.grid)

    def paste(self, squares: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Write ``N x ... x s x s`` squares (what :meth:`crop` cuts) into ``N x ... x S x S`` windows, in place."""
        scale = windows.shape[-1] // self.grid
        side = self.tokens * scale
        for window, square, (r, c) in zip(
            windows, squares, (self.offsets.cpu() * scale).tolist(), strict=True
        ):
            window[..., r : r + side, c : c + side] = square
        return windows


def centred_offsets(boxes: torch.Tensor, *, tokens: int, grid: int) -> torch.Tensor:
    """``N x 4`` boxes ``xyxy`` in [0, 1] -> ``N x 2`` int64 (row, column) of the first token of a
    ``tokens x tokens`` square centred on each box, not yet kept inside the ``grid x grid`` embedding."""
    centre = torch.stack([boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]], dim=-1) * (grid / 2)
    return torch.round(centre - tokens / 2).long()


def regions_around(boxes: torch.Tensor, *, tokens: int, grid: int) -> tuple[torch.Tensor, DecoderRegion]:
    """Squares for decoding at inference: around each slice's foreground box, where it fits.

    Args:
        boxes: ``N x 4`` each slice's foreground box ``xyxy`` in [0, 1]; an empty foreground as ``(0, 0, 1, 1)``
            (which never fits).
        tokens: t, the side of the squares, less than G; grid: G, the side of the embedding (in tokens).

    Returns:
        ``fits``, ``N`` bool: the box with a margin of ``t // 8`` tokens on each side fits a ``t x t`` square;
        and the :class:`DecoderRegion` of those slices (``fits.sum()`` offsets), centred on their boxes.
    """
    extent = (boxes[:, 2:] - boxes[:, :2]).amax(dim=-1) * grid
    fits = extent + 2 * (tokens // 8) <= tokens
    offsets = centred_offsets(boxes[fits], tokens=tokens, grid=grid).clamp(0, grid - tokens)
    return fits, DecoderRegion(offsets.cpu(), tokens, grid)


def decode_classes(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embeddings: torch.Tensor,
    *,
    boxes: torch.Tensor,
    coarse_logits: torch.Tensor,
    class_tokens: torch.Tensor,
    output_size: int,
    keep: torch.Tensor | None = None,
    region: DecoderRegion | None = None,
) -> torch.Tensor:
    """Decode K classes per slice as one batch of ``N*K`` prompts (or of the ``keep`` pairs) through SAM.

    Args:
        prompt_encoder: SAM's ``PromptEncoder`` (segment-anything's or LiteMedSAM's).
        mask_decoder: SAM's ``MaskDecoder`` (segment-anything's or LiteMedSAM's, possibly with adapters).
        embeddings: ``N x 256 x 64 x 64`` image embeddings.
        boxes: ``N x K x 4`` boxes ``xyxy`` in [0, 1] of the window (detached here).
        coarse_logits: ``N x K x h x w`` coarse mask logits (resized to the prompt encoder's mask input).
        class_tokens: ``N x K x 256`` one token per class.
        output_size: S, the window size of the returned logits.
        keep: ``N x K`` bool, the (slice, class) pairs to decode, as one batch of ``keep.sum()`` prompts;
            the others get :data:`ABSENT_LOGIT` everywhere. None decodes every pair.
        region: decode each slice on its square only (see "A decoder region" above); None: the whole window.

    Returns:
        ``N x K x S x S`` per-class mask logits; with a region ``N x K x s x s``, the square's pixels
        (``s = S * tokens / grid``).
    """
    n, k = boxes.shape[:2]
    if region is not None:
        output_size = output_size * region.tokens // region.grid
    if keep is None:  # every pair, slice-major, indexed without reading anything back from the device
        slices = torch.arange(n, device=boxes.device)[:, None].expand(n, k).reshape(-1)
        classes = torch.arange(k, device=boxes.device).repeat(n)
        region_slices = torch.arange(n)[:, None].expand(n, k).reshape(-1)
    else:
        slices, classes = keep.nonzero(as_tuple=True)  # slice-major: a full keep gives the N*K order
        region_slices = slices
    if len(slices) == 0:
        return embeddings.new_full((n, k, output_size, output_size), ABSENT_LOGIT)
    if region is not None:  # each slice's square once, before it is repeated for its K prompts
        embeddings = region.crop(embeddings)
    decoded = _decode_prompts(
        prompt_encoder,
        mask_decoder,
        embeddings[slices],
        boxes=boxes[slices, classes],
        coarse_logits=coarse_logits[slices, classes],
        class_tokens=class_tokens[slices, classes],
        output_size=output_size,
        region=None if region is None else region.select(region_slices),
    )
    if len(slices) == n * k:
        return decoded.reshape(n, k, output_size, output_size)
    logits = decoded.new_full((n, k, output_size, output_size), ABSENT_LOGIT)
    logits[slices, classes] = decoded
    return logits


def _decode_prompts(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embeddings: torch.Tensor,
    *,
    boxes: torch.Tensor,
    coarse_logits: torch.Tensor,
    class_tokens: torch.Tensor,
    output_size: int,
    region: DecoderRegion | None = None,
) -> torch.Tensor:
    """P prompts, each with its own image embedding, through one decoder call.

    Args:
        embeddings: ``P x 256 x 64 x 64`` the image embedding of each prompt's slice; with a region
            ``P x 256 x t x t``, already cut to its square.
        boxes: ``P x 4`` boxes ``xyxy`` in [0, 1] of the window (detached here).
        coarse_logits: ``P x h x w``.
        class_tokens: ``P x 256``.
        output_size: S, or the square's pixels with a region.
        region: the square of each prompt's slice (``P`` offsets), or None.

    Returns:
        ``P x S x S`` mask logits (``P x s x s`` with a region).
    """
    frame_h, frame_w = prompt_encoder.input_image_size
    scale = boxes.new_tensor([frame_w, frame_h, frame_w, frame_h])
    masks = coarse_logits[:, None]
    mask_size = tuple(prompt_encoder.mask_input_size)
    if tuple(masks.shape[-2:]) != mask_size:
        masks = F.interpolate(masks, size=mask_size, mode="bilinear", align_corners=False)
    image_pe = prompt_encoder.get_dense_pe()
    boxes = boxes.detach() * scale
    if region is not None:  # see "A decoder region" above
        masks = region.crop(masks)
        start, end = region.centre, region.centre + region.tokens
        image_pe = image_pe[..., start:end, start:end]
        boxes = region.moved_boxes(boxes, frame_w)
    sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=masks)
    sparse = torch.cat([sparse, class_tokens[:, None].to(sparse.dtype)], dim=1)
    dense = dense + embeddings  # see "One decoder call" above
    decoder_inputs = {
        "image_embeddings": dense.new_zeros(1, *dense.shape[1:]),
        "image_pe": image_pe,
        "sparse_prompt_embeddings": sparse,
        "dense_prompt_embeddings": dense,
        "multimask_output": False,
    }
    dtype = low_precision_dtype(dense.device)
    if dtype is None:
        logits, _ = mask_decoder(**decoder_inputs)
    else:  # see "At bf16 on a CPU" above
        logits, _ = run_in_low_precision(mask_decoder, dtype, **decoder_inputs)
    if logits.shape[-1] != output_size or logits.shape[-2] != output_size:
        logits = F.interpolate(logits, size=(output_size, output_size), mode="bilinear", align_corners=False)
    return logits[:, 0]


def combine_logits(
    class_logits: torch.Tensor, presence_logits: torch.Tensor, *, presence_floor: float = 0.0
) -> torch.Tensor:
    """Background + presence-suppressed class logits for a softmax over labels.

    Args:
        class_logits: ``... x K x H x W`` per-class mask logits.
        presence_logits: ``... x K``.
        presence_floor: in [0, 1); the suppression is at most ``log(presence_floor)`` (0: unbounded).

    Returns:
        ``... x (K+1) x H x W``: channel 0 is the background (logit 0), channel k is
        ``class_logits[k] + max(logsigmoid(presence_logits[k]), log(presence_floor))``.
    """
    gate = F.logsigmoid(presence_logits)
    if presence_floor > 0:
        gate = gate.clamp(min=math.log(presence_floor))
    suppressed = class_logits + gate[..., None, None]
    background = torch.zeros_like(suppressed[..., :1, :, :])
    return torch.cat([background, suppressed], dim=-3)
