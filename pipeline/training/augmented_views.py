"""Augmented views in the embedding cache: augmentation for a frozen, cached encoder.

A cached embedding cannot follow an image that is rotated or made brighter after the fact, so the
augmentation happens before encoding: every window of every training slice is stored in ``V`` views,
and each training sample draws one of them::

    view 0        the window itself (the base cache, :mod:`pipeline.training.embedding_cache`)
    view 1        its mirror image (columns reversed)
    views 2..V-1  random views drawn with nnU-Net's 2D augmentations
                  (:func:`pipeline.training.data.build_augmentation`, rotation and scaling with
                  probability ``ViewConfig.p_spatial``); a fraction ``zoom.views``
                  of them show the region of interest enlarged to the window (:mod:`pipeline.roi_zoom`,
                  the square around the case's ground truth, its margin and centre jittered) before
                  the same augmentations

Image and label map are warped together. A random view is drawn once per case, view and window and
applied to every slice of the case at once (the slices are channels of one batchgenerators sample), so
a stack of neighbouring slices (3d) sees one in-plane transform. The transform reads a region twice the
window's size around it, so rotated and zoomed-out windows are filled with real image, not zeros.

Files, beside the base cache::

    PREPROCESSED/DatasetXXX_Name/embeddings/<key>/views/<views key>/
        views.json           what the views key was made of
        {case}.npy           float16 (V-1) x S' x W x 256 x 64 x 64  embeddings of views 1..V-1
        {case}_images.npy    float16 (V-1) x S' x W x C x h x w      the augmented windows
        {case}_seg.npy       int16   (V-1) x S' x W x h x w          their label maps

``S'`` are the base cache's slices (its slice stride), ``W`` the fixed windows of a slice. The views
key hashes the base key, ``V``, the augmentation ranges, ``p_spatial``, the seed and the zoom settings
(when zoom is on), so changing any of them builds new views; finished cases are reused, and building resumes case by case.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from autoprompt.progress import progress
from pipeline.files import atomic_path, save_json
from pipeline.roi_zoom import RoiBox, foreground_box, zoom_in
from pipeline.trainer_config import AugmentationConfig, ViewConfig, ZoomConfig
from pipeline.training.data import (
    TrainingCase,
    build_augmentation,
    cached_slices,
    crop_window,
    fixed_windows,
    run_seeded,
    zoomed_view_box,
)
from pipeline.training.embedding_cache import (
    CACHE_DTYPE,
    EMBEDDING_SHAPE,
    EmbeddingCache,
    cache_key,
    encode_in_chunks,
)

BYTES_PER_EMBEDDING = int(np.prod(EMBEDDING_SHAPE)) * np.dtype(CACHE_DTYPE).itemsize
CONTEXT = 2  # the spatial transform reads a region CONTEXT times the window around it


def choose_view_count(
    config: ViewConfig, training_windows: int, *, bytes_per_embedding: int = BYTES_PER_EMBEDDING
) -> int:
    """``config.count`` or, when None: 1 from ``config.single_view_from`` training windows on, else as many views
    as ``config.budget_gib`` holds (1..``max_count``) of ``training_windows`` embeddings of ``bytes_per_embedding``
    each (the cache's, smaller in small windows)."""
    if config.count is not None:
        return config.count
    if training_windows >= config.single_view_from:
        return 1
    per_view = max(training_windows, 1) * bytes_per_embedding
    return int(np.clip(int(config.budget_gib * 2**30 // per_view), 1, config.max_count))


def view_key_parts(
    base: EmbeddingCache,
    *,
    count: int,
    augmentation: AugmentationConfig,
    p_spatial: float,
    seed: int,
    zoom: ZoomConfig | None = None,
) -> dict[str, object]:
    """The values the views key is made of (written to ``views.json``; ``zoom``'s view settings and the
    per-class brightness only when they are on, so views made without them keep their key)."""
    ranges = json.loads(json.dumps(asdict(augmentation)))
    if tuple(augmentation.class_intensity_range) == (1.0, 1.0):  # off: views made before it keep their key
        del ranges["class_intensity_range"], ranges["p_class_intensity"]
    parts: dict[str, object] = {
        "base_key": base.key,
        "count": count,
        "augmentation": ranges,
        "p_spatial": p_spatial,
        "seed": seed,
    }
    if zoom is not None and zoom.views > 0:
        parts["zoom"] = {"margin": zoom.margin, "max_factor": zoom.max_factor, "views": zoom.views}
    return parts


def view_seed(seed: int, case: str, view: int, window: int) -> int:
    """The seed of random view ``view`` of window ``window`` of ``case`` (independent of case order)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(case.encode()), view, window]).generate_state(1)[0])


def render_view(
    data: np.ndarray,
    seg: np.ndarray,
    *,
    top: int,
    left: int,
    window: Sequence[int],
    view: int,
    augmentation,
    seed: int,
    roi: RoiBox | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """View ``view`` (>= 1) of one window on every given slice.

    Args:
        data: ``C x S x H x W`` float images in [0, 1].
        seg: ``S x H x W`` labels.
        top, left: window corner in the centre-padded slice (:func:`fixed_windows`).
        window: ``(h, w)``.
        view: 1 (mirror) or >= 2 (random, with ``augmentation``, a batchgenerators pipeline).
        seed: seeds ``augmentation`` (:func:`run_seeded`).
        roi: a random view of this square of the slices (:func:`zoomed_view_box`), resized to the window,
            instead of the window itself.

    Returns:
        ``S x C x h x w`` float32 in [0, 1] and ``S x h x w`` int16.
    """
    h, w = window
    channels, slices = data.shape[:2]
    if view == 1:
        image = crop_window(data, top, left, window)[..., ::-1]
        labels = crop_window(seg, top, left, window)[..., ::-1]
        return np.ascontiguousarray(image.transpose(1, 0, 2, 3), dtype=np.float32), labels.astype(np.int16)
    region = (CONTEXT * h, CONTEXT * w)
    if roi is None:
        corner = (top - (region[0] - h) // 2, left - (region[1] - w) // 2)
        image = crop_window(data, *corner, region)
        labels = crop_window(seg, *corner, region)
    else:
        context = roi.grown(CONTEXT)
        image = zoom_in(torch.from_numpy(np.ascontiguousarray(data)), context, region).numpy()
        labels = zoom_in(torch.from_numpy(np.ascontiguousarray(seg)), context, region, labels=True).numpy()
    image = image.transpose(1, 0, 2, 3).reshape(1, slices * channels, *region)
    labels = labels[None].astype(np.float32)
    out = run_seeded(augmentation, seed, data=image.astype(np.float32), seg=labels)
    image = np.clip(out["data"], 0.0, 1.0).reshape(slices, channels, h, w).astype(np.float32)
    return image, np.rint(out["seg"][0]).astype(np.int16)


@dataclass
class CaseViews:
    """The views 1..V-1 of one case, memory-mapped (shapes in the module docstring)."""

    embeddings: np.ndarray
    images: np.ndarray
    labels: np.ndarray


class ViewCache:
    """The augmented views of the training cases next to a base embedding cache.

    Args:
        base: the embedding cache of view 0.
        parts: :func:`view_key_parts`.
    """

    def __init__(self, base: EmbeddingCache, parts: dict[str, object]) -> None:
        self.base = base
        self.parts = parts
        self.count = int(parts["count"])
        self.key = cache_key(parts)
        self.folder = base.folder / "views" / self.key
        self.augmentation_config = AugmentationConfig(**parts["augmentation"])
        self.zoom = ZoomConfig(**parts["zoom"]) if "zoom" in parts else None
        self.seed = int(parts["seed"])
        self.window = base.window

    def paths(self, case: str) -> tuple[Path, Path, Path]:
        """``{case}.npy``, ``{case}_images.npy``, ``{case}_seg.npy``."""
        return (
            self.folder / f"{case}.npy",
            self.folder / f"{case}_images.npy",
            self.folder / f"{case}_seg.npy",
        )

    def expected_shapes(self, case: TrainingCase) -> tuple[tuple[int, ...], ...]:
        rows, windows = self.base.expected_shape(case)[:2]
        lead = (self.count - 1, rows, windows)
        channels = case.data.shape[0]
        return (*lead, *self.base.embedding_shape), (*lead, channels, *self.window), (*lead, *self.window)

    def is_complete(self, case: TrainingCase) -> bool:
        """Whether all three files of ``case`` exist with the expected shapes and dtypes."""
        dtypes = (CACHE_DTYPE, np.float16, np.int16)
        for path, shape, dtype in zip(self.paths(case.name), self.expected_shapes(case), dtypes, strict=True):
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                return False
            if array.shape != shape or array.dtype != dtype:
                return False
        return True

    def open(self, case: str) -> CaseViews:
        return CaseViews(*(np.load(path, mmap_mode="r") for path in self.paths(case)))

    def build(
        self, model: AutoPromptSAM, cases: Sequence[TrainingCase], *, device: torch.device, batch_size: int
    ) -> int:
        """Render and encode the views of the cases not done yet; returns how many cases were built.

        The global generators that batchgenerators draws from are restored afterwards.
        """
        if self.count < 2:
            return 0
        todo = [case for case in cases if not self.is_complete(case)]
        if not todo:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        save_json({"key": self.key, **self.parts}, self.folder / "views.json")
        augmentation = build_augmentation(
            self.augmentation_config, self.window, p_spatial=float(self.parts["p_spatial"])
        )
        states = np.random.get_state(), random.getstate()
        total = sum(int(np.prod(self.expected_shapes(case)[0][:3])) for case in todo)
        try:
            with progress(total=total, desc=f"augmented views {self.key}", unit="window") as bar:
                for case in todo:
                    self._build_case(model, case, augmentation, device=device, batch_size=batch_size, bar=bar)
        finally:
            np.random.set_state(states[0])
            random.setstate(states[1])
        return len(todo)

    def _rendered(
        self, case: TrainingCase, augmentation
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(view - 1, window, images S' x C x h x w, labels S' x h x w)`` for every view and window."""
        kept = cached_slices(case.num_slices, self.base.slice_stride)
        data = np.asarray(case.data[:, kept])
        seg = np.asarray(case.seg[kept])
        tight = foreground_box(seg > 0) if self.zoom is not None else None
        for w, (top, left) in enumerate(fixed_windows(case.data.shape[-2:], self.window)):
            for view in range(1, self.count):
                seed = view_seed(self.seed, case.name, view, w)
                roi = None
                if self.zoom is not None and view >= 2:
                    roi = zoomed_view_box(tight, self.zoom, self.window, np.random.default_rng([seed, 1]))
                image, labels = render_view(
                    data,
                    seg,
                    top=top,
                    left=left,
                    window=self.window,
                    view=view,
                    augmentation=augmentation,
                    seed=seed,
                    roi=roi,
                )
                yield view - 1, w, image, labels

    def _build_case(
        self,
        model: AutoPromptSAM,
        case: TrainingCase,
        augmentation,
        *,
        device: torch.device,
        batch_size: int,
        bar: tqdm,
    ) -> None:
        emb_shape, image_shape, seg_shape = self.expected_shapes(case)
        emb_path, image_path, seg_path = self.paths(case.name)
        with atomic_path(image_path) as tmp_images, atomic_path(seg_path) as tmp_seg:
            images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.float16, shape=image_shape)
            labels = np.lib.format.open_memmap(tmp_seg, mode="w+", dtype=np.int16, shape=seg_shape)
            for v, w, image, label in self._rendered(case, augmentation):
                images[v, :, w] = image
                labels[v, :, w] = label
            images.flush()
            labels.flush()
            del labels
            with atomic_path(emb_path) as tmp_emb:
                out = np.lib.format.open_memmap(tmp_emb, mode="w+", dtype=CACHE_DTYPE, shape=emb_shape)
                index = list(np.ndindex(*emb_shape[:3]))
                chunks = encode_in_chunks(
                    model,
                    index,
                    lambda chunk, views=images: np.stack([views[i].astype(np.float32) for i in chunk]),
                    precision=self.base.precision,
                    device=device,
                    batch_size=batch_size,
                )
                for chunk, embeddings in chunks:
                    for i, embedding in zip(chunk, embeddings, strict=True):
                        out[i] = embedding
                    bar.update(len(chunk))
                out.flush()
                del out
            del images
