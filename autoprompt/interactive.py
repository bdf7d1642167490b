"""Promptable segmentation with the pretrained SAM backbone alone (MedSAM / LiteMedSAM style), no training.

:class:`InteractivePredictor` keeps a slice's embedding (``set_image``) and answers box and point prompts
from it (``predict``), like segment-anything's ``SamPredictor``. The functions :func:`segment`,
:func:`segment_volume` and :func:`embed` wrap it for image files and write their results atomically.

Preprocessing follows LiteMedSAM's published inference (``CVPR24_LiteMedSAM_infer.py``): intensities of
a medical image are clipped at its 0.5 / 99.5 percentiles (of the whole volume for 3D images, of the slice
for 2D ones; 8-bit pictures are not clipped), the slice's longest side is resized to 256 keeping the aspect
ratio, min-max scaled to [0, 1], repeated to 3 channels and zero-padded at the bottom/right to 256 x 256.
Prompts in the image's pixel coordinates (x = column, y = row) are scaled into that frame; the decoder's
256 x 256 logits are cropped to the resized slice, resized bilinearly to the slice's size and thresholded
at sigmoid 0.5.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt.devices import Precision, autocast, parse_precision, resolve_device
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.progress import progress
from pipeline.files import atomic_path, save_json
from pipeline.io import Geometry, image_suffix, read_image, write_image

DEFAULT_PRECISION = Precision.FP32
"""Image-encoder precision of ``segment``, ``segment_volume`` and ``embed``, chosen with
``benchmarks/precision.py``: bf16 kept the box-prompt Dice (to 3 decimals) at 4.6-6.3 % relative embedding
error, but was only 1.0-1.35x faster on this project's CPU (AVX512-BF16) and 10-25x slower with the kernels
limited to AVX2 (a CPU without bf16 instructions, like most laptops). Ask for ``bf16`` on CPUs with
AVX512-BF16/AMX and on GPUs, ``fp16`` on GPUs."""

INTENSITY_PERCENTILES = (0.5, 99.5)
"""Clipping percentiles of medical images (MedSAM's MR preprocessing)."""

EIGHT_BIT_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Pictures that are only min-max scaled, never clipped."""

PROPAGATION_MARGIN = 3
"""Pixels (in the 256 frame) added around the previous slice's mask box in :func:`segment_volume`."""

ImageLike = str | os.PathLike | np.ndarray
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


def intensity_range(array: np.ndarray, *, eight_bit: bool) -> tuple[float, float] | None:
    """The clipping range of an image: its 0.5 / 99.5 percentiles, ``None`` for 8-bit pictures."""
    if eight_bit:
        return None
    low, high = np.percentile(array, INTENSITY_PERCENTILES)
    return float(low), float(high)


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
        precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
    """

    def __init__(
        self,
        backbone: SamBackbone,
        *,
        device: str | torch.device = "auto",
        precision: str | Precision = DEFAULT_PRECISION,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = parse_precision(precision)
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
            intensity_range: clip to ``(low, high)`` first (see :func:`intensity_range`); ``None``: min-max only.
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


@dataclass
class LoadedImage:
    """An image with what the interactive functions need to know about it.

    Attributes:
        array: ``(Z, Y, X)`` or ``(Y, X)`` voxels.
        geometry: where they lie (default: 1 mm spacing at the origin, for arrays).
        source: the file name for messages (``"array"`` for arrays).
        eight_bit: a PNG/JPEG picture or a uint8 array (min-max only, no percentile clipping).
    """

    array: np.ndarray
    geometry: Geometry
    source: str
    eight_bit: bool

    @classmethod
    def of(cls, image: ImageLike) -> LoadedImage:
        """Read a file (any :func:`pipeline.io.read_image` format) or wrap a 2D/3D array."""
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise ValueError(f"image arrays are (Y, X) or (Z, Y, X), got shape {image.shape}")
            ndim = image.ndim
            identity = tuple(float(i == j) for i in range(ndim) for j in range(ndim))
            geometry = Geometry((1.0,) * ndim, (0.0,) * ndim, identity, tuple(reversed(image.shape)))
            return cls(image, geometry, "array", image.dtype == np.uint8)
        array, geometry = read_image(image)
        return cls(array, geometry, str(image), image_suffix(image) in EIGHT_BIT_SUFFIXES)

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """Clipping range over the whole image (volume or slice)."""
        return intensity_range(self.array, eight_bit=self.eight_bit)

    def slice(
        self, slice_index: int | None, *, volume_hint: str = "give the slice with --slice Z"
    ) -> np.ndarray:
        """The ``H x W`` slice to work on: the image itself (2D) or ``array[slice_index]`` (3D).

        Raises:
            AutoPromptError: a slice index for a 2D image, none for a 3D one, or out of range.
        """
        if self.array.ndim == 2:
            if slice_index is not None:
                raise AutoPromptError(
                    f"{self.source}: --slice {slice_index} was given but the image is 2D; leave out --slice"
                )
            return self.array
        depth = self.array.shape[0]
        if slice_index is None:
            raise AutoPromptError(f"{self.source}: the image is 3D with {depth} slices; {volume_hint}")
        if not 0 <= slice_index < depth:
            raise AutoPromptError(
                f"{self.source}: --slice {slice_index} is out of range; the image has slices 0..{depth - 1} (axis 0 = Z)"
            )
        return self.array[slice_index]


def _predictor(
    backbone: BackboneLike,
    *,
    checkpoint: str | os.PathLike | None,
    verify: bool,
    device: str,
    precision: str | Precision,
) -> InteractivePredictor:
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, checkpoint=checkpoint, verify=verify)
    return InteractivePredictor(backbone, device=device, precision=precision)


def _check_output(output: str | os.PathLike, *, ndim: int) -> None:
    """Fail before any model work if ``output`` cannot hold an ``ndim``-D mask."""
    suffix = image_suffix(Path(output)) if Path(output).suffix else ""
    if suffix == "":
        raise AutoPromptError(f"{output}: give the mask file an image ending such as .nii.gz or .png")
    if ndim == 3 and suffix in EIGHT_BIT_SUFFIXES:
        raise AutoPromptError(f"{output}: a 3D mask does not fit in {suffix}; write .nii.gz")


def segment(
    image: ImageLike,
    *,
    box: Sequence[float] | None = None,
    slice_index: int | None = None,
    points: Sequence[Sequence[float]] | None = None,
    output: str | os.PathLike | None = None,
    backbone: BackboneLike = "litemedsam",
    checkpoint: str | os.PathLike | None = None,
    verify: bool = True,
    device: str = "auto",
    precision: str | Precision = DEFAULT_PRECISION,
) -> np.ndarray:
    """Segment one 2D image or one slice of a volume from a box and/or points (MedSAM style).

    Args:
        image: image file (NIfTI, MHA, NRRD, DICOM folder, PNG, JPEG, TIFF) or a ``(Y, X)`` / ``(Z, Y, X)`` array.
        box: ``[x_min, y_min, x_max, y_max]`` in the slice's pixels, x = column, y = row.
        slice_index: the slice of a 3D image (array axis 0 = Z); ``None`` for a 2D image.
        points: ``[(x, y, label), ...]``, label 1 = object, 0 = background.
        output: mask file to write in the image's geometry (a 3D image gives a 3D mask with that slice filled).
        backbone: registry name (``litemedsam``, ``sam_vit_b``, ``medsam_vit_b``, ...) or a loaded backbone.
        checkpoint: weights file of the backbone (see :func:`autoprompt.modeling.backbone.load_backbone`).
        verify: check LiteMedSAM weights against the published checksum.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: image-encoder precision, ``fp32``, ``bf16`` or ``fp16`` (CUDA).

    Returns:
        The uint8 0/1 mask, shaped like the image.

    Raises:
        AutoPromptError: unreadable image, bad slice, prompt outside the image, bad output name or weights.
    """
    loaded = LoadedImage.of(image)
    if output is not None:
        _check_output(output, ndim=loaded.array.ndim)
    pixels = loaded.slice(slice_index, volume_hint="give the slice with --slice Z, or a 3D box with --box3d")
    if box is None and points is None:
        raise AutoPromptError(
            f"{loaded.source}: no prompt given; give --box X1 Y1 X2 Y2 and/or --points X Y LABEL"
        )
    if box is not None:
        check_box(box, pixels.shape, source=loaded.source)
    if points is not None:
        check_points(points, pixels.shape, source=loaded.source)
    predictor = _predictor(backbone, checkpoint=checkpoint, verify=verify, device=device, precision=precision)
    predictor.set_image(pixels, intensity_range=loaded.intensity_range)
    mask = np.zeros(loaded.array.shape, dtype=np.uint8)
    target = mask if slice_index is None else mask[slice_index]
    target[...] = predictor.predict(box=box, points=points).mask
    if output is not None:
        write_image(mask, loaded.geometry, output)
    return mask


def propagation_order(z_min: int, z_max: int) -> Iterator[tuple[int, int | None]]:
    """``(slice, neighbour whose mask gives its box)``: the middle slice first (``None``: use the 3D box's
    2D box), then up to ``z_max``, then down to ``z_min``, both inclusive (LiteMedSAM's 3D inference)."""
    middle = (z_min + z_max) // 2
    yield middle, None
    for z in range(middle + 1, z_max + 1):
        yield z, z - 1
    for z in range(middle - 1, z_min - 1, -1):
        yield z, z + 1


def segment_volume(
    image: ImageLike,
    *,
    box3d: Sequence[float],
    output: str | os.PathLike | None = None,
    backbone: BackboneLike = "litemedsam",
    checkpoint: str | os.PathLike | None = None,
    verify: bool = True,
    device: str = "auto",
    precision: str | Precision = DEFAULT_PRECISION,
) -> np.ndarray:
    """Segment an object through a volume from one 3D box, slice by slice (LiteMedSAM's 3D inference).

    The middle slice of the box's z-range is segmented with the box's 2D part; each further slice, going
    up and then down, takes the bounding box of its neighbour's mask (widened by
    :data:`PROPAGATION_MARGIN` pixels of the 256 frame), or the 2D box again where that mask is empty.

    Args:
        image: a 3D image file or ``(Z, Y, X)`` array.
        box3d: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in voxels, z range inclusive.
        output: mask file to write in the image's geometry.
        backbone, checkpoint, verify, device, precision: as in :func:`segment`.

    Returns:
        The ``(Z, Y, X)`` uint8 0/1 mask.

    Raises:
        AutoPromptError: a 2D image, a box outside the volume, bad output name or weights.
    """
    loaded = LoadedImage.of(image)
    if loaded.array.ndim != 3:
        raise AutoPromptError(
            f"{loaded.source}: --box3d needs a 3D image, this one is 2D; give --box X1 Y1 X2 Y2"
        )
    if output is not None:
        _check_output(output, ndim=3)
    values = np.asarray(box3d, dtype=np.float64).reshape(-1)
    if values.size != 6:
        raise AutoPromptError(
            f"{loaded.source}: a 3D box has 6 numbers, got {values.size}; give --box3d X1 Y1 Z1 X2 Y2 Z2"
        )
    if not np.all(np.isfinite(values)):
        raise AutoPromptError(
            f"{loaded.source}: 3D box ({', '.join(f'{v:g}' for v in values)}) holds a value that is not a "
            "finite number; give --box3d X1 Y1 Z1 X2 Y2 Z2 in voxels"
        )
    x1, y1, z1, x2, y2, z2 = values
    depth = loaded.array.shape[0]
    if not (0 <= z1 <= z2 <= depth - 1) or z1 != int(z1) or z2 != int(z2):
        raise AutoPromptError(
            f"{loaded.source}: 3D box z range {z1:g}..{z2:g} is not within slices 0..{depth - 1}; "
            "give whole slice numbers with Z1 <= Z2"
        )
    box2d = check_box((x1, y1, x2, y2), loaded.array.shape[1:], source=loaded.source)
    predictor = _predictor(backbone, checkpoint=checkpoint, verify=verify, device=device, precision=precision)
    clip = loaded.intensity_range
    frame = SliceFrame(*loaded.array.shape[1:], input_size=predictor.backbone.model_input_size)
    margin = PROPAGATION_MARGIN / frame.scale
    mask = np.zeros(loaded.array.shape, dtype=np.uint8)
    order = list(propagation_order(int(z1), int(z2)))
    for z, neighbour in progress(order, desc="segmenting slices", unit="slice"):
        previous = None if neighbour is None else mask[neighbour]
        box = box_from_mask(previous, margin=margin) if previous is not None and previous.any() else box2d
        predictor.set_image(loaded.array[z], intensity_range=clip)
        mask[z] = predictor.predict(box=box).mask
    if output is not None:
        write_image(mask, loaded.geometry, output)
    return mask


EMBEDDING_DTYPES = ("float16", "float32")


def embedding_sidecar_path(output: str | os.PathLike) -> Path:
    """``OUT.npy`` -> ``OUT.json``."""
    return Path(output).with_suffix(".json")


def embed(
    image: ImageLike,
    *,
    output: str | os.PathLike,
    slice_index: int | None = None,
    backbone: BackboneLike = "litemedsam",
    checkpoint: str | os.PathLike | None = None,
    verify: bool = True,
    device: str = "auto",
    precision: str | Precision = DEFAULT_PRECISION,
    dtype: str = "float16",
    batch_size: int = 4,
) -> np.ndarray:
    """Write the image encoder's embeddings of an image (or one slice) as ``.npy`` with a JSON sidecar.

    The array is ``N x 256 x 64 x 64``: ``N = 1`` for a 2D image or a chosen slice, all slices of a volume
    otherwise. ``OUT.json`` records the backbone and its checksum, the preprocessing, the source image,
    the slice indices, dtype and shape. Both files are written atomically.

    Args:
        image: image file or array, as in :func:`segment`.
        output: ``.npy`` file.
        slice_index: one slice of a 3D image; ``None``: every slice.
        backbone, checkpoint, verify, device, precision: as in :func:`segment`.
        dtype: ``float16`` (half the disk) or ``float32``.
        batch_size: slices per encoder call.

    Returns:
        The written embeddings, memory-mapped read-only.

    Raises:
        AutoPromptError: unreadable image, bad slice, output not ``.npy``, unknown dtype or bad weights.
    """
    output = Path(output)
    if output.suffix != ".npy":
        raise AutoPromptError(f"{output}: embeddings are written as NumPy .npy; give -o NAME.npy")
    if dtype not in EMBEDDING_DTYPES:
        raise AutoPromptError(
            f"unknown embedding dtype '{dtype}'; choose one of {', '.join(EMBEDDING_DTYPES)}"
        )
    if batch_size < 1:
        raise AutoPromptError(f"--batch-size {batch_size}: give at least 1 slice per encoder call")
    loaded = LoadedImage.of(image)
    if slice_index is not None:
        slices, indices = loaded.slice(slice_index)[None], [slice_index]
    elif loaded.array.ndim == 3:
        slices, indices = loaded.array, list(range(loaded.array.shape[0]))
    else:
        slices, indices = loaded.array[None], None
    predictor = _predictor(backbone, checkpoint=checkpoint, verify=verify, device=device, precision=precision)
    clip = loaded.intensity_range
    frame = SliceFrame(*slices.shape[1:], input_size=predictor.backbone.model_input_size)
    shape = (len(slices), predictor.backbone.embed_dim, *predictor.backbone.embedding_size)
    bar = progress(total=len(slices), desc="encoding", unit="slice")
    with atomic_path(output) as tmp, bar:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, len(slices), batch_size):
            batch = slices[start : start + batch_size]
            inputs = torch.cat([frame.to_input(pixels, intensity_range=clip) for pixels in batch])
            array[start : start + len(batch)] = predictor.encode(inputs).cpu().numpy().astype(dtype)
            bar.update(len(batch))
        array.flush()
        del array
        save_json(
            {
                "backbone": predictor.backbone.name,
                "checksum": predictor.backbone.checksum,
                "precision": predictor.precision.value,
                "dtype": dtype,
                "shape": list(shape),
                "source": str(Path(loaded.source).resolve()) if loaded.source != "array" else "array",
                "image_shape": list(loaded.array.shape),
                "slice_indices": indices,
                "geometry": loaded.geometry.to_dict(),
                "preprocessing": {
                    "description": "clip to intensity_range (None: min-max only), resize longest side to "
                    "input_size keeping aspect (bilinear, antialiased), min-max to [0, 1], grey to 3 channels, "
                    "zero-pad bottom/right to input_size x input_size",
                    "intensity_range": None if clip is None else list(clip),
                    "percentiles": None if clip is None else list(INTENSITY_PERCENTILES),
                    "input_size": frame.input_size,
                    "resized_size": list(frame.resized),
                },
            },
            embedding_sidecar_path(output),
        )
    return np.load(output, mmap_mode="r")
