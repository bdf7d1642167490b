"""The dataset fingerprint: what the planner needs to know about a raw dataset (nnU-Net's idea).

Per case: spacing, shape and shape after cropping to the nonzero region (nnunetv2's ``crop_to_nonzero``).
Per channel: intensity statistics of foreground voxels (label > 0), pooled over cases from at most
:data:`SAMPLES_PER_CASE` voxels per case, as nnU-Net's ``DatasetFingerprintExtractor`` does. Spacings and
shapes are in array order ``(Z, Y, X)`` (``(Y, X)`` for 2D datasets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

from autoprompt.errors import AutoPromptError
from pipeline.case_io import read_case
from pipeline.io import read_image
from pipeline.parallel import parallel_map

if TYPE_CHECKING:
    from pipeline.dataset import RawDataset

SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 99.5)


def extract_fingerprint(dataset: RawDataset, *, num_processes: int = 2, seed: int = 1234) -> dict[str, Any]:
    """Fingerprint a raw dataset.

    Args:
        dataset: the raw dataset (case files, channel names, labels).
        num_processes: worker processes reading cases.
        seed: seeds the foreground voxel sampling (case ``i`` uses ``seed + i``).

    Returns:
        JSON-able dict: ``dataset_name``, ``ndim``, ``channel_names``, ``labels``, ``cases`` (per case
        ``spacing``, ``shape``, ``shape_after_crop``), ``median_spacing``, ``median_shape_after_crop`` and
        ``foreground_intensity_properties_per_channel`` (``mean``, ``std``, ``min``, ``max``, ``median``,
        ``percentile_00_5``, ``percentile_99_5`` per channel index).

    Raises:
        AutoPromptError: no label of the dataset has a foreground voxel.
    """
    case_ids = sorted(dataset.cases)
    jobs = [
        (dataset.cases[case].images, len(dataset.channel_names), dataset.cases[case].label, seed + index)
        for index, case in enumerate(case_ids)
    ]
    results = parallel_map(_case_fingerprint, jobs, num_processes=num_processes, desc="fingerprint")
    cases = {case: result["case"] for case, result in zip(case_ids, results, strict=True)}
    _check_one_dimensionality(dataset, cases)
    intensities = {}
    for channel in range(len(dataset.channel_names)):
        samples = np.concatenate([result["samples"][channel] for result in results])
        if samples.size == 0:
            raise AutoPromptError(
                f"{dataset.folder / 'labelsTr'}: no label map has a foreground voxel (label > 0); "
                "check that the labels are the right files"
            )
        intensities[str(channel)] = _intensity_statistics(samples)
    return {
        "dataset_name": dataset.name,
        "ndim": len(next(iter(cases.values()))["shape"]),
        "channel_names": dict(dataset.channel_names),
        "labels": dict(dataset.labels),
        "num_cases": len(cases),
        "median_spacing": np.median([c["spacing"] for c in cases.values()], axis=0).tolist(),
        "median_shape_after_crop": np.median(
            [c["shape_after_crop"] for c in cases.values()], axis=0
        ).tolist(),
        "foreground_intensity_properties_per_channel": intensities,
        "cases": cases,
    }


def _check_one_dimensionality(dataset: RawDataset, cases: dict[str, dict]) -> None:
    """Refuse a dataset mixing 2D and 3D images (its spacings and shapes have no common median).

    Raises:
        AutoPromptError: naming a case of the rarer kind and the fix.
    """
    from pipeline.dataset import mixed_dimension_problems

    problems = mixed_dimension_problems(dataset, {case: len(c["shape"]) for case, c in cases.items()})
    if problems:
        more = f" ({len(problems) - 1} more such case(s))" if len(problems) > 1 else ""
        raise AutoPromptError(problems[0] + more)


def _case_fingerprint(job: tuple) -> dict[str, Any]:
    """Spacing, shapes and foreground intensity samples of one case."""
    images, num_channels, label_file, seed = job
    data, geometry = read_case(images, num_channels=num_channels)
    foreground = np.zeros(data.shape[1:], dtype=bool)
    if label_file is not None:
        labels, _ = read_image(label_file)
        foreground = labels.reshape(data.shape[1:]) > 0
    cropped, _, _ = crop_to_nonzero(data)
    spacing = [float(s) for s in reversed(geometry.spacing)]
    is_2d = geometry.ndim == 2
    rng = np.random.default_rng(seed)
    samples = []
    for channel in data:
        values = channel[foreground]
        if values.size > SAMPLES_PER_CASE:
            values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float64))
    return {
        "case": {
            "spacing": spacing,
            "shape": [int(v) for v in data.shape[2 if is_2d else 1 :]],
            "shape_after_crop": [int(v) for v in cropped.shape[2 if is_2d else 1 :]],
        },
        "samples": samples,
    }


def _intensity_statistics(values: np.ndarray) -> dict[str, float]:
    low, high = np.percentile(values, PERCENTILES)
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "median": float(np.median(values)),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
    }
