"""AutoPromptSAM: a frozen SAM backbone, adapters and a prompt generator, segmenting K classes with no clicks.

Input channels: the model takes C preprocessed channels in [0, 1]. The SAM encoder needs 3: one channel
is repeated, three are used as they are, any other number is averaged and the mean repeated. The
``coarse_unet`` prompt generator sees all C channels. Windows are ``SamBackbone.model_input_size``
square (the backbone's own encoder input: 256 for LiteMedSAM, 1024 for SAM/MedSAM ViT).

Leading dimensions ``L``: ``(B,)`` for 2d inputs ``B x C x S x S``, ``(B, D)`` for stacks
``B x D x C x S x S`` (D = ``stack_depth``); the outputs of a model that decodes only the centre slice of
each stack have ``(B, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoprompt.errors import AutoPromptError
from autoprompt.modeling.adapters import BottleneckAdapter, DepthAdapter3d
from autoprompt.modeling.backbone import SamBackbone
from autoprompt.modeling.class_decoder import (
    ABSENT_LOGIT,
    DecoderRegion,
    combine_logits,
    decode_classes,
    regions_around,
)
from autoprompt.modeling.prompt_generators import (
    Prompts,
    boxes_from_masks,
    channel_argmax,
    exclusive_masks,
    label_masks,
    refined_boxes,
)


@dataclass
class AutoPromptOutput:
    """What :meth:`AutoPromptSAM.forward` returns; leading dims ``L`` = ``(B,)`` (2d), ``(B, D)`` (3d) or
    ``(B, 1)`` (3d, centre slices only).

    Attributes:
        logits: ``L x (K+1) x S x S`` background + classes, for a softmax over dim -3; with a
            ``decoder_region`` ``L x (K+1) x s x s``, the pixels of each slice's square.
        class_mask_logits: ``L x K x S x S`` per-class SAM decoder logits (before presence);
            ``ABSENT_LOGIT`` for a class skipped in a slice (``skip_presence_below``); ``s x s`` with a region.
        coarse_logits: ``L x K x S x S`` the prompt generator's coarse masks.
        boxes: ``L x K x 4`` the prompt generator's regressed boxes, ``xyxy`` in [0, 1] of the window.
        presence_logits: ``L x K``.
        decoder_region: the squares ``logits`` cover (one per slice of the flattened ``L``), or None.
    """

    logits: torch.Tensor
    class_mask_logits: torch.Tensor
    coarse_logits: torch.Tensor
    boxes: torch.Tensor
    presence_logits: torch.Tensor
    decoder_region: DecoderRegion | None = None


class AutoPromptSAM(nn.Module):
    """SAM with a learned prompt generator and class-labelled decoding.

    Build it with :func:`autoprompt.modeling.build.build_autoprompt_sam`. The backbone's pretrained
    weights stay frozen and in eval mode (its norm layers and TinyViT's cached attention biases are never
    switched to training behaviour); what trains is whatever has ``requires_grad``: adapters, the prompt
    generator with its class tokens, optionally SAM's mask decoder and prompt encoder.

    Args:
        backbone: the SAM backbone (adapters already inserted, freeze flags already set).
        prompt_generator: an ``EncoderHeadGenerator`` or ``CoarseUNetGenerator``.
        num_classes: K foreground classes.
        in_channels: C input channels.
        stack_depth: D slices per stack (1 for 2d).
        depth_adapter: depth adapter on the stacked embeddings, or None.
        centre_slice_only: for stacks, only each stack's centre slice goes through the prompt generator
            and the mask decoder (after the depth adapter has mixed its neighbours in); outputs ``(B, 1)``.
        box_source: ``head`` or ``coarse_mask``, where the first boxes given to SAM come from; coarse-mask
            boxes are those of the coarse label map (each pixel to its most confident class, so one
            class's box does not stretch over a region another class claims more strongly).
        presence_floor: bound on the presence suppression (:func:`combine_logits`).
        box_refinement: R, extra decoder passes in eval mode: each takes its boxes from the previous
            pass's label map (a class absent from it keeps its box). Training runs one pass.
        refinement_tolerance: in a refinement pass, a (slice, class) pair whose new box lies within this
            fraction of the window of its previous box on every side keeps its previous mask logits instead
            of being decoded again (:meth:`pairs_to_refine`); 0 decodes every pair again.
        skip_presence_below: in eval mode, a class whose presence probability in a slice is below this
            is not decoded in that slice (in no decoder pass) and its mask logits are
            :data:`~autoprompt.modeling.class_decoder.ABSENT_LOGIT`, whatever ``presence_floor``.
            0 decodes every class.
        inference_region_tokens: t > 0: in eval mode, each slice is decoded on a ``t x t`` square of image
            tokens around its current foreground where that fits (:meth:`_decode_around`); 0: whole windows.
    """

    def __init__(
        self,
        *,
        backbone: SamBackbone,
        prompt_generator: nn.Module,
        num_classes: int,
        in_channels: int,
        stack_depth: int = 1,
        depth_adapter: DepthAdapter3d | None = None,
        centre_slice_only: bool = False,
        box_source: str = "head",
        presence_floor: float = 0.0,
        box_refinement: int = 0,
        refinement_tolerance: float = 0.0,
        skip_presence_below: float = 0.0,
        inference_region_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_generator = prompt_generator
        self.depth_adapter = depth_adapter
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stack_depth = stack_depth
        self.centre_slice_only = centre_slice_only and stack_depth > 1
        self.box_source = box_source
        self.presence_floor = presence_floor
        self.box_refinement = box_refinement
        self.refinement_tolerance = refinement_tolerance
        self.skip_presence_below = skip_presence_below
        self.inference_region_tokens = inference_region_tokens
        self.backbone.eval()

    @property
    def window_size(self) -> int:
        """S, the side of the square windows the model takes and returns (the backbone's, 256 or 1024)."""
        return self.backbone.model_input_size

    @property
    def output_depth(self) -> int:
        """Slices per stack in the outputs: 1 when only centre slices are decoded, else ``stack_depth``."""
        return 1 if self.centre_slice_only else self.stack_depth

    @property
    def uses_frozen_encoder(self) -> bool:
        """True when nothing before the image embedding trains, so embeddings may be computed once and cached."""
        return not any(p.requires_grad for p in self.backbone.image_encoder.parameters())

    def train(self, mode: bool = True) -> AutoPromptSAM:
        """Set training mode on the trainable parts; the pretrained backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def encode(self, images: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """The image encoder's embeddings (before any depth adapter on the embedding).

        Args:
            images: ``B x C x S x S`` or ``B x D x C x S x S`` in [0, 1].
            batch_size: windows per PyTorch encoder call at most (:meth:`SamBackbone.encode`); None: all.

        Returns:
            ``B x 256 x 64 x 64`` or ``B x D x 256 x 64 x 64``. A frozen encoder runs without autograd.
        """
        lead = self._leading_dims(images, name="images", feature_ndim=3)
        self._check_images(images)
        embeddings = self._encode_flat(images.reshape(-1, *images.shape[-3:]), batch_size=batch_size)
        return embeddings.reshape(*lead, *embeddings.shape[1:])

    def forward(
        self,
        images: torch.Tensor | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        teacher_boxes: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
        decoder_region: DecoderRegion | None = None,
    ) -> AutoPromptOutput:
        """Segment every class in every window.

        Args:
            images: ``B x C x S x S`` (2d) or ``B x D x C x S x S`` (3d) in [0, 1]; needed unless
                ``embeddings`` is given and the prompt generator reads embeddings only.
            embeddings: precomputed ``self.encode(images)``; only with a frozen encoder.
            teacher_boxes: ``L x K x 4`` boxes (``xyxy`` in [0, 1]) that replace the generated boxes
                given to SAM where ``teacher_mask`` (``L`` bool) is set; training with prompts from the
                ground truth. The returned ``boxes`` stay the generated ones.
            decoder_region: in training, decode each slice (of the flattened ``L``) on its square only
                (:class:`~autoprompt.modeling.class_decoder.DecoderRegion`); the logits cover the squares.

        Returns:
            :class:`AutoPromptOutput` with leading dims ``(B,)``, ``(B, D)`` or ``(B, 1)``
            (:attr:`centre_slice_only`).

        Raises:
            ValueError: missing inputs, wrong shapes, embeddings given to a model whose encoder trains, or a
                decoder region in eval mode.
        """
        if decoder_region is not None and not self.training:
            raise ValueError("decoder_region= is for training only; in eval mode the whole window is decoded")
        if embeddings is not None and not self.uses_frozen_encoder:
            raise ValueError(
                "embeddings= needs a frozen image encoder, but this model trains encoder adapters; pass images="
            )
        if images is None and (embeddings is None or self.prompt_generator.needs_images):
            raise ValueError(
                "forward needs images= (B x C x S x S or B x D x C x S x S)"
                + (" for the coarse_unet prompt generator" if embeddings is not None else "")
            )
        flat_images = None
        if images is not None:
            lead = self._leading_dims(images, name="images", feature_ndim=3)
            self._check_images(images)
            flat_images = images.reshape(-1, *images.shape[-3:])
        if embeddings is not None:
            embedding_lead = self._leading_dims(embeddings, name="embeddings", feature_ndim=3)
            if images is not None and embedding_lead != lead:
                raise ValueError(
                    f"images have leading dims {lead} but embeddings {embedding_lead}; give matching batches"
                )
            lead = embedding_lead
            flat = embeddings.reshape(-1, *embeddings.shape[-3:]).to(self._dtype())
        else:
            flat = self._encode_flat(flat_images)
        if self.centre_slice_only:
            flat = (
                self._centre_slices(flat)
                if self.depth_adapter is None
                else self.depth_adapter.centre(flat, depth=self.stack_depth)
            )
            flat_images = None if flat_images is None else self._centre_slices(flat_images)
            lead = (lead[0], 1)
        elif self.depth_adapter is not None:
            flat = self.depth_adapter(flat, depth=self.stack_depth)

        prompts = self.prompt_generator(embeddings=flat, images=flat_images)
        sam_boxes = self.first_boxes(boxes=prompts.boxes, coarse_logits=prompts.coarse_logits)
        if teacher_boxes is not None and teacher_mask is not None:
            use = teacher_mask.reshape(-1, 1, 1).to(sam_boxes.device)
            sam_boxes = torch.where(
                use, teacher_boxes.reshape(sam_boxes.shape).to(sam_boxes.dtype), sam_boxes
            )
        keep = self.decoded_classes(prompts.presence_logits)
        if self.training:
            class_logits = self._decode(flat, prompts, sam_boxes, keep, region=decoder_region)
        else:  # the coarse foreground only where a square is to be placed on it
            foreground = (
                exclusive_masks(prompts.coarse_logits).any(dim=1) if self.inference_region_tokens else None
            )
            class_logits = self._decode_around(flat, prompts, sam_boxes, keep, foreground)
        logits = combine_logits(class_logits, prompts.presence_logits, presence_floor=self.presence_floor)
        for _ in range(0 if self.training else self.box_refinement):
            labels = channel_argmax(logits, dim=1)
            boxes = refined_boxes(label_masks(labels, self.num_classes), sam_boxes)
            redo = self.pairs_to_refine(boxes, sam_boxes, keep)
            if redo is not None and not redo.any():
                break  # no box moved: a further pass would see the same label map
            sam_boxes = boxes
            decoded = self._decode_around(flat, prompts, sam_boxes, redo, labels > 0)
            class_logits = (
                decoded if redo is None else torch.where(redo[..., None, None], decoded, class_logits)
            )
            logits = combine_logits(class_logits, prompts.presence_logits, presence_floor=self.presence_floor)
        return AutoPromptOutput(
            logits=logits.reshape(*lead, *logits.shape[1:]),
            class_mask_logits=class_logits.reshape(*lead, *class_logits.shape[1:]),
            coarse_logits=prompts.coarse_logits.reshape(*lead, *prompts.coarse_logits.shape[1:]),
            boxes=prompts.boxes.reshape(*lead, *prompts.boxes.shape[1:]),
            presence_logits=prompts.presence_logits.reshape(*lead, self.num_classes),
            decoder_region=decoder_region,
        )

    def first_boxes(self, *, boxes: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        """SAM's boxes in the first decoder pass, by :attr:`box_source`: the regressed ``N x K x 4`` ``boxes``
        (``head``) or the boxes of the coarse label map made from ``N x K x S x S`` ``coarse_logits``."""
        if self.box_source == "head":
            return boxes
        return boxes_from_masks(exclusive_masks(coarse_logits))

    def pairs_to_refine(
        self, boxes: torch.Tensor, previous: torch.Tensor, keep: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``N x K`` bool, the (slice, class) pairs a refinement pass decodes again: those in ``keep`` whose
        ``N x K x 4`` ``boxes`` moved from their ``previous`` boxes by more than :attr:`refinement_tolerance`
        (a fraction of the window) on some side; ``keep`` (None: all) when the tolerance is 0."""
        if self.refinement_tolerance == 0:
            return keep
        moved = (boxes - previous).abs().amax(dim=-1) > self.refinement_tolerance
        return moved if keep is None else moved & keep

    def decoded_classes(self, presence_logits: torch.Tensor) -> torch.Tensor | None:
        """``N x K`` bool, the (slice, class) pairs the decoder runs for ``N x K`` ``presence_logits``: those
        with presence probability at least :attr:`skip_presence_below` in eval mode; None (all) in
        training or with skipping off."""
        if self.training or self.skip_presence_below == 0:
            return None
        return torch.sigmoid(presence_logits.float()) >= self.skip_presence_below

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the trainable parameters, plus the persistent buffers of the modules that own them."""
        keys = self._trainable_keys()
        return {key: value for key, value in self.state_dict().items() if key in keys}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved, strictly.

        Raises:
            AutoPromptError: keys or shapes do not match this model (saved from another configuration).
        """
        expected = self._trainable_keys()
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            detail = "; ".join(
                f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
            raise AutoPromptError(
                f"trained weights do not fit this model ({detail}); they were saved from another model "
                "configuration: load them with the trainer config they were trained with"
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise AutoPromptError(
                f"trained weights do not fit this model ({first}); they were saved with other sizes: "
                "load them with the trainer config and plans they were trained with"
            ) from error

    PRETRAINED_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")

    def parameter_parts(self) -> dict[str, str]:
        """The part each parameter belongs to, by parameter name.

        Parts: ``image_encoder``, ``encoder_adapters``, ``depth_adapters``, ``prompt_encoder``,
        ``mask_decoder``, ``decoder_adapters``, ``prompt_generator`` (includes the class tokens). The
        parts in :attr:`PRETRAINED_PARTS` hold the backbone's weights; the others are new.
        """
        adapter_ids = {
            part: {
                id(p)
                for module in self.backbone.get_submodule(owner).modules()
                if isinstance(module, kind)
                for p in module.parameters()
            }
            for part, owner, kind in (
                ("encoder_adapters", "image_encoder", BottleneckAdapter),
                ("depth_adapters", "image_encoder", DepthAdapter3d),
                ("decoder_adapters", "mask_decoder", BottleneckAdapter),
            )
        }
        parts = {}
        for name, parameter in self.named_parameters():
            part = next((part for part, ids in adapter_ids.items() if id(parameter) in ids), None)
            if part is None:
                top, _, rest = name.partition(".")
                part = rest.partition(".")[0] if top == "backbone" else top
            parts[name] = "depth_adapters" if part == "depth_adapter" else part
        return parts

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters of the parts in :attr:`PRETRAINED_PARTS` (the backbone's own weights)."""
        parts = self.parameter_parts()
        return [p for name, p in self.named_parameters() if parts[name] in self.PRETRAINED_PARTS]

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: ``total``, ``trainable`` and per part (:meth:`parameter_parts`)."""
        counts = dict.fromkeys(
            (
                "total",
                "trainable",
                "image_encoder",
                "encoder_adapters",
                "depth_adapters",
                "prompt_encoder",
                "mask_decoder",
                "decoder_adapters",
                "prompt_generator",
            ),
            0,
        )
        parts = self.parameter_parts()
        for name, parameter in self.named_parameters():
            size = parameter.numel()
            counts["total"] += size
            counts["trainable"] += size if parameter.requires_grad else 0
            counts[parts[name]] += size
        return counts

    def _trainable_keys(self) -> set[str]:
        """State-dict keys of trainable parameters and of the persistent buffers of their modules."""
        keys = set()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            own = [name for name, p in module.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            keys.update(prefix + name for name in own)
            keys.update(prefix + name for name, _ in module.named_buffers(recurse=False))
        return keys & self.state_dict().keys()

    def _decode(
        self,
        flat: torch.Tensor,
        prompts: Prompts,
        boxes: torch.Tensor,
        keep: torch.Tensor | None,
        *,
        region: DecoderRegion | None = None,
    ) -> torch.Tensor:
        """``N x K x S x S`` class mask logits from SAM's decoder for ``N x K x 4`` boxes and the prompts,
        of the ``N x K`` pairs in ``keep`` (None: all), on each slice's square of ``region`` if given."""
        return decode_classes(
            self.backbone.prompt_encoder,
            self.backbone.mask_decoder,
            flat,
            boxes=boxes,
            coarse_logits=prompts.coarse_logits,
            class_tokens=prompts.class_tokens,
            output_size=self.window_size,
            keep=keep,
            region=region,
        )

    def _decode_around(
        self,
        flat: torch.Tensor,
        prompts: Prompts,
        boxes: torch.Tensor,
        keep: torch.Tensor | None,
        foreground: torch.Tensor | None,
    ) -> torch.Tensor:
        """Eval-mode :meth:`_decode`: with :attr:`inference_region_tokens`, each slice whose ``N x H x W`` bool
        ``foreground`` fits a square (:func:`~autoprompt.modeling.class_decoder.regions_around`) is decoded on
        that square only and is :data:`~autoprompt.modeling.class_decoder.ABSENT_LOGIT` outside it; the other
        slices are decoded whole (all of them when ``foreground`` is None). Returns ``N x K x S x S`` class mask
        logits."""
        tokens, grid = self.inference_region_tokens, flat.shape[-1]
        if foreground is None or not 0 < tokens < grid:
            return self._decode(flat, prompts, boxes, keep)
        fits, region = regions_around(boxes_from_masks(foreground), tokens=tokens, grid=grid)
        if not fits.any():
            return self._decode(flat, prompts, boxes, keep)
        logits = None
        for chosen, chosen_region in ((fits, region), (~fits, None)):
            index = chosen.nonzero()[:, 0]
            if len(index) == 0:
                continue
            subset_keep = None if keep is None else keep[index]
            decoded = self._decode(
                flat[index], prompts.subset(index), boxes[index], subset_keep, region=chosen_region
            )
            if logits is None:
                size = self.window_size
                logits = decoded.new_full((len(flat), self.num_classes, size, size), ABSENT_LOGIT)
            if chosen_region is None:  # a subset with every class skipped is not in the decoder's dtype
                logits[index] = decoded.to(logits.dtype)
            else:
                logits[index] = chosen_region.paste(decoded, logits[index])
        return logits

    def _centre_slices(self, flat: torch.Tensor) -> torch.Tensor:
        """``(B*D) x ...`` slices of stacks -> ``B x ...`` the centre slice of each stack."""
        return flat.reshape(-1, self.stack_depth, *flat.shape[1:])[:, self.stack_depth // 2]

    def _dtype(self) -> torch.dtype:
        return self.backbone.pixel_mean.dtype

    def _encode_flat(self, images: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """``N x C x S x S`` -> ``N x 256 x 64 x 64`` through the (adapted) image encoder."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.uses_frozen_encoder):
            return self.backbone.encode(to_three_channels(images), batch_size=batch_size)

    def _leading_dims(self, tensor: torch.Tensor, *, name: str, feature_ndim: int) -> tuple[int, ...]:
        """``(B,)`` for a 2d tensor, ``(B, D)`` for a stack; checks D against ``stack_depth``."""
        if tensor.ndim == feature_ndim + 1 and self.stack_depth == 1:
            return (tensor.shape[0],)
        if tensor.ndim == feature_ndim + 2 and tensor.shape[1] == self.stack_depth:
            return tuple(tensor.shape[:2])
        expected = (
            f"B x {'C' if name == 'images' else '256'} x H x W"
            if self.stack_depth == 1
            else f"B x {self.stack_depth} x ... stacks of {self.stack_depth} slices"
        )
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} do not fit this model (stack depth {self.stack_depth}); "
            f"expected {expected}"
        )

    def _check_images(self, images: torch.Tensor) -> None:
        channels, height, width = images.shape[-3:]
        size = self.window_size
        if channels != self.in_channels or height != size or width != size:
            raise ValueError(
                f"images of shape {tuple(images.shape)} do not fit this model: expected {self.in_channels} "
                f"channel(s) of {size} x {size} in the last three dims"
            )


def to_three_channels(images: torch.Tensor) -> torch.Tensor:
    """``N x C x H x W`` -> ``N x 3 x H x W`` for SAM: 1 channel repeated, 3 kept, else the mean repeated."""
    channels = images.shape[1]
    if channels == 3:
        return images
    grey = images if channels == 1 else images.mean(dim=1, keepdim=True)
    return grey.expand(-1, 3, -1, -1)
