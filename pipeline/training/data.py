"""Training batches: nnU-Net-style window sampling and batchgenerators augmentation on preprocessed cases.

Windows. Every slice of a preprocessed case (``C x S x H x W``) is seen through ``h x w`` windows
(the plan's ``window_size``, 256 x 256) on the slice zero-padded around its centre to at least the
window, exactly as inference pads (:func:`pipeline.windows.pad_to_window`). A "3d"
sample is the stack of ``D`` neighbouring slices centred on the sampled slice, edge slices repeated
(:func:`pipeline.windows.stack_indices`), as inference builds stacks.

Sampling (nnU-Net's rule). Each sample picks a training case uniformly; the last
``round(batch_size * oversample_foreground)`` samples of a batch (a third by default) are centred on a
random voxel of a random foreground class present in that case, the others on a random slice and a
random window position. Every batch is drawn from its own generator seeded with
``(seed, stream, epoch, iteration)``, so batch ``i`` of epoch ``e`` is the same whether or not the run
was interrupted and resumed, and whichever worker process makes it.

Two modes:

* **free windows** (the encoder trains, or no cache): any window position inside the padded slice;
  nnU-Net's 2D augmentations on the fly (:func:`build_augmentation`, ranges in
  :class:`pipeline.trainer_config.AugmentationConfig`): rotation, scaling, optional elastic
  deformation, per-class brightness (when switched on), noise, blur, brightness, contrast, simulated low
  resolution, gamma, mirroring; the same spatial transform for all slices of a stack; images clipped back
  to [0, 1] (the backbone's input range).
* **fixed windows** (cached frozen-encoder embeddings): only the window positions inference uses
  (:func:`pipeline.windows.window_slicers`), because only their embeddings exist. A
  cached embedding cannot follow an image augmented afterwards, so augmentation happens before encoding:
  with augmented views (:mod:`pipeline.training.augmented_views`) each training sample draws one of the
  cached views of its window (the window itself, its mirror image, random views), image, label map and
  embedding together. Validation windows always use this mode, and only view 0.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from autoprompt.errors import AutoPromptError
from autoprompt.progress import progress
from pipeline.files import load_npy
from pipeline.roi_zoom import RoiBox, foreground_box, jittered_box, zoom_in
from pipeline.trainer_config import AugmentationConfig, ZoomConfig
from pipeline.training.class_intensity import ClassIntensityTransform
from pipeline.windows import stack_indices, window_slicers

if TYPE_CHECKING:
    from pipeline.training.augmented_views import CaseViews, ViewCache

MAX_LOCATIONS_PER_CLASS = 10_000  # nnU-Net samples at most this many voxels per class and case
TRAIN_STREAM, VAL_STREAM = 0, 1


@dataclass
class TrainingCase:
    """One preprocessed case, memory-mapped.

    Attributes:
        name: case identifier.
        data: ``C x S x H x W`` float32 in [0, 1].
        seg: ``S x H x W`` int16 labels.
        locations: foreground label -> ``N x 3`` int64 ``(slice, row, col)`` voxels of that class
            (at most :data:`MAX_LOCATIONS_PER_CLASS`, a seeded random subset).
    """

    name: str
    data: np.ndarray
    seg: np.ndarray
    locations: dict[int, np.ndarray]

    @property
    def num_slices(self) -> int:
        return self.data.shape[1]


def load_training_cases(
    folder: Path, case_ids: Sequence[str], *, labels: Sequence[int], seed: int, desc: str = "loading cases"
) -> list[TrainingCase]:
    """Open the preprocessed cases ``case_ids`` of ``folder`` (``{case}.npy``, ``{case}_seg.npy``).

    Raises:
        AutoPromptError: a case's files are missing (preprocessing did not finish).
    """
    cases = []
    for index, case in enumerate(progress(case_ids, desc=desc, unit="case")):
        data_file, seg_file = folder / f"{case}.npy", folder / f"{case}_seg.npy"
        for path in (data_file, seg_file):
            if not path.is_file():
                raise AutoPromptError(
                    f"{path}: preprocessed case missing; run 'autoprompt plan-and-preprocess' for this dataset "
                    "(it resumes where it stopped) or remove the case from splits_final.json"
                )
        data = load_npy(data_file)  # AutoPromptError for a truncated file
        seg = load_npy(seg_file)
        if data.ndim != 4 or seg.shape != data.shape[1:]:
            raise AutoPromptError(
                f"{data_file}: shape {data.shape} does not match its labels {seg.shape}; re-run plan-and-preprocess"
            )
        rng = np.random.default_rng([seed, index])
        locations = {}
        for label in labels:
            where = np.argwhere(seg == label)
            if len(where) > MAX_LOCATIONS_PER_CLASS:
                where = where[np.sort(rng.choice(len(where), MAX_LOCATIONS_PER_CLASS, replace=False))]
            if len(where):
                locations[int(label)] = where.astype(np.int64)
        cases.append(TrainingCase(name=case, data=data, seg=seg, locations=locations))
    return cases


def pad_offsets(size: Sequence[int], window: Sequence[int]) -> tuple[int, int]:
    """Rows/columns of zero padding before the content (nnU-Net's centred ``pad_nd_image``)."""
    return tuple(max(w - s, 0) // 2 for s, w in zip(size, window, strict=True))


def padded_size(size: Sequence[int], window: Sequence[int]) -> tuple[int, int]:
    return tuple(max(s, w) for s, w in zip(size, window, strict=True))


def fixed_windows(size: Sequence[int], window: Sequence[int]) -> list[tuple[int, int]]:
    """``(top, left)`` in padded coordinates of the windows inference uses on a slice of ``size``."""
    return [(rows.start, cols.start) for rows, cols in window_slicers(padded_size(size, window), window)]


def cached_slices(num_slices: int, stride: int) -> np.ndarray:
    """The slices kept by an embedding cache with ``stride``: every ``stride``-th, starting at ``stride // 2``.

    ``stride`` 1 keeps all; a case with too few slices keeps its middle one.
    """
    kept = np.arange(num_slices)[stride // 2 :: stride]
    return kept if len(kept) else np.array([num_slices // 2])


def crop_window(array: np.ndarray, top: int, left: int, window: Sequence[int]) -> np.ndarray:
    """The window at padded ``(top, left)`` of ``... x H x W``, zero outside the array.

    Args:
        array: ``... x H x W``.
        top, left: window corner in the coordinates of the centre-padded slice.
        window: ``(h, w)``.

    Returns:
        ``... x h x w`` (same dtype).
    """
    height, width = array.shape[-2:]
    pad_y, pad_x = pad_offsets((height, width), window)
    y0, x0 = top - pad_y, left - pad_x
    out = np.zeros((*array.shape[:-2], *window), dtype=array.dtype)
    ys, ye = max(y0, 0), min(y0 + window[0], height)
    xs, xe = max(x0, 0), min(x0 + window[1], width)
    if ys < ye and xs < xe:
        out[..., ys - y0 : ye - y0, xs - x0 : xe - x0] = array[..., ys:ye, xs:xe]
    return out


@dataclass(frozen=True)
class WindowSpec:
    """One sample: a case, the centre slice, a window corner in padded coordinates.

    ``window_index`` is the index into :func:`fixed_windows` in fixed-window mode (None otherwise).
    """

    case: int
    slice: int
    top: int
    left: int
    window_index: int | None = None


@dataclass
class Batch:
    """A training or validation batch; leading dims ``L`` = ``(B,)`` for 2d, ``(B, D)`` for 3d.

    Attributes:
        images: ``L x C x h x w`` float32 in [0, 1].
        target: ``L x h x w`` int64 labels.
        embeddings: ``L x 256 x 64 x 64`` cached frozen-encoder embeddings (fixed-window mode with a
            cache), else None.
    """

    images: torch.Tensor
    target: torch.Tensor
    embeddings: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory (the data loader calls this for a GPU), so that
        :meth:`to` copies it while the GPU works."""
        return Batch(
            images=self.images.pin_memory(),
            target=self.target.pin_memory(),
            embeddings=None if self.embeddings is None else self.embeddings.pin_memory(),
        )

    def to(self, device: torch.device) -> Batch:
        move = {"device": device, "non_blocking": True}
        return Batch(
            images=self.images.to(**move),
            target=self.target.to(**move),
            embeddings=None if self.embeddings is None else self.embeddings.to(**move).float(),
        )


class WindowSampler:
    """Chooses the windows of a batch (see the module docstring for the rule).

    Args:
        cases: the cases to sample from.
        window: ``(h, w)``.
        oversample_foreground: fraction of each batch centred on foreground.
        fixed: only the windows inference uses (needed with cached embeddings).
        slice_stride: only the slices :func:`cached_slices` keeps (a cache with a slice stride).
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        *,
        window: Sequence[int],
        oversample_foreground: float,
        fixed: bool,
        slice_stride: int = 1,
    ) -> None:
        if not cases:
            raise ValueError("no cases to sample from")
        self.cases = list(cases)
        self.window = tuple(window)
        self.oversample_foreground = oversample_foreground
        self.fixed = fixed
        self._windows = [fixed_windows(case.data.shape[-2:], self.window) for case in self.cases]
        self.slices = [cached_slices(case.num_slices, slice_stride) for case in self.cases]
        self._locations = [
            {label: where[np.isin(where[:, 0], kept)] for label, where in case.locations.items()}
            for case, kept in zip(self.cases, self.slices, strict=True)
        ]
        self._locations = [
            {label: w for label, w in locations.items() if len(w)} for locations in self._locations
        ]

    @property
    def num_windows(self) -> int:
        """The inference windows of the slices sampled from, over all cases (one view of each)."""
        return sum(
            len(windows) * len(slices) for windows, slices in zip(self._windows, self.slices, strict=True)
        )

    def sample(self, rng: np.random.Generator, batch_size: int) -> list[WindowSpec]:
        """``batch_size`` windows; the last ``round(batch_size * oversample_foreground)`` on foreground."""
        num_random = batch_size - round(batch_size * self.oversample_foreground)
        return [self._sample_one(rng, foreground=index >= num_random) for index in range(batch_size)]

    def _sample_one(self, rng: np.random.Generator, *, foreground: bool) -> WindowSpec:
        case_index = int(rng.integers(len(self.cases)))
        case = self.cases[case_index]
        size = case.data.shape[-2:]
        locations = self._locations[case_index]
        classes = sorted(locations)
        if foreground and classes:
            label = classes[int(rng.integers(len(classes)))]
            voxels = locations[label]
            s, y, x = (int(v) for v in voxels[int(rng.integers(len(voxels)))])
            pad_y, pad_x = pad_offsets(size, self.window)
            return self._window_at(case_index, s, y + pad_y, x + pad_x)
        kept = self.slices[case_index]
        s = int(kept[int(rng.integers(len(kept)))])
        if self.fixed:
            index = int(rng.integers(len(self._windows[case_index])))
            top, left = self._windows[case_index][index]
            return WindowSpec(case_index, s, top, left, index)
        height, width = padded_size(size, self.window)
        top = int(rng.integers(height - self.window[0] + 1))
        left = int(rng.integers(width - self.window[1] + 1))
        return WindowSpec(case_index, s, top, left)

    def _window_at(self, case_index: int, s: int, y: int, x: int) -> WindowSpec:
        """The window centred on padded ``(y, x)`` (free) or the fixed window nearest to centring it."""
        h, w = self.window
        if self.fixed:
            windows = self._windows[case_index]
            distances = [abs(top + h / 2 - y) + abs(left + w / 2 - x) for top, left in windows]
            index = int(np.argmin(distances))
            return WindowSpec(case_index, s, *windows[index], index)
        height, width = padded_size(self.cases[case_index].data.shape[-2:], self.window)
        top = int(np.clip(y - h // 2, 0, height - h))
        left = int(np.clip(x - w // 2, 0, width - w))
        return WindowSpec(case_index, s, top, left)


def build_augmentation(
    config: AugmentationConfig, window: Sequence[int], *, p_spatial: float | None = None
) -> Compose:
    """nnU-Net's 2D augmentation pipeline (batchgenerators) for ``B x (D*C) x H x W`` batches.

    The spatial transform returns the centre ``window`` of its input, so an input larger than the window
    (context around it) fills the corners of a rotated or zoomed-out window with real image.

    Args:
        config: ranges and switches.
        window: ``(h, w)`` of the output.
        p_spatial: per-sample probability of rotation and of scaling; None -> ``config.p_spatial``.
    """
    angle = np.deg2rad(config.rotation_degrees)
    do_scale = tuple(config.scale_range) != (1.0, 1.0)
    p_spatial = config.p_spatial if p_spatial is None else p_spatial
    transforms = [
        SpatialTransform(
            tuple(window),
            patch_center_dist_from_border=None,
            do_elastic_deform=config.elastic,
            alpha=(0.0, 200.0),
            sigma=(9.0, 13.0),
            do_rotation=angle > 0,
            angle_x=(-angle, angle),
            do_scale=do_scale,
            scale=tuple(config.scale_range),
            border_mode_data="constant",
            border_cval_data=0,
            order_data=3,
            border_mode_seg="constant",
            border_cval_seg=0,
            order_seg=0,
            random_crop=False,
            p_el_per_sample=p_spatial if config.elastic else 0,
            p_rot_per_sample=p_spatial,
            p_scale_per_sample=p_spatial,
        )
    ]
    if tuple(config.class_intensity_range) != (1.0, 1.0):
        transforms.append(ClassIntensityTransform(config.class_intensity_range, config.p_class_intensity))
    if config.noise_variance > 0:
        transforms.append(GaussianNoiseTransform(noise_variance=(0, config.noise_variance), p_per_sample=0.1))
    if max(config.blur_sigma) > 0:
        transforms.append(
            GaussianBlurTransform(
                tuple(config.blur_sigma),
                different_sigma_per_channel=True,
                p_per_sample=0.2,
                p_per_channel=0.5,
            )
        )
    if tuple(config.brightness_range) != (1.0, 1.0):
        transforms.append(
            BrightnessMultiplicativeTransform(
                tuple(config.brightness_range), per_channel=False, p_per_sample=0.15
            )
        )
    if tuple(config.contrast_range) != (1.0, 1.0):
        transforms.append(
            ContrastAugmentationTransform(tuple(config.contrast_range), per_channel=False, p_per_sample=0.15)
        )
    if tuple(config.low_resolution_range) != (1.0, 1.0):
        transforms.append(
            SimulateLowResolutionTransform(
                zoom_range=tuple(config.low_resolution_range),
                per_channel=False,
                order_downsample=0,
                order_upsample=3,
                p_per_sample=0.25,
            )
        )
    if tuple(config.gamma_range) != (1.0, 1.0):
        for invert, probability in ((True, 0.1), (False, 0.3)):  # nnU-Net: inverted gamma, then gamma
            transforms.append(
                GammaTransform(
                    tuple(config.gamma_range),
                    invert_image=invert,
                    per_channel=False,
                    retain_stats=True,
                    p_per_sample=probability,
                )
            )
    if config.mirror:
        transforms.append(MirrorTransform(axes=(0, 1)))
    return Compose(transforms)


def run_seeded(augmentation: Compose, seed: int, **batch: np.ndarray) -> dict[str, np.ndarray]:
    """Apply a batchgenerators pipeline reproducibly.

    batchgenerators draws from numpy's and Python's global generators; both are seeded with ``seed``.
    """
    np.random.seed(seed)
    random.seed(seed)
    return augmentation(**batch)


def zoomed_view_box(
    tight: RoiBox | None, zoom: ZoomConfig, window: Sequence[int], rng: np.random.Generator
) -> RoiBox | None:
    """The region of interest an augmented sample shows, or None for a window of the slice: with probability
    ``zoom.views``, the case's ground-truth square ``tight`` (:func:`~pipeline.roi_zoom.foreground_box`)
    jittered as a first pass would find it (:func:`~pipeline.roi_zoom.jittered_box`)."""
    if tight is None or rng.random() >= zoom.views:
        return None
    return jittered_box(tight, margin=zoom.margin, window=window, max_factor=zoom.max_factor, rng=rng)


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose item ``i`` is batch ``i`` of one epoch (use with ``batch_size=None``).

    Args:
        sampler: chooses the windows.
        batch_size: samples per batch.
        stack_depth: ``D`` (1 for 2d).
        seed, stream, epoch: seed the batch generators (``stream`` separates training and validation).
        length: batches per epoch.
        augmentation: batchgenerators pipeline (free-window mode), or None.
        embedding_files: per case the ``S' x W x 256 x 64 x 64`` cache file (fixed-window mode; ``S'``
            the sampler's cached slices); opened
            memory-mapped on first use in the process that makes the batches.
        views: augmented views of the cases (a ``pipeline.training.augmented_views.ViewCache`` built for
            them, with ``embedding_files``); each sample then draws one of its ``count`` views.
        zoom: free-window mode: a sample is, with probability ``zoom.views``, the case's region of interest
            enlarged to the window (:func:`zoomed_view_box`) before ``augmentation``; None: never.
        centre_target_only: stacks keep only their centre slice's labels, ``B x 1 x h x w`` (for a model
            that decodes centre slices only); the images and embeddings keep all ``D`` slices.
    """

    def __init__(
        self,
        sampler: WindowSampler,
        *,
        batch_size: int,
        stack_depth: int,
        seed: int,
        stream: int,
        epoch: int,
        length: int,
        augmentation: Compose | None = None,
        embedding_files: Sequence[Path] | None = None,
        views: ViewCache | None = None,
        zoom: ZoomConfig | None = None,
        centre_target_only: bool = False,
    ) -> None:
        if embedding_files is not None and not sampler.fixed:
            raise ValueError("cached embeddings need a fixed-window sampler")
        if views is not None and embedding_files is None:
            raise ValueError("augmented views come with the embedding cache: give embedding_files too")
        self.sampler = sampler
        self.batch_size = batch_size
        self.stack_depth = stack_depth
        self.seed = seed
        self.stream = stream
        self.epoch = epoch
        self.length = length
        self.augmentation = augmentation
        self.embedding_files = None if embedding_files is None else list(embedding_files)
        self._embeddings: list[np.ndarray] | None = None
        self.views = views if views is not None and views.count > 1 else None
        self._views: list[CaseViews] | None = None
        self.zoom = zoom if embedding_files is None else None
        self._tight: dict[int, RoiBox | None] = {}
        self.centre_target_only = centre_target_only and stack_depth > 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.stream, self.epoch, iteration])
        specs = self.sampler.sample(rng, self.batch_size)
        if self.embedding_files is not None and self._embeddings is None:
            self._embeddings = [np.load(path, mmap_mode="r") for path in self.embedding_files]
        if self.views is not None and self._views is None:
            self._views = [self.views.open(case.name) for case in self.sampler.cases]
        images, targets, embeddings = [], [], []
        for spec in specs:
            case = self.sampler.cases[spec.case]
            stack = stack_indices(case.num_slices, self.stack_depth)[spec.slice].numpy()
            view = int(rng.integers(self.views.count)) if self._views is not None else 0
            if self._embeddings is not None:
                rows = np.searchsorted(
                    self.sampler.slices[spec.case], stack
                )  # slice -> row of the cache file
            if view > 0:
                case_views = self._views[spec.case]
                images.append(np.asarray(case_views.images[view - 1, rows, spec.window_index]))
                targets.append(np.asarray(case_views.labels[view - 1, rows, spec.window_index]))
                embeddings.append(np.asarray(case_views.embeddings[view - 1, rows, spec.window_index]))
                continue
            data = np.asarray(case.data[:, stack])  # C x D x H x W
            roi = self._zoomed_box(spec.case, rng) if self.zoom is not None else None
            if roi is not None:
                window = self.sampler.window
                images.append(zoom_in(torch.from_numpy(data), roi, window).numpy().transpose(1, 0, 2, 3))
                seg = torch.from_numpy(np.asarray(case.seg[stack]))
                targets.append(zoom_in(seg, roi, window, labels=True).numpy())
                continue
            images.append(crop_window(data, spec.top, spec.left, self.sampler.window).transpose(1, 0, 2, 3))
            targets.append(crop_window(np.asarray(case.seg[stack]), spec.top, spec.left, self.sampler.window))
            if self._embeddings is not None:
                embeddings.append(np.asarray(self._embeddings[spec.case][rows, spec.window_index]))
        image_batch = np.stack(images).astype(np.float32)  # B x D x C x h x w
        target_batch = np.stack(targets).astype(np.int16)  # B x D x h x w
        if self.augmentation is not None:
            image_batch, target_batch = self._augment(image_batch, target_batch, rng)
        if self.centre_target_only:
            centre = self.stack_depth // 2
            target_batch = target_batch[:, centre : centre + 1]
        batch = Batch(
            images=torch.from_numpy(image_batch),
            target=torch.from_numpy(target_batch.astype(np.int64)),
            embeddings=torch.from_numpy(np.stack(embeddings)) if embeddings else None,
        )
        if self.stack_depth == 1:
            batch = Batch(
                images=batch.images[:, 0],
                target=batch.target[:, 0],
                embeddings=None if batch.embeddings is None else batch.embeddings[:, 0],
            )
        return batch

    def _zoomed_box(self, case_index: int, rng: np.random.Generator) -> RoiBox | None:
        if case_index not in self._tight:
            self._tight[case_index] = foreground_box(np.asarray(self.sampler.cases[case_index].seg) > 0)
        return zoomed_view_box(self._tight[case_index], self.zoom, self.sampler.window, rng)

    def _augment(
        self, images: np.ndarray, targets: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply the pipeline to ``B x D x C x h x w`` images and ``B x D x h x w`` labels.

        It is seeded from this batch's generator, so the augmentation is as reproducible as the sampling.
        """
        b, d, c, h, w = images.shape
        out = run_seeded(
            self.augmentation,
            int(rng.integers(2**32)),
            data=images.reshape(b, d * c, h, w),
            seg=targets.astype(np.float32),
        )
        augmented = np.clip(out["data"], 0.0, 1.0).astype(np.float32).reshape(b, d, c, h, w)
        return augmented, np.rint(out["seg"]).astype(np.int16)


def batch_loader(dataset: BatchDataset, *, num_workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """Batches of ``dataset`` in order, made by ``num_workers`` background processes (0: inline)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
