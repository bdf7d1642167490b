"""The frozen-encoder embedding cache: every window of every slice encoded once, fp16, memory-mapped.

With a frozen image encoder (``model.uses_frozen_encoder``) the encoder output of a window never
changes during training, and the encoder is by far the most expensive part of a step. The cache computes it once per dataset, plans and backbone::

    PREPROCESSED/DatasetXXX_Name/embeddings/<key>/
        cache.json         what the key was made of (backbone, checksum, plans parts, precision, the
                           int8 encoder's digest where it built the cache)
        {case}.npy         float16 S x W x 256 x 64 x 64: slice s, window w (the windows inference
                           uses on that slice: pipeline.windows, row-major); with a
                           slice stride k only every k-th slice (S' = ceil(S / k) rows, see
                           pipeline.training.data.cached_slices)

``key`` = SHA-256 (first 16 hex digits) of the backbone checksum, the plans' data_identifier,
normalisation, slice axis, target spacing and window size, the window step, the encoder precision and
the slice stride (and the int8 encoder's digest, for a cache built by it);
editing any of them (e.g. plans.json) gives a new key, hence a new cache. All folds and both
configurations ("2d" and "3d" share the preprocessed data) share one cache. Building is resumable:
each case is written atomically, and finished cases are skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from autoprompt.devices import Precision, autocast
from autoprompt.modeling.autoprompt_sam import AutoPromptSAM, to_three_channels
from autoprompt.progress import progress
from pipeline.files import atomic_path, save_json
from pipeline.training.data import TrainingCase, cached_slices, crop_window, fixed_windows
from pipeline.windows import DEFAULT_STEP_SIZE
from planners.plans import Plans

EMBEDDING_SHAPE = (256, 64, 64)
"""One window's embedding at the registry backbones' own window sizes (a smaller window's grid is smaller)."""
CACHE_DTYPE = np.float16
WINDOWS_PER_CALL = 8
"""Windows handed to the encoder at once while caching: OpenVINO keeps every stream busy on them (one window
alone runs in latency mode, slower per window), PyTorch runs them ``batch_size`` at a time."""
T = TypeVar("T")


def cache_key_parts(
    plans: Plans,
    configuration: str,
    *,
    backbone_checksum: str,
    precision: Precision | str,
    slice_stride: int = 1,
    encoder_runtime: str = "eager",
    int8_encoder: str | None = None,
) -> dict[str, object]:
    """The values the cache key is made of (written to ``cache.json``).

    ``encoder_runtime`` (``SamBackbone.resolved_encoder_runtime``) enters the key only for a bf16/fp16
    cache built through OpenVINO: in fp32 the runtimes agree to rounding, in bf16 they do not
    (:mod:`autoprompt.modeling.encoder_runtime`). ``int8_encoder``, the digest of the int8 encoder the
    cache is built with (:func:`~autoprompt.modeling.encoder_quantization.int8_encoder_digest`), enters
    it only for such a cache.
    """
    plan = plans.configuration(configuration)
    parts: dict[str, object] = {
        "backbone_checksum": backbone_checksum,
        "data_identifier": plan.data_identifier,
        "normalization": [asdict(norm) for norm in plans.normalization],
        "slice_axis": plan.slice_axis,
        "target_spacing": list(plan.target_spacing),
        "window_size": list(plan.window_size),
        "window_step": DEFAULT_STEP_SIZE,
        "precision": Precision(precision).value,
    }
    if slice_stride != 1:  # only then, so that stride-1 keys stay what they were
        parts["slice_stride"] = slice_stride
    # only then, so that the keys of caches built by PyTorch stay what they were
    if encoder_runtime != "eager" and Precision(precision) is not Precision.FP32:
        parts["encoder_runtime"] = encoder_runtime
    if int8_encoder is not None:
        parts["int8_encoder"] = int8_encoder
    return parts


def cache_key(parts: dict[str, object]) -> str:
    """First 16 hex digits of the SHA-256 of ``parts`` as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingCache:
    """One cache folder (see the module docstring).

    Args:
        preprocessed_dataset: ``PREPROCESSED/DatasetXXX_Name``.
        parts: :func:`cache_key_parts`.
        embedding_shape: ``(256, h, w)`` of one window's embedding (the backbone's ``embed_dim`` and
            ``embedding_size``; set by the window, which is in the key).
    """

    def __init__(
        self,
        preprocessed_dataset: Path,
        parts: dict[str, object],
        *,
        embedding_shape: tuple[int, int, int] = EMBEDDING_SHAPE,
    ) -> None:
        self.parts = parts
        self.embedding_shape = tuple(embedding_shape)
        self.key = cache_key(parts)
        self.folder = Path(preprocessed_dataset) / "embeddings" / self.key
        self.window = tuple(parts["window_size"])
        self.precision = Precision(parts["precision"])
        self.slice_stride = int(parts.get("slice_stride", 1))

    def path(self, case: str) -> Path:
        return self.folder / f"{case}.npy"

    def is_complete(self, case: TrainingCase) -> bool:
        """Whether ``case`` has a finished cache file of the expected shape."""
        path = self.path(case.name)
        if not path.is_file():
            return False
        try:
            cached = np.load(path, mmap_mode="r")
        except ValueError:  # not a readable .npy: rebuild it
            return False
        return cached.shape == self.expected_shape(case) and cached.dtype == CACHE_DTYPE

    def expected_shape(self, case: TrainingCase) -> tuple[int, ...]:
        windows = fixed_windows(case.data.shape[-2:], self.window)
        return (len(cached_slices(case.num_slices, self.slice_stride)), len(windows), *self.embedding_shape)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of one cached window's embedding."""
        return int(np.prod(self.embedding_shape)) * np.dtype(CACHE_DTYPE).itemsize

    def build(
        self, model: AutoPromptSAM, cases: Sequence[TrainingCase], *, device: torch.device, batch_size: int
    ) -> int:
        """Encode every window of every slice of the cases not cached yet.

        Args:
            model: a model with a frozen encoder (its ``encode`` is used).
            cases: the cases to make sure of.
            device: where the encoder runs.
            batch_size: windows per PyTorch encoder pass (OpenVINO takes :data:`WINDOWS_PER_CALL` at once).

        Returns:
            The number of cases encoded (0 when everything was cached already).
        """
        if not model.uses_frozen_encoder:
            raise ValueError("the embedding cache needs a model with a frozen image encoder")
        todo = [case for case in cases if not self.is_complete(case)]
        if not todo:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        save_json({"key": self.key, **self.parts}, self.folder / "cache.json")
        windows_total = sum(int(np.prod(self.expected_shape(case)[:2])) for case in todo)
        with progress(total=windows_total, desc=f"embedding cache {self.key}", unit="window") as bar:
            for case in todo:
                self._build_case(model, case, device=device, batch_size=batch_size, bar=bar)
        return len(todo)

    def _build_case(
        self, model: AutoPromptSAM, case: TrainingCase, *, device: torch.device, batch_size: int, bar: tqdm
    ) -> None:
        shape = self.expected_shape(case)
        windows = fixed_windows(case.data.shape[-2:], self.window)
        # all (row, slice, window) in storage order, encoded batch_size at a time
        kept = cached_slices(case.num_slices, self.slice_stride)
        pairs = [(row, int(s), w) for row, s in enumerate(kept) for w in range(shape[1])]
        with atomic_path(self.path(case.name)) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=CACHE_DTYPE, shape=shape)

            def images(chunk: Sequence[tuple[int, int, int]]) -> np.ndarray:
                return np.stack(
                    [crop_window(np.asarray(case.data[:, s]), *windows[w], self.window) for _, s, w in chunk]
                )

            for chunk, embeddings in encode_in_chunks(
                model, pairs, images, precision=self.precision, device=device, batch_size=batch_size
            ):
                for (row, _, w), embedding in zip(chunk, embeddings, strict=True):
                    out[row, w] = embedding
                bar.update(len(chunk))
            out.flush()
            del out


def encode_in_chunks(
    model: AutoPromptSAM,
    items: Sequence[T],
    images: Callable[[Sequence[T]], np.ndarray],
    *,
    precision: Precision,
    device: torch.device,
    batch_size: int,
) -> Iterator[tuple[Sequence[T], np.ndarray]]:
    """Encode the windows of ``items`` :data:`WINDOWS_PER_CALL` (at least ``batch_size``) at a time.

    Args:
        items: what each window is (the caller's index of where its embedding goes).
        images: ``chunk`` of items -> their windows, ``n x C x h x w`` float32.
        batch_size: windows per PyTorch encoder pass.

    Yields:
        ``(chunk, embeddings)``: consecutive items and their ``n x 256 x h/4 x w/4`` :data:`CACHE_DTYPE`
        embeddings.
    """
    per_call = max(batch_size, WINDOWS_PER_CALL)
    for start in range(0, len(items), per_call):
        chunk = items[start : start + per_call]
        embeddings = encode_windows(
            model, torch.from_numpy(images(chunk)).to(device), precision=precision, batch_size=batch_size
        )
        yield chunk, embeddings.float().cpu().numpy().astype(CACHE_DTYPE)


def encode_windows(
    model: AutoPromptSAM, images: torch.Tensor, *, precision: Precision, batch_size: int | None = None
) -> torch.Tensor:
    """Frozen-encoder embeddings of independent windows, whatever the model's stack depth.

    A frozen encoder sees every slice of a stack on its own (depth adapters, if any, come after it), so the
    windows of a 3d model are encoded as they are, never padded into stacks of ``D`` (that would encode a
    lone window ``D`` times).

    Args:
        images: ``N x C x h x w``.
        batch_size: windows per PyTorch encoder pass (None: all; OpenVINO always takes all ``N``).

    Returns:
        ``N x 256 x 64 x 64``.
    """
    if not model.uses_frozen_encoder:
        raise ValueError("encode_windows needs a model with a frozen image encoder")
    with torch.inference_mode(), autocast(images.device, precision):
        return model.backbone.encode(to_three_channels(images), batch_size=batch_size)
