"""Segmentation metrics per case and class (MONAI), and folder-level evaluation with summary.json / .csv.

Metrics, per case and foreground class, in millimetres where they are distances (the names are nnU-Net's,
so scripts written for its ``summary.json`` read this one; ``HD95`` and ``ASD`` are extra):

- ``Dice`` and ``IoU``: :func:`monai.metrics.compute_dice` / :func:`monai.metrics.compute_iou`;
- ``HD95``: symmetric 95th-percentile Hausdorff distance, :func:`monai.metrics.compute_hausdorff_distance`
  (the larger of the two directed 95th percentiles of boundary-voxel distances);
- ``ASD``: symmetric average surface distance, :func:`monai.metrics.compute_average_surface_distance`;
- ``TP`` / ``FP`` / ``FN`` / ``TN``: voxel counts; ``n_ref`` / ``n_pred``: voxels of the class in the
  reference / prediction.

An ignore label (dataset.json's ``"ignore"``, nnU-Net's sparse annotation) is never evaluated, and the
voxels that hold it in the reference are left out of every metric of every class, as nnU-Net does.

Edge cases, as nnU-Net defines them, and kept the same everywhere:

- class absent from both reference and prediction: every metric is NaN (``null`` in JSON, empty in CSV) and
  the case is left out of that class's mean;
- class present in only one of the two: ``dice`` = ``iou`` = 0, and ``hd95`` = ``asd`` = the image diagonal
  in mm (the largest distance possible in that image), so a missed or hallucinated structure is penalised
  and means stay finite.

``mean`` holds per-class means over the cases where the class is not NaN; ``foreground_mean`` is the mean of
those class means (nnU-Net's definition). ``summary.json`` is in nnU-Net's layout: ``metric_per_case``
(``reference_file``, ``prediction_file``, ``metrics`` by label; ``case`` added), ``mean``, ``foreground_mean``,
plus ``labels``, ``ignore_label`` and ``edge_cases``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
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

from autoprompt.errors import AutoPromptError, short_list
from autoprompt.progress import progress
from pipeline.files import atomic_path, check_output_file, save_json
from pipeline.io import SUPPORTED_SUFFIXES, Geometry, read_image

METRICS = ("Dice", "IoU", "HD95", "ASD")
"""The metrics, NaN (``null``) for a class absent from both files; averaged over the other cases."""
COUNTS = ("TP", "FP", "FN", "TN", "n_ref", "n_pred")
"""Voxel counts per case and class (averaged over all cases in ``mean``, as nnU-Net does)."""
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
    ignore_label: int | None = None,
) -> dict[int, dict[str, float]]:
    """Dice, IoU, HD95, ASD and voxel counts of one prediction against its reference, per class.

    Args:
        reference: integer label map, ``Z x Y x X`` or ``Y x X``.
        prediction: integer label map of the same shape.
        labels: foreground label values to evaluate (0, background, and ``ignore_label`` never are).
        spacing: voxel size in mm per array axis, in the array's axis order (``(z, y, x)`` for a
            ``Z x Y x X`` array, i.e. SimpleITK spacing reversed); ``None`` for 1 per axis (voxel units).
        ignore_label: voxels holding this value in the reference are left out of every metric.

    Returns:
        ``{label: {"Dice", "IoU", "HD95", "ASD", "TP", "FP", "FN", "TN", "n_ref", "n_pred"}}``, NaN where the
        class is absent from both (see the module docstring for the edge cases).

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
    evaluated = reference.size
    if ignore_label is not None:
        ignored = reference == ignore_label
        if ignored.any():  # nnU-Net: these voxels count for nothing, in every class
            evaluated -= int(ignored.sum())
            reference = np.where(ignored, 0, reference)
            prediction = np.where(ignored, 0, prediction)
    with _one_torch_thread():
        return {
            int(label): _class_metrics(
                reference == label,
                prediction == label,
                spacing=spacing,
                diagonal=diagonal,
                evaluated=evaluated,
            )
            for label in labels
            if int(label) != 0 and int(label) != ignore_label
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
    ref: np.ndarray, pred: np.ndarray, *, spacing: tuple[float, ...], diagonal: float, evaluated: int
) -> dict[str, float]:
    """The metrics of one binary class mask pair (any shape, same shape); ``evaluated``: voxels not ignored."""
    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    tp = int(np.count_nonzero(ref & pred))
    counts = {
        "TP": tp,
        "FP": n_pred - tp,
        "FN": n_ref - tp,
        "TN": evaluated - n_ref - n_pred + tp,
        "n_ref": n_ref,
        "n_pred": n_pred,
    }
    if n_ref == 0 and n_pred == 0:
        return {**dict.fromkeys(METRICS, math.nan), **counts}
    ref, pred = _crop_to_union(ref, pred)
    y, y_pred = torch.from_numpy(ref)[None, None], torch.from_numpy(pred)[None, None]
    overlap = {
        "Dice": float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)),
        "IoU": float(compute_iou(y_pred, y, include_background=True, ignore_empty=False)),
    }
    if n_ref == 0 or n_pred == 0:
        return {**overlap, "HD95": diagonal, "ASD": diagonal, **counts}
    with warnings.catch_warnings():  # MONAI's own use of a deprecated argument warns on every call
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=spacing
        )
    return {**overlap, "HD95": float(hd95), "ASD": float(asd), **counts}


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
    ignore_label: int | None = None,
) -> dict:
    """Evaluate every prediction against the reference with the same case name.

    Case names are file names without their image ending (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``,
    ``.png``, ...); both folders must hold the same cases, each pair with the same geometry.

    Args:
        reference_folder: ground-truth label maps (e.g. ``labelsTs``).
        prediction_folder: predicted label maps.
        labels: foreground classes, as dataset.json's ``{"name": value}`` (an ``"ignore"`` entry is the
            ignore label) or a list of values; ``None`` for the union of the values found in the
            references. Background (0) is never evaluated.
        output_json: where to write ``summary.json`` (``summary.csv`` goes next to it); ``None`` writes nothing.
        num_processes: cases evaluated in parallel.
        ignore_label: reference voxels holding it are left out of every metric (nnU-Net's ignore label).

    Returns:
        The summary (JSON-able, nnU-Net's layout): ``metric_per_case``, ``mean``, ``foreground_mean``, and
        ``labels``, ``ignore_label``, ``edge_cases``.

    Raises:
        AutoPromptError: a folder is missing or empty, the case sets differ, a file is unreadable or not a
            label map, a file holds a value outside the labels, a label given as a list is in no file,
            geometries differ, or no foreground label is left to evaluate.
    """
    output_json = None if output_json is None else Path(output_json)
    if output_json is not None and output_json.suffix != ".json":
        raise AutoPromptError(f"{output_json}: the summary is JSON; name it e.g. summary.json")
    if output_json is not None:  # before any case is read: a bad -o fails at once, not after all the work
        check_output_file(output_json, option="-o")
    ignore_label = _ignore_label(labels, ignore_label)
    names = _label_names(labels, ignore_label)
    pairs = _pair_cases(Path(reference_folder), Path(prediction_folder))
    allowed = None if names is None else {0, *names, *([] if ignore_label is None else [ignore_label])}
    results = _run_cases(
        pairs,
        labels=None if names is None else sorted(names),
        ignore_label=ignore_label,
        allowed=allowed,
        num_processes=num_processes,
    )
    if names is None:
        found = sorted(set().union(*(result["reference_labels"] for result in results)) - {ignore_label})
        if not found:
            raise AutoPromptError(
                f"{reference_folder}: the references hold no foreground label; pass --labels or -d DATASET"
            )
        names = {value: str(value) for value in found}
        allowed = {0, *found, *([] if ignore_label is None else [ignore_label])}
        for pair, result in zip(pairs, results, strict=True):
            _check_values(pair.prediction, result["prediction_labels"], allowed, "in no reference")
    elif not isinstance(labels, Mapping):
        _check_labels_found(names, results, reference_folder, prediction_folder)
    summary = _summarise(pairs, results, names, ignore_label)
    if output_json is not None:
        save_json(summary, output_json)
        _write_csv(summary, output_json.with_suffix(".csv"))
    return summary


def _ignore_label(labels: Mapping[str, int] | Sequence[int] | None, ignore_label: int | None) -> int | None:
    """The ignore label: ``ignore_label``, or dataset.json's ``"ignore"`` entry (they must agree)."""
    declared = labels.get("ignore") if isinstance(labels, Mapping) else None
    if declared is not None and ignore_label is not None and int(declared) != int(ignore_label):
        raise AutoPromptError(
            f"ignore label given twice, {ignore_label} and dataset.json's 'ignore': {declared}; give one"
        )
    value = ignore_label if ignore_label is not None else declared
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0
    ):
        raise AutoPromptError(f"ignore label {value!r} must be a positive integer label value, e.g. 3")
    return None if value is None else int(value)


def _label_names(
    labels: Mapping[str, int] | Sequence[int] | None, ignore_label: int | None = None
) -> dict[int, str] | None:
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
        if int(value) < 0:
            raise AutoPromptError(f"label '{name}' has value {value}; label values are non-negative integers")
        if int(value) != 0 and int(value) != ignore_label:
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
                f"{len(missing)} without prediction in {prediction_folder}: {short_list(missing)}"
            )
        if extra:
            problems.append(f"{len(extra)} without reference in {reference_folder}: {short_list(extra)}")
        raise AutoPromptError(
            f"reference and prediction cases differ ({'; '.join(problems)}); predict the missing cases or remove "
            "the extra files"
        )
    return [_CasePair(case, references[case], predictions[case]) for case in sorted(references)]


def _run_cases(
    pairs: list[_CasePair],
    *,
    labels: list[int] | None,
    ignore_label: int | None,
    allowed: set[int] | None,
    num_processes: int,
) -> list[dict]:
    """Evaluate all pairs (in worker processes when ``num_processes > 1``), in the order of ``pairs``."""
    options = {"labels": labels, "ignore_label": ignore_label, "allowed": allowed}
    if num_processes <= 1 or len(pairs) == 1:
        return [
            _evaluate_pair(pair, **options)
            for pair in progress(pairs, total=len(pairs), desc="evaluating", unit="case")
        ]
    # fork starts workers without re-importing torch and MONAI (seconds each); workers use CPU tensors only
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    workers = min(num_processes, len(pairs))
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = pool.map(functools.partial(_evaluate_pair, **options), pairs)
        return list(progress(results, total=len(pairs), desc="evaluating", unit="case"))


def _evaluate_pair(
    pair: _CasePair, *, labels: list[int] | None, ignore_label: int | None, allowed: set[int] | None
) -> dict:
    """Read one reference/prediction pair, check it, and evaluate it.

    With ``labels=None`` every label present in either file is evaluated and the labels of both files are
    returned, so the caller can settle on the union over all references without reading the files twice.
    With ``allowed``, a value outside it in either file is an AutoPromptError naming the file.
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
    prediction_labels = {int(v) for v in np.unique(prediction)} - {0}
    if allowed is not None:
        _check_values(pair.reference, reference_labels, allowed, "not among the labels evaluated")
        _check_values(pair.prediction, prediction_labels, allowed, "not among the labels evaluated")
    evaluated = labels if labels is not None else sorted(reference_labels | prediction_labels)
    metrics = evaluate_case(
        reference,
        prediction,
        labels=evaluated,
        spacing=tuple(reversed(reference_geometry.spacing)),
        ignore_label=ignore_label,
    )
    voxels = reference.size - (
        0 if ignore_label is None else int(np.count_nonzero(reference == ignore_label))
    )
    return {
        "metrics": metrics,
        "reference_labels": reference_labels,
        "prediction_labels": prediction_labels,
        "voxels": voxels,
    }


def _check_values(path: Path, values: set[int], allowed: set[int], why: str) -> None:
    """AutoPromptError naming ``path`` when it holds label values outside ``allowed``."""
    outside = sorted(values - allowed)
    if outside:
        shown = ", ".join(map(str, outside[:5])) + (", ..." if len(outside) > 5 else "")
        raise AutoPromptError(
            f"{path}: holds label value(s) {shown}, {why} ({', '.join(map(str, sorted(allowed)))}); "
            "pass every value the label maps hold (--labels or -d DATASET), or fix the file"
        )


def _check_labels_found(
    names: dict[int, str], results: list[dict], reference: Path, prediction: Path
) -> None:
    """AutoPromptError for labels given by value that no reference and no prediction holds (a typo)."""
    seen = set().union(*(r["reference_labels"] | r["prediction_labels"] for r in results))
    unknown = sorted(set(names) - seen)
    if unknown:
        raise AutoPromptError(
            f"label(s) {', '.join(map(str, unknown))} in no file of {reference} or {prediction}; "
            f"pass the values the label maps hold ({', '.join(map(str, sorted(seen))) or 'none but 0'})"
        )


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


def _summarise(
    pairs: list[_CasePair], results: list[dict], names: dict[int, str], ignore_label: int | None
) -> dict:
    """Per-case metrics for the chosen labels, per-class means and the foreground mean, JSON-able, in
    nnU-Net's layout (``metric_per_case``, ``mean``, ``foreground_mean``)."""
    per_case = []
    for pair, result in zip(pairs, results, strict=True):
        # a label found in other cases only (labels=None) is absent from both files of this one
        absent = {**dict.fromkeys(METRICS, math.nan), **dict.fromkeys(COUNTS, 0), "TN": result["voxels"]}
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
        values = {m: [case["metrics"][str(label)][m] for case in per_case] for m in (*METRICS, *COUNTS)}
        mean[str(label)] = {m: _nanmean(v) for m, v in values.items()}
        mean[str(label)]["num_cases"] = sum(v is not None for v in values["Dice"])
    foreground_mean = {
        m: _nanmean([mean[str(label)][m] for label in sorted(names)]) for m in (*METRICS, *COUNTS)
    }
    return {
        "labels": {names[label]: label for label in sorted(names)},
        "ignore_label": ignore_label,
        "edge_cases": EDGE_CASES,
        "metric_per_case": per_case,
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
        for case in summary["metric_per_case"]:
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
            f"{value:>5}  {name[:20]:<20} {cell(m['Dice'], 4):>6} {cell(m['IoU'], 4):>6} "
            f"{cell(m['HD95'], 2):>8} {cell(m['ASD'], 2):>7} {m['num_cases']:>5}"
        )
    f = summary["foreground_mean"]
    rows.append(
        f"{'':>5}  {'foreground mean':<20} {cell(f['Dice'], 4):>6} {cell(f['IoU'], 4):>6} "
        f"{cell(f['HD95'], 2):>8} {cell(f['ASD'], 2):>7}"
    )
    return "\n".join(rows)
