"""The one preprocessing function shared by training and inference, and its exact inverse.

A case ``(C channel files)`` becomes ``data`` (``C x S x H x W`` float32 in [0, 1]): cropped to its nonzero
region (nnunetv2's ``crop_to_nonzero``), normalised per channel as the plans say, the slice axis moved
first, and rows/columns resampled to the plans' target spacing (nnunetv2's ``resample_data_or_seg``; slices
are never resampled). ``properties`` (JSON-able) hold everything :func:`revert_probabilities` and
:func:`revert_segmentation` need to map a prediction back onto the original voxels.

At prediction (``fit_window``) a case whose slices would be larger than the window at the plans' spacing is
resampled coarser, so that each slice fits one window (:func:`prediction_spacing`), as SAM sees a whole image:
tiles of a slice show the model parts of a body it was not trained on.

A 2D image ``(Y, X)`` is one slice: ``C x 1 x H x W``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg

from autoprompt.errors import AutoPromptError
from pipeline.case_io import PSEUDO_SLICE_SPACING_2D, read_case
from pipeline.files import atomic_path, npy_complete, save_json
from pipeline.io import Geometry, read_image
from pipeline.parallel import parallel_map
from planners.plans import ChannelNormalization, ConfigurationPlan, Plans

if TYPE_CHECKING:
    from pipeline.dataset import RawDataset

DATA_ORDER = 3  # nnU-Net: cubic spline for images
SEG_ORDER = 1  # nnU-Net: linear on one-hot channels for label maps and probabilities
# ACDC CV: slices up to twice the window predicted whole, not tiled (docs/results.md, round 46)
MAX_FIT_COARSENING = 2.0


@dataclass
class PreprocessedCase:
    """One preprocessed case.

    Attributes:
        data: ``C x S x H x W`` float32 in [0, 1], slice axis first, rows/columns at the target spacing.
        seg: ``S x H x W`` int16 label map, or ``None`` without a label file.
        properties: JSON-able; what :func:`revert_probabilities` needs (see the module docstring).
    """

    data: np.ndarray
    seg: np.ndarray | None
    properties: dict[str, Any]


def spacing_zyx(geometry: Geometry) -> list[float]:
    """Spacing in array order ``(Z, Y, X)``; a 2D image gets :data:`PSEUDO_SLICE_SPACING_2D` as Z."""
    spacing = [float(s) for s in reversed(geometry.spacing)]
    return [PSEUDO_SLICE_SPACING_2D, *spacing] if geometry.ndim == 2 else spacing


def preprocess_case(
    image_files: Sequence[str | os.PathLike],
    plans: Plans,
    configuration: str,
    label_file: str | os.PathLike | None = None,
    *,
    image: tuple[np.ndarray, Geometry] | None = None,
    fit_window: bool = False,
) -> PreprocessedCase:
    """Crop, normalise, move the slice axis first and resample one case (training and inference alike).

    Args:
        image_files: one file per channel, in channel order (``{case}_0000``, ``{case}_0001``, ...).
        plans: the dataset's plans.
        configuration: ``"2d"`` or ``"3d"`` (they share the preprocessing).
        label_file: the label map, for training; ``None`` for inference.
        image: ``read_case(image_files, num_channels=...)`` when the caller has read the case already
            (it is not read again); None: read here.
        fit_window: resample slices larger than the window coarser until they fit it
            (:func:`prediction_spacing`; prediction); False: always the plans' spacing (training).

    Returns:
        The :class:`PreprocessedCase` (``data`` ``C x S x H x W``, ``seg`` ``S x H x W``).

    Raises:
        AutoPromptError: wrong number of channels, unreadable files, or geometries that do not agree.
    """
    plan = plans.configuration(configuration)
    data, geometry = image or read_case(image_files, num_channels=len(plans.channel_names))
    seg = None if label_file is None else _read_label(label_file, geometry)
    data, nonzero, bbox = crop_to_nonzero(data)
    inside = nonzero[0] >= 0
    if seg is not None:
        seg = seg[bounding_box_to_slice(bbox)]
    data = np.stack(
        [
            _normalize(channel, inside, norm, source=Path(image_files[min(index, len(image_files) - 1)]))
            for index, (channel, norm) in enumerate(zip(data, plans.normalization, strict=True))
        ]
    )

    slice_axis = 0 if geometry.ndim == 2 else plan.slice_axis
    transpose = [slice_axis, *(axis for axis in range(3) if axis != slice_axis)]
    spacing_before = [spacing_zyx(geometry)[axis] for axis in transpose]
    shape_after_crop = list(data.shape[1:])
    data = data.transpose(0, *(axis + 1 for axis in transpose))
    if fit_window:
        spacing_after = prediction_spacing(data.shape[1:], spacing_before, plan)
    else:
        spacing_after = [spacing_before[0], *plan.target_spacing[1:]]
    new_shape = [int(v) for v in compute_new_shape(data.shape[1:], spacing_before, spacing_after)]
    if min(new_shape) < 1:
        raise AutoPromptError(
            f"{image_files[0]}: spacing {_mm(geometry.spacing)} mm resamples to {new_shape} voxels at the plans' "
            f"{_mm(spacing_after[1:])} mm; fix the spacing in the image header (in mm)"
        )
    data = np.clip(_resample(data, new_shape, is_seg=False), 0.0, 1.0).astype(np.float32)
    if seg is not None:
        seg = _resample(seg.transpose(transpose)[None], new_shape, is_seg=True)[0].astype(np.int16)

    properties = {
        "geometry": geometry.to_dict(),
        "original_shape": [int(v) for v in reversed(geometry.size)],
        "crop_bbox": [[int(lo), int(hi)] for lo, hi in bbox],
        "shape_after_crop": shape_after_crop,
        "slice_axis": slice_axis,
        "transpose": transpose,
        "spacing_before_resampling": spacing_before,
        "spacing_after_resampling": spacing_after,
        "shape_after_resampling": new_shape,
        "data_identifier": plan.data_identifier,
    }
    if seg is not None:
        properties["class_slices"] = {
            str(label): np.flatnonzero((seg == label).any(axis=(1, 2))).tolist()
            for label in sorted(plans.labels.values())
            if label != 0
        }
    return PreprocessedCase(data=data, seg=seg, properties=properties)


def prediction_spacing(
    shape: Sequence[int], spacing: Sequence[float], plan: ConfigurationPlan
) -> list[float]:
    """The ``(slice, row, col)`` spacing a case is predicted at: the plans' target spacing, or, where its
    slices would be larger than the window there, coarser in-plane until they fit it, at most
    :data:`MAX_FIT_COARSENING` times (larger slices are then tiled). Plans that already tile on purpose
    (``inplane_rule`` ``"coarser_capped"``: the median slice does not fit) keep their spacing.

    Args:
        shape: ``(S, H, W)`` voxels, slice axis first.
        spacing: ``(S, H, W)`` spacing of those voxels in mm.
        plan: the configuration's plan.
    """
    target = [float(spacing[0]), *plan.target_spacing[1:]]
    if plan.inplane_rule == "coarser_capped":
        return target
    overflow = max(
        size * before / after / side
        for size, before, after, side in zip(
            shape[1:], spacing[1:], target[1:], plan.window_size, strict=True
        )
    )
    factor = min(max(overflow, 1.0), MAX_FIT_COARSENING)
    return [target[0], *(after * factor for after in target[1:])]


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{value:g}" for value in values)


def revert_probabilities(probabilities: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    """Map softmax probabilities from preprocessed space back onto the original voxels.

    Args:
        probabilities: ``(K+1) x S x H x W`` in preprocessed space.
        properties: the case's properties from :func:`preprocess_case`.

    Returns:
        ``(K+1) x Z x Y x X`` float32 (``(K+1) x Y x X`` for a 2D input); outside the crop, background is 1.
    """
    block, index = revert_probability_slices(probabilities, properties, first=0)
    full = np.zeros((len(probabilities), *properties["original_shape"]), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None), *index)] = block
    return full


def revert_probability_slices(
    probabilities: np.ndarray, properties: dict[str, Any], *, first: int
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Map consecutive preprocessed slices back onto the original voxels they came from.

    Slices are never resampled (only rows and columns), so any run of slices reverts on its own exactly as
    it does within the whole case: a case can be reverted slab by slab.

    Args:
        probabilities: ``(K+1) x n x H x W``: slices ``first .. first + n - 1`` in preprocessed space.
        properties: the case's properties from :func:`preprocess_case`.
        first: the index of the first of these slices in preprocessed space.

    Returns:
        The ``(K+1) x ...`` float32 block in the original axis order, and where it lies in the original
        ``(Z, Y, X)`` grid (``(Y, X)`` for a 2D input), i.e. ``full[(slice(None), *index)] = block``.
    """
    shape = [probabilities.shape[1], *_cropped_shape(properties)[1:]]
    resampled = _resample(probabilities, shape, is_seg=False, order=SEG_ORDER).astype(np.float32, copy=False)
    return _place(resampled, properties, first=first)


def revert_segmentation(seg: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    """Map a label map from preprocessed space back onto the original voxels.

    Args:
        seg: ``S x H x W`` integer labels in preprocessed space.
        properties: the case's properties from :func:`preprocess_case`.

    Returns:
        ``Z x Y x X`` labels (``Y x X`` for a 2D input) of ``seg``'s dtype; 0 outside the crop.
    """
    resampled = _resample(seg[None], _cropped_shape(properties), is_seg=True).astype(seg.dtype)
    block, index = _place(resampled, properties, first=0)
    full = np.zeros(properties["original_shape"], dtype=seg.dtype)
    full[index] = block[0]
    return full


def geometry_of(properties: dict[str, Any]) -> Geometry:
    """The original image geometry of a preprocessed case (write predictions with it)."""
    return Geometry.from_dict(properties["geometry"])


def run_preprocessing(
    raw: RawDataset,
    plans: Plans,
    out_folder: str | os.PathLike,
    *,
    num_processes: int = 2,
    configurations: Sequence[str] = ("2d", "3d"),
) -> None:
    """Preprocess every case of a raw dataset into ``out_folder/<data_identifier>/``.

    Writes ``{case}.npy`` (data), ``{case}_seg.npy`` (labels) and ``{case}.json`` (properties), each
    atomically, properties last. A case whose outputs exist and are newer than ``out_folder/plans.json``
    is skipped, so an interrupted run resumes and an edited plans.json re-preprocesses everything.

    Args:
        raw: the raw dataset (its cases' image and label files).
        plans: the dataset's plans.
        out_folder: the preprocessed dataset folder (holding plans.json).
        num_processes: worker processes.
        configurations: configurations to preprocess; those sharing a data_identifier are done once.
    """
    out_folder = Path(out_folder)
    plans_file = out_folder / "plans.json"
    plans_time = plans_file.stat().st_mtime if plans_file.is_file() else 0.0
    identifiers = {plans.configuration(name).data_identifier: name for name in configurations}
    for identifier, configuration in identifiers.items():
        folder = out_folder / identifier
        jobs = [
            (case, files.images, files.label, plans, configuration, folder)
            for case, files in sorted(raw.cases.items())
            if not _is_done(folder, case, has_label=files.label is not None, newer_than=plans_time)
        ]
        skipped = len(raw.cases) - len(jobs)
        desc = f"preprocessing {identifier}" + (f" ({skipped} done before)" if skipped else "")
        parallel_map(_preprocess_and_save, jobs, num_processes=num_processes, desc=desc)


def _is_done(folder: Path, case: str, *, has_label: bool, newer_than: float) -> bool:
    properties = folder / f"{case}.json"
    outputs = [folder / f"{case}.npy"] + ([folder / f"{case}_seg.npy"] if has_label else [])
    return (
        properties.is_file()
        and properties.stat().st_mtime >= newer_than
        and all(npy_complete(p) for p in outputs)  # a truncated array (a full disk, a bad copy) is redone
    )


def _preprocess_and_save(job: tuple) -> None:
    case, images, label, plans, configuration, folder = job
    result = preprocess_case(images, plans, configuration, label_file=label)
    with atomic_path(folder / f"{case}.npy") as tmp:
        np.save(tmp, result.data)
    if result.seg is not None:
        with atomic_path(folder / f"{case}_seg.npy") as tmp:
            np.save(tmp, result.seg)
    save_json(result.properties, folder / f"{case}.json")


def _read_label(label_file: str | os.PathLike, geometry: Geometry) -> np.ndarray:
    labels, label_geometry = read_image(label_file)
    if label_geometry.size != geometry.size:
        raise AutoPromptError(
            f"{label_file}: size {label_geometry.size} differs from its image's {geometry.size}; "
            "labels must lie on the image's voxel grid"
        )
    labels = labels.astype(np.int16, copy=False)
    return labels[None] if labels.ndim == 2 else labels


def _normalize(
    channel: np.ndarray, inside: np.ndarray, norm: ChannelNormalization, *, source: Path
) -> np.ndarray:
    """One channel ``Z x Y x X`` -> [0, 1] as ``norm`` says (see :class:`~planners.plans.ChannelNormalization`);
    ``inside`` marks the nonzero region (``mr``/``zscore`` statistics; outside it becomes 0).

    Raises:
        AutoPromptError: a ``nonorm``/``rgb_to_0_1`` channel of ``source`` with values outside its range.
    """

    def region() -> np.ndarray:
        return channel[inside] if inside.any() else channel.ravel()

    if norm.scheme in ("ct", "nonorm", "rgb_to_0_1"):
        low, high = norm.lower, norm.upper
        if norm.scheme != "ct" and channel.size and not low <= channel.min() <= channel.max() <= high:
            raise AutoPromptError(
                f"{source}: channel normalisation '{norm.scheme}' takes values in [{low:g}, {high:g}], the image "
                f"holds [{channel.min():g}, {channel.max():g}]; rescale it, or name the channel e.g. "
                "'rescale_to_0_1' or 'zscore' in dataset.json and plan again"
            )
    elif norm.scheme == "zscore":
        values = region()
        mean, std = float(values.mean()), float(values.std())
        low, high = mean + norm.lower * std, mean + norm.upper * std
    else:
        values = channel.ravel() if norm.scheme == "rescale_to_0_1" else region()
        low, high = (float(v) for v in np.percentile(values, [norm.lower, norm.upper]))
    if high <= low:
        return np.zeros_like(channel, dtype=np.float32)
    scaled = np.clip((channel - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if norm.scheme in ("mr", "zscore"):
        scaled[~inside] = 0.0
    return scaled


def _resample(
    array: np.ndarray, shape: Sequence[int], *, is_seg: bool, order: int | None = None
) -> np.ndarray:
    """Resample rows/columns of ``N x S x H x W`` to ``shape`` ``(S, H', W')`` slice by slice (nnunetv2)."""
    if order is None:
        order = SEG_ORDER if is_seg else DATA_ORDER
    return resample_data_or_seg(
        array, shape, is_seg=is_seg, axis=0, order=order, do_separate_z=True, order_z=0
    )


def _cropped_shape(properties: dict[str, Any]) -> list[int]:
    """``(S, H, W)`` of the cropped case before resampling (the slice axis first)."""
    return [properties["shape_after_crop"][axis] for axis in properties["transpose"]]


def _place(
    array: np.ndarray, properties: dict[str, Any], *, first: int
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Undo the transpose of ``N x n x H x W`` (slices ``first ..`` at the cropped size) and say where the
    block lies in the original grid: ``(block, index)`` with ``full[(slice(None), *index)] = block``."""
    transpose = properties["transpose"]
    bbox = [list(bounds) for bounds in properties["crop_bbox"]]
    start = bbox[transpose[0]][0] + first
    bbox[transpose[0]] = [start, start + array.shape[1]]
    block = array.transpose(0, *(int(axis) + 1 for axis in np.argsort(transpose)))
    index = tuple(bounding_box_to_slice(bbox))
    if len(properties["original_shape"]) == 2:  # a 2D input is one slice
        return block[:, 0], index[1:]
    return block, index
