"""``embed``: the image encoder's embeddings of an image as ``.npy`` with a JSON sidecar."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from autoprompt.errors import AutoPromptError
from autoprompt.interactive.images import INTENSITY_PERCENTILES, ImageLike, LoadedImage
from autoprompt.interactive.predictor import ModelOptions, SliceFrame
from autoprompt.progress import progress
from pipeline.files import atomic_path, save_json

EMBEDDING_DTYPES = ("float16", "float32")


def embedding_sidecar_path(output: str | os.PathLike) -> Path:
    """``OUT.npy`` -> ``OUT.json``."""
    return Path(output).with_suffix(".json")


def embed(
    image: ImageLike,
    *,
    output: str | os.PathLike,
    slice_index: int | None = None,
    model: ModelOptions | None = None,
    dtype: str = "float16",
    batch_size: int = 4,
) -> np.ndarray:
    """Write the image encoder's embeddings of an image (or one slice) as ``.npy`` with a JSON sidecar.

    The array is ``N x 256 x 64 x 64``: ``N = 1`` for a 2D image or a chosen slice, all slices of a volume
    otherwise. ``OUT.json`` records the backbone and its checksum, the preprocessing, the source image,
    the slice indices, dtype and shape. Both files are written atomically.

    Args:
        image: image file or array, as in :func:`~autoprompt.interactive.segment.segment`.
        output: ``.npy`` file.
        slice_index: one slice of a 3D image; ``None``: every slice.
        model: as in :func:`~autoprompt.interactive.segment.segment`.
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
    predictor = (model or ModelOptions()).predictor()
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
