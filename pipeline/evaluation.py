"""Segmentation metrics per case and class (MONAI), and folder-level evaluation with summary.json / .csv.

Metrics, per case and foreground class, in millimetres where they are distances:

- ``dice`` and ``iou``: :func:`monai.metrics.compute_dice` / :func:`monai.metrics.compute_iou`;
- ``hd95``: symmetric 95th-percentile Hausdorff distance, :func:`monai.metrics.compute_hausdorff_distance`
  (the larger of the two directed 95th percentiles of boundary-voxel distances);
- ``asd``: symmetric average surface distance, :func:`monai.metrics.compute_average_surface_distance`;
- ``n_ref`` / ``n_pred``: voxels of the class in the reference / prediction.

Edge cases, as nnU-Net defines them, and kept the same everywhere:

- class absent from both reference and prediction: every metric is NaN (``null`` in JSON, empty in CSV) and
  the case is left out of that class's mean;
- class present in only one of the two: ``dice`` = ``iou`` = 0, and ``hd95`` = ``asd`` = the image diagonal
  in mm (the largest distance possible in that image), so a missed or hallucinated structure is penalised
  and means stay finite.

``mean`` holds per-class means over the cases where the class is not NaN; ``foreground_mean`` is the mean of
those class means (nnU-Net's definition).
"""

from __future__ import annotations

import contextlib
import csv
import math
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from tqdm import tqdm

from autoprompt.errors import AutoPromptError
from pipeline.files import atomic_path, save_json
from pipeline.io import SUPPORTED_SUFFIXES, Geometry, read_image

METRICS = ("dice", "iou", "hd95", "asd")
"""The metrics averaged in ``mean`` and ``foreground_mean``."""
COUNTS = ("n_ref", "n_pred")
"""Voxel counts reported per case and class (not averaged)."""
EDGE_CASES = (
    "class absent in reference and prediction: all metrics null, excluded from means; "
    "present in only one: dice = iou = 0, hd95 = asd = image diagonal in mm"
)


def evaluate_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    labels: Sequence[int],
    spacing: Sequence[float] | None,
) -> dict[int, dict[str, float]]:
    """Dice, IoU, HD95 and ASD of one prediction against its reference, per class.

    Args:
        reference: integer label map, ``Z x Y x X`` or ``Y x X``.
        prediction: integer label map of the same shape.
        labels: foreground label values to evaluate (0, background, is never evaluated).
        spacing: voxel size in mm per array axis, in the array's axis order (``(z, y, x)`` for a
            ``Z x Y x X`` array, i.e. SimpleITK spacing reversed); ``None`` for 1 per axis (voxel units).

    Returns:
        ``{label: {"dice", "iou", "hd95", "asd", "n_ref", "n_pred"}}``, NaN where the class is absent from
        both (see the module docstring for the edge cases).

    Raises:
        ValueError: shapes differ, or ``spacing`` has the wrong length.
    """
    if reference.shape != prediction.shape:
        raise ValueError(
            f"reference shape {reference.shape} differs from prediction shape {prediction.shape}"
        )
    spacing = (1.0,) * reference.ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {spacing} needs one value per axis of a {reference.ndim}D array")
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(reference.shape, spacing, strict=True)))
    with _one_torch_thread():
        return {
            int(label): _class_metrics(
                reference == label, prediction == label, spacing=spacing, diagonal=diagonal
            )
            for label in labels
            if int(label) != 0
        }


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: MONAI's many small tensor ops are several times slower with more threads
    on a busy CPU (thread start-up and spinning cost more than the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _class_metrics(
    ref: np.ndarray, pred: np.ndarray, *, spacing: tuple[float, ...], diagonal: float
) -> dict[str, float]:
    """The metrics of one binary class mask pair (any shape, same shape)."""
    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    counts = {"n_ref": n_ref, "n_pred": n_pred}
    if n_ref == 0 and n_pred == 0:
        return {**dict.fromkeys(METRICS, math.nan), **counts}
    ref, pred = _crop_to_union(ref, pred)
    y, y_pred = torch.from_numpy(ref)[None, None], torch.from_numpy(pred)[None, None]
    overlap = {
        "dice": float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)),
        "iou": float(compute_iou(y_pred, y, include_background=True, ignore_empty=False)),
    }
    if n_ref == 0 or n_pred == 0:
        return {**overlap, "hd95": diagonal, "asd": diagonal, **counts}
    with warnings.catch_warnings():  # MONAI's own use of a deprecated argument warns on every call
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=spacing
        )
    return {**overlap, "hd95": float(hd95), "asd": float(asd), **counts}


def _crop_to_union(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus a 1-voxel margin (metrics are unchanged)."""
    nonzero = np.nonzero(ref | pred)
    box = tuple(
        slice(max(int(axis.min()) - 1, 0), min(int(axis.max()) + 2, size))
        for axis, size in zip(nonzero, ref.shape, strict=True)
    )
    return np.ascontiguousarray(ref[box]), np.ascontiguousarray(pred[box])


@dataclass(frozen=True)
class _CasePair:
    case: str
    reference: Path
    prediction: Path


def evaluate_folders(
    reference_folder: str | os.PathLike,
    prediction_folder: str | os.PathLike,
    *,
    labels: Mapping[str, int] | Sequence[int] | None = None,
    output_json: str | os.PathLike | None = None,
    num_processes: int = 2,
) -> dict:
    """Evaluate every prediction against the reference with the same case name.

    Case names are file names without their image ending (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``,
    ``.png``, ...); both folders must hold the same cases, each pair with the same geometry.

    Args:
        reference_folder: ground-truth label maps (e.g. ``labelsTs``).
        prediction_folder: predicted label maps.
        labels: foreground classes, as dataset.json's ``{"name": value}`` or a list of values; ``None`` for
            the union of the values found in the references. Background (0) is never evaluated.
        output_json: where to write ``summary.json`` (``summary.csv`` goes next to it); ``None`` writes nothing.
        num_processes: cases evaluated in parallel.

    Returns:
        The summary (JSON-able): ``labels``, ``per_case``, ``mean``, ``foreground_mean``, ``edge_cases``.

    Raises:
        AutoPromptError: a folder is missing or empty, the case sets differ, a file is unreadable or not a
            label map, geometries differ, or no foreground label is left to evaluate.
    """
    output_json = None if output_json is None else Path(output_json)
    if output_json is not None and output_json.suffix != ".json":
        raise AutoPromptError(f"{output_json}: the summary is JSON; name it e.g. summary.json")
    names = _label_names(labels)
    pairs = _pair_cases(Path(reference_folder), Path(prediction_folder))
    results = _run_cases(pairs, labels=None if names is None else sorted(names), num_processes=num_processes)
    if names is None:
        found = sorted(set().union(*(result["reference_labels"] for result in results)))
        if not found:
            raise AutoPromptError(
                f"{reference_folder}: the references hold no foreground label; pass --labels or -d DATASET"
            )
        names = {value: str(value) for value in found}
    summary = _summarise(pairs, results, names)
    if output_json is not None:
        save_json(summary, output_json)
        _write_csv(summary, output_json.with_suffix(".csv"))
    return summary


def _label_names(labels: Mapping[str, int] | Sequence[int] | None) -> dict[int, str] | None:
    """``{value: name}`` of the foreground labels asked for, or None for "found in the references"."""
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        pairs = labels.items()
    else:
        pairs = ((str(value), value) for value in labels)
    names = {}
    for name, value in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise AutoPromptError(
                f"label '{name}' has value {value!r}; only integer labels can be evaluated (no region lists)"
            )
        if int(value) != 0:
            names[int(value)] = name
    if not names:
        raise AutoPromptError(
            "no foreground label to evaluate (only background 0 given); pass labels like 1 2 3"
        )
    return names


def _list_label_files(folder: Path) -> dict[str, Path]:
    """``{case: file}`` of the image files directly in ``folder``."""
    if not folder.is_dir():
        raise AutoPromptError(f"{folder}: no such folder; pass the folder that holds the label files")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in SUPPORTED_SUFFIXES if path.name.lower().endswith(s)), None)
        if path.name.startswith(".") or not path.is_file() or suffix is None:
            continue
        case = path.name[: -len(suffix)]
        if case in files:
            raise AutoPromptError(
                f"{folder}: case '{case}' has two files ({files[case].name}, {path.name}); keep one"
            )
        files[case] = path
    if not files:
        raise AutoPromptError(
            f"{folder}: holds no label files ({', '.join(SUPPORTED_SUFFIXES)}); pass the folder with the label maps"
        )
    return files


def _pair_cases(reference_folder: Path, prediction_folder: Path) -> list[_CasePair]:
    references = _list_label_files(reference_folder)
    predictions = _list_label_files(prediction_folder)
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing or extra:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} without prediction in {prediction_folder}: {_short_list(missing)}"
            )
        if extra:
            problems.append(f"{len(extra)} without reference in {reference_folder}: {_short_list(extra)}")
        raise AutoPromptError(
            f"reference and prediction cases differ ({'; '.join(problems)}); predict the missing cases or remove "
            "the extra files"
        )
    return [_CasePair(case, references[case], predictions[case]) for case in sorted(references)]


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


def _run_cases(pairs: list[_CasePair], *, labels: list[int] | None, num_processes: int) -> list[dict]:
    """Evaluate all pairs (in worker processes when ``num_processes > 1``), in the order of ``pairs``."""
    progress = {"total": len(pairs), "desc": "evaluating", "unit": "case", "disable": None}
    if num_processes <= 1 or len(pairs) == 1:
        return [_evaluate_pair(pair, labels) for pair in tqdm(pairs, **progress)]
    # fork starts workers without re-importing torch and MONAI (seconds each); workers use CPU tensors only
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    workers = min(num_processes, len(pairs))
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(tqdm(pool.map(_evaluate_pair, pairs, [labels] * len(pairs)), **progress))


def _evaluate_pair(pair: _CasePair, labels: list[int] | None) -> dict:
    """Read one reference/prediction pair, check it, and evaluate it.

    With ``labels=None`` every label present in either file is evaluated and the reference's labels are
    returned, so the caller can settle on the union over all references without reading the files twice.
    """
    reference, reference_geometry = _read_label_map(pair.reference)
    prediction, prediction_geometry = _read_label_map(pair.prediction)
    differing = reference_geometry.mismatches(prediction_geometry)
    if differing:
        details = ", ".join(
            f"{name} {getattr(prediction_geometry, name)} vs {getattr(reference_geometry, name)}"
            for name in differing
        )
        raise AutoPromptError(
            f"{pair.prediction}: geometry differs from reference {pair.reference} ({details}); "
            "write predictions in the reference image's geometry (autoprompt predict does)"
        )
    reference_labels = {int(v) for v in np.unique(reference)} - {0}
    evaluated = (
        labels if labels is not None else sorted(reference_labels | {int(v) for v in np.unique(prediction)})
    )
    metrics = evaluate_case(
        reference, prediction, labels=evaluated, spacing=tuple(reversed(reference_geometry.spacing))
    )
    return {"metrics": metrics, "reference_labels": reference_labels}


def _read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A label map as non-negative integers, or AutoPromptError naming the file."""
    array, geometry = read_image(path)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise AutoPromptError(
                f"{path}: holds non-integer values, so it is not a label map; pass label maps (e.g. labelsTs)"
            )
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise AutoPromptError(
            f"{path}: holds negative values, so it is not a label map; pass label maps (e.g. labelsTs)"
        )
    return array, geometry


def _summarise(pairs: list[_CasePair], results: list[dict], names: dict[int, str]) -> dict:
    """Per-case metrics for the chosen labels, per-class means and the foreground mean, JSON-able."""
    absent = {**dict.fromkeys(METRICS, math.nan), **dict.fromkeys(COUNTS, 0)}
    per_case = []
    for pair, result in zip(pairs, results, strict=True):
        metrics = {str(label): _jsonable(result["metrics"].get(label, absent)) for label in sorted(names)}
        per_case.append(
            {
                "case": pair.case,
                "reference_file": str(pair.reference),
                "prediction_file": str(pair.prediction),
                "metrics": metrics,
            }
        )
    mean = {}
    for label in sorted(names):
        values = {m: [case["metrics"][str(label)][m] for case in per_case] for m in METRICS}
        mean[str(label)] = {m: _nanmean(v) for m, v in values.items()}
        mean[str(label)]["num_cases"] = sum(v is not None for v in values["dice"])
    foreground_mean = {m: _nanmean([mean[str(label)][m] for label in sorted(names)]) for m in METRICS}
    return {
        "labels": {names[label]: label for label in sorted(names)},
        "edge_cases": EDGE_CASES,
        "per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground_mean,
    }


def _jsonable(metrics: dict[str, float]) -> dict[str, float | int | None]:
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in metrics.items()
    }


def _nanmean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _write_csv(summary: dict, path: Path) -> None:
    """One row per case and class; empty cells for null metrics."""
    names = {value: name for name, value in summary["labels"].items()}
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "label", "name", *METRICS, *COUNTS])
        for case in summary["per_case"]:
            for label, metrics in case["metrics"].items():
                cells = ["" if metrics[k] is None else metrics[k] for k in (*METRICS, *COUNTS)]
                writer.writerow([case["case"], label, names[int(label)], *cells])


def format_table(summary: dict) -> str:
    """A short plain-text table of the per-class means and the foreground mean."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [f"{'label':>5}  {'name':<20} {'Dice':>6} {'IoU':>6} {'HD95 mm':>8} {'ASD mm':>7} {'cases':>5}"]
    for name, value in summary["labels"].items():
        m = summary["mean"][str(value)]
        rows.append(
            f"{value:>5}  {name[:20]:<20} {cell(m['dice'], 4):>6} {cell(m['iou'], 4):>6} "
            f"{cell(m['hd95'], 2):>8} {cell(m['asd'], 2):>7} {m['num_cases']:>5}"
        )
    f = summary["foreground_mean"]
    rows.append(
        f"{'':>5}  {'foreground mean':<20} {cell(f['dice'], 4):>6} {cell(f['iou'], 4):>6} "
        f"{cell(f['hd95'], 2):>8} {cell(f['asd'], 2):>7}"
    )
    return "\n".join(rows)
