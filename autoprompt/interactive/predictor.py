"""The promptable model: :class:`InteractivePredictor` answers box and point prompts on one slice.

Like segment-anything's ``SamPredictor``, it keeps a slice's embedding (``set_image``) and answers prompts
from it (``predict``). :class:`SliceFrame` maps a slice into the model's padded square input (LiteMedSAM's
preprocessing, see :mod:`autoprompt.interactive`); prompts are in the slice's pixels (x = column, y = row).
:class:`ModelOptions` names the backbone, device and precision the file-level functions use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt.devices import Precision, autocast, resolve_device
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.precision import AUTO, resolve_precision

BackboneLike = str | SamBackbone


@dataclass(frozen=True)
class SliceFrame:
    """How an ``H x W`` slice maps into the model's padded square input (resize longest side, pad).

    Attributes:
        height: slice rows ``H``.
        width: slice columns ``W``.
        input_size: side of the model input (256).
    """

    height: int
    width: int
    input_size: int = 256

    @property
    def scale(self) -> float:
        """Input pixels per slice pixel."""
        return self.input_size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        """``(h, w)`` of the resized slice inside the padded input (LiteMedSAM's rounding)."""
        return int(self.height * self.scale + 0.5), int(self.width * self.scale + 0.5)

    def to_input(self, pixels: np.ndarray, *, intensity_range: tuple[float, float] | None) -> torch.Tensor:
        """``H x W`` slice -> model input ``1 x 3 x S x S`` in [0, 1] (clip, resize, min-max, pad, grey to RGB)."""
        data = pixels.astype(np.float32)
        if intensity_range is not None:
            data = np.clip(data, *intensity_range)
        tensor = torch.from_numpy(np.ascontiguousarray(data))[None, None]
        tensor = F.interpolate(
            tensor, size=self.resized, mode="bilinear", align_corners=False, antialias=True
        )
        low, high = tensor.min(), tensor.max()
        tensor = (tensor - low) / torch.clamp(high - low, min=1e-8)
        pad_rows, pad_cols = self.input_size - self.resized[0], self.input_size - self.resized[1]
        return F.pad(tensor, (0, pad_cols, 0, pad_rows)).expand(-1, 3, -1, -1)

    def mask_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """Decoder logits ``1 x 1 x S x S`` -> ``H x W`` bool mask (crop padding, bilinear resize, sigmoid > 0.5)."""
        cropped = logits[..., : self.resized[0], : self.resized[1]].float()
        full = F.interpolate(cropped, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return (full[0, 0] > 0).cpu().numpy()


def box_from_mask(mask: np.ndarray, *, margin: float) -> np.ndarray:
    """Bounding box ``[x_min, y_min, x_max, y_max]`` of a non-empty ``H x W`` mask, widened by ``margin``
    pixels and clipped to ``[0, W] x [0, H]`` (LiteMedSAM's ``get_bbox256``)."""
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return np.array(
        [
            max(0.0, cols.min() - margin),
            max(0.0, rows.min() - margin),
            min(float(width), cols.max() + margin),
            min(float(height), rows.max() + margin),
        ]
    )


def check_box(box: Sequence[float], shape: tuple[int, int], *, source: str) -> np.ndarray:
    """Validate a box ``[x1, y1, x2, y2]`` in pixel coordinates of an ``H x W`` slice.

    Raises:
        AutoPromptError: wrong length, inverted corners or outside ``[0, W] x [0, H]``.
    """
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    height, width = shape
    if values.size != 4:
        raise AutoPromptError(
            f"{source}: a box has 4 numbers X1 Y1 X2 Y2, got {values.size}; give --box X1 Y1 X2 Y2"
        )
    if not np.all(np.isfinite(values)):
        raise AutoPromptError(
            f"{source}: box ({', '.join(f'{v:g}' for v in values)}) holds a value that is not a finite number; "
            "give pixel coordinates X1 Y1 X2 Y2"
        )
    x1, y1, x2, y2 = values
    if x1 > x2 or y1 > y2:
        raise AutoPromptError(
            f"{source}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has its corners swapped; give X1 <= X2 and Y1 <= Y2"
        )
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise AutoPromptError(
            f"{source}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width} x {height} image "
            f"(x 0..{width}, y 0..{height}); give pixel coordinates, x = column, y = row"
        )
    return values


def check_points(points: Sequence[Sequence[float]], shape: tuple[int, int], *, source: str) -> np.ndarray:
    """Validate point prompts ``(x, y, label)`` (label 1 foreground, 0 background) -> ``N x 3`` array.

    Raises:
        AutoPromptError: not triples, a label other than 0/1, or a point outside the image.
    """
    values = np.asarray(points, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 3 or len(values) == 0:
        raise AutoPromptError(
            f"{source}: points are triples X Y LABEL; give --points X Y LABEL [X Y LABEL ...]"
        )
    height, width = shape
    if not np.all(np.isfinite(values)):
        raise AutoPromptError(
            f"{source}: a point holds a value that is not a finite number; give --points X Y LABEL in pixels"
        )
    for x, y, label in values:
        if label not in (0, 1):
            raise AutoPromptError(
                f"{source}: point ({x:g}, {y:g}) has label {label:g}; use 1 (object) or 0 (background)"
            )
        if not (0 <= x <= width and 0 <= y <= height):
            raise AutoPromptError(
                f"{source}: point ({x:g}, {y:g}) lies outside the {width} x {height} image; x = column, y = row"
            )
    return values


@dataclass
class PromptResult:
    """One prompt's answer.

    Attributes:
        mask: ``H x W`` bool mask in the slice's pixels.
        low_res_logits: ``S x S`` float32 decoder logits in the padded model frame.
        iou_prediction: the decoder's estimate of the mask's IoU.
    """

    mask: np.ndarray
    low_res_logits: np.ndarray
    iou_prediction: float


class InteractivePredictor:
    """Stateful box/point prompting of one slice at a time, kept apart from the model.

    ``set_image`` runs the image encoder once; every ``predict`` then costs only the prompt encoder and
    mask decoder. The image encoder runs at ``precision``; prompts and decoding run in fp32.

    Args:
        backbone: a loaded :class:`SamBackbone` (moved to ``device``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        precision: ``fp32``, ``bf16``, ``fp16`` (CUDA only) or ``auto`` (:mod:`autoprompt.precision`).
    """

    def __init__(
        self,
        backbone: SamBackbone,
        *,
        device: str | torch.device = "auto",
        precision: str | Precision = AUTO,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        autocast(self.device, self.precision)  # fp16 on a CPU fails here, before any work
        self.backbone = backbone.to(self.device).eval()
        self._prompt_scale = backbone.prompt_encoder.input_image_size[0] / backbone.model_input_size
        self.frame: SliceFrame | None = None
        self.embedding: torch.Tensor | None = None

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs ``B x 3 x S x S`` in [0, 1] -> float32 embeddings ``B x 256 x 64 x 64`` on the device."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.backbone.encode(inputs.to(self.device)).float()

    def set_image(self, pixels: np.ndarray, *, intensity_range: tuple[float, float] | None = None) -> None:
        """Encode an ``H x W`` slice and keep its embedding for :meth:`predict`.

        Args:
            pixels: the slice, any numeric dtype.
            intensity_range: clip to ``(low, high)`` first
                (:func:`~autoprompt.interactive.images.intensity_range`); ``None``: min-max only.
        """
        if pixels.ndim != 2:
            raise ValueError(f"set_image takes one H x W slice, got shape {pixels.shape}")
        frame = SliceFrame(*pixels.shape, input_size=self.backbone.model_input_size)
        self.embedding = self.encode(frame.to_input(pixels, intensity_range=intensity_range))
        self.frame = frame

    def predict(
        self, *, box: Sequence[float] | None = None, points: Sequence[Sequence[float]] | None = None
    ) -> PromptResult:
        """Segment the current slice from a box and/or points in its pixel coordinates.

        Args:
            box: ``[x_min, y_min, x_max, y_max]``, x = column, y = row.
            points: ``[(x, y, label), ...]``, label 1 = object, 0 = background.

        Raises:
            AutoPromptError: no prompt, or a prompt outside the slice.
        """
        if self.frame is None or self.embedding is None:
            raise RuntimeError("call set_image before predict")
        shape = (self.frame.height, self.frame.width)
        if box is None and points is None:
            raise AutoPromptError("image: no prompt given; give a box X1 Y1 X2 Y2 and/or points X Y LABEL")
        scale = self.frame.scale * self._prompt_scale
        as_tensor = partial(torch.as_tensor, device=self.device)
        boxes = point_prompt = None
        if box is not None:
            boxes = as_tensor(check_box(box, shape, source="image")[None] * scale, dtype=torch.float32)
        if points is not None:
            values = check_points(points, shape, source="image")[None]
            point_prompt = (
                as_tensor(values[..., :2] * scale, dtype=torch.float32),
                as_tensor(values[..., 2], dtype=torch.int64),
            )
        prompt_encoder, mask_decoder = self.backbone.prompt_encoder, self.backbone.mask_decoder
        with torch.inference_mode():
            sparse, dense = prompt_encoder(points=point_prompt, boxes=boxes, masks=None)
            logits, iou = mask_decoder(
                image_embeddings=self.embedding,
                image_pe=prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        return PromptResult(
            mask=self.frame.mask_from_logits(logits),
            low_res_logits=logits[0, 0].float().cpu().numpy(),
            iou_prediction=float(iou[0, 0]),
        )


@dataclass(frozen=True)
class ModelOptions:
    """The promptable model to run and where: what :func:`~autoprompt.interactive.segment.segment`,
    :func:`~autoprompt.interactive.volume.segment_volume` and :func:`~autoprompt.interactive.embedding.embed`
    share.

    Attributes:
        backbone: registry name (``litemedsam``, ``sam_vit_b``, ``medsam_vit_b``, ...) or a loaded backbone.
        checkpoint: weights file of the backbone (see :func:`autoprompt.modeling.backbone.load_backbone`).
        verify: check LiteMedSAM weights against the published checksum.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: image-encoder precision, ``fp32``, ``bf16``, ``fp16`` (CUDA) or ``auto`` (the device's
            native one, :mod:`autoprompt.precision`).
    """

    backbone: BackboneLike = "litemedsam"
    checkpoint: str | os.PathLike | None = None
    verify: bool = True
    device: str = "auto"
    precision: str | Precision = AUTO

    def predictor(self) -> InteractivePredictor:
        """An :class:`InteractivePredictor` of this backbone (loaded and checked when given by name)."""
        backbone = self.backbone
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, checkpoint=self.checkpoint, verify=self.verify)
        return InteractivePredictor(backbone, device=self.device, precision=self.precision)
