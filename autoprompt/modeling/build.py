"""Assemble an :class:`AutoPromptSAM` from a :class:`ModelConfig`."""

from __future__ import annotations

import copy

from torch import nn

from autoprompt.modeling.adapters import DepthAdapter3d, add_decoder_adapters, add_encoder_adapters
from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.config import ModelConfig
from autoprompt.modeling.prompt_generators import CoarseUNetGenerator, EncoderHeadGenerator


def load_configured_backbone(config: ModelConfig, *, window: int | None = None) -> SamBackbone:
    """The backbone a model config names, with its checkpoint and checksum setting, built for ``window`` x
    ``window`` inputs (None: the backbone's own size; a plan's ``window_size``)."""
    return load_backbone(
        config.backbone, checkpoint=config.checkpoint, verify=config.verify_checkpoint, window=window
    )


def build_autoprompt_sam(
    config: ModelConfig,
    *,
    num_classes: int,
    in_channels: int,
    stack_depth: int = 1,
    backbone: SamBackbone | None = None,
) -> AutoPromptSAM:
    """Build the network: backbone (frozen), adapters, prompt generator, class-labelled decoding.

    The given ``backbone`` is never changed beyond switching its gradients off: the parts that get
    adapters or are trained (image encoder, mask decoder, prompt encoder) are copied, frozen parts are
    shared, so one loaded backbone can serve several models (e.g. the folds of an ensemble).

    Args:
        config: the model settings.
        num_classes: K foreground classes (labels 1..K; 0 is the background).
        in_channels: C channels of the preprocessed input.
        stack_depth: D slices per stack; 1 for 2d. Depth adapters exist only for D > 1.
        backbone: an already loaded backbone (``config.backbone`` is loaded when None).

    Raises:
        ValueError: invalid sizes, or a backbone whose name differs from ``config.backbone``.
        AutoPromptError: the backbone's weights are missing or corrupted.
    """
    for name, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("stack_depth", stack_depth),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if backbone is None:
        backbone = load_configured_backbone(config)
    elif backbone.name != config.backbone:
        raise ValueError(
            f"the backbone given is '{backbone.name}' but the config asks for '{config.backbone}'"
        )
    backbone.requires_grad_(False)
    backbone.eval()

    depth_adapter = config.depth_adapter if stack_depth > 1 else "none"
    encoder_trains = config.encoder_adapters or depth_adapter == "encoder"
    image_encoder = _own_copy(backbone.image_encoder, encoder_trains)
    prompt_encoder = _own_copy(backbone.prompt_encoder, config.train_prompt_encoder)
    mask_decoder = _own_copy(backbone.mask_decoder, config.decoder_adapters or config.train_decoder)
    if config.train_prompt_encoder:
        _train_used_prompt_encoder_parts(prompt_encoder)
    if config.train_decoder:
        _train_used_mask_decoder_parts(mask_decoder)
    if encoder_trains:
        add_encoder_adapters(
            image_encoder,
            bottleneck_dim=config.adapter_dim if config.encoder_adapters else None,
            stack_depth=stack_depth,
            depth_kernel=config.depth_kernel if depth_adapter == "encoder" else None,
        )
    if config.decoder_adapters:
        add_decoder_adapters(mask_decoder, bottleneck_dim=config.adapter_dim)

    model_backbone = SamBackbone(
        name=backbone.name,
        checksum=backbone.checksum,
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        encoder_image_size=backbone.encoder_image_size,
        imagenet_normalisation=backbone.imagenet_normalisation,
        encoder_runtime="eager" if encoder_trains else config.encoder_runtime,
        runtime_cache_folder=backbone.runtime_cache_folder,
    ).to(backbone.pixel_mean.device)
    window = backbone.model_input_size
    if config.prompt_generator == "encoder_head":
        generator: nn.Module = EncoderHeadGenerator(
            embed_dim=backbone.embed_dim,
            channels=config.head_channels,
            num_classes=num_classes,
            window_size=window,
            dropout=config.head_dropout,
            context_levels=config.head_context_levels,
        )
    else:
        generator = CoarseUNetGenerator(
            in_channels=in_channels,
            features=config.unet_features,
            channels=config.head_channels,
            num_classes=num_classes,
            token_dim=backbone.embed_dim,
            window_size=window,
        )
    return AutoPromptSAM(
        backbone=model_backbone,
        prompt_generator=generator,
        num_classes=num_classes,
        in_channels=in_channels,
        stack_depth=stack_depth,
        depth_adapter=(
            DepthAdapter3d(backbone.embed_dim, kernel=config.depth_kernel)
            if depth_adapter == "embedding"
            else None
        ),
        centre_slice_only=config.decoded_slices == "centre",
        box_source=config.box_source,
        presence_floor=config.presence_floor,
        box_refinement=config.box_refinement,
        refinement_tolerance=config.refinement_tolerance,
        skip_presence_below=config.skip_presence_below,
        inference_region_tokens=config.inference_region_tokens,
    ).to(backbone.pixel_mean.device)


def _own_copy(module: nn.Module, needed: bool) -> nn.Module:
    """A deep copy (still frozen) when the model changes or trains ``module``, else the shared module."""
    return copy.deepcopy(module) if needed else module


def _train_used_prompt_encoder_parts(prompt_encoder: nn.Module) -> None:
    """Unfreeze what box + mask prompts use: the box-corner embeddings and the mask downscaling."""
    for corner in prompt_encoder.point_embeddings[2:4]:
        corner.requires_grad_(True)
    prompt_encoder.mask_downscaling.requires_grad_(True)


def _train_used_mask_decoder_parts(mask_decoder: nn.Module) -> None:
    """Unfreeze the decoder except what single-mask output never uses (IoU head, multimask hypernetworks)."""
    mask_decoder.requires_grad_(True)
    mask_decoder.iou_prediction_head.requires_grad_(False)
    for hypernetwork in mask_decoder.output_hypernetworks_mlps[1:]:
        hypernetwork.requires_grad_(False)
