"""Keep-the-largest-connected-component postprocessing, decided on validation cases by nnU-Net's rule.

Rules are a JSON file (``fold_K/postprocessing.json``, written by training)::

    {"steps": [[1, 2, 3], [2]],            # applied in order; each step merges the listed labels into one
                                           # mask and sets all but its largest connected component to 0
     "mean_dice_before": {"1": 0.91, ...}, "mean_dice_after": {"1": 0.92, ...},
     "foreground_dice_before": 0.88, "foreground_dice_after": 0.89, "num_cases": 32}

:func:`determine_postprocessing` follows ``nnunetv2.postprocessing.remove_connected_components``:
first all foreground labels as one region (kept when the mean foreground Dice improves and no class
gets worse), then each class on its own (kept when that class's mean Dice improves). Components are
removed with nnU-Net's own ``remove_all_but_largest_component_from_segmentation``; Dice comes from its
``compute_tp_fp_fn_tn`` (a class absent from both maps is NaN and left out of the mean, as in nnU-Net).

With several folds, :func:`combine_fold_rules` keeps only the steps that every fold chose: a
component is removed only when all folds' validations agree that removing it helps.

A model trained on every case (fold ``all``) has no validation cases to decide on;
:func:`postprocessing_from_labels` decides from its training labels instead: where the foreground is one
piece (its largest component holding at least ``min_share`` of its voxels) in every training label map, it
keeps the largest component of the foreground as one region; otherwise each class that is one piece keeps
its largest component.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from acvl_utils.morphology.morphology_helper import label_with_component_sizes
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
from nnunetv2.postprocessing.remove_connected_components import (
    remove_all_but_largest_component_from_segmentation,
)

from autoprompt.errors import AutoPromptError
from pipeline.files import load_json

ArraysOrFolder = Sequence[np.ndarray] | str | os.PathLike


def apply_postprocessing(labels: np.ndarray, rules: dict | None) -> np.ndarray:
    """Apply the ``steps`` of ``rules`` (``None`` or no steps: unchanged) to a label map (any shape)."""
    for step in (rules or {}).get("steps", []):
        labels = remove_all_but_largest_component_from_segmentation(labels, [int(label) for label in step])
    return labels


def mean_dice(
    predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], labels: Sequence[int]
) -> dict[int, float]:
    """Mean over cases of each label's Dice (cases where the label is absent from both are left out; NaN if all are)."""
    per_label: dict[int, list[float]] = {label: [] for label in labels}
    for prediction, reference in zip(predictions, references, strict=True):
        for label in labels:
            tp, fp, fn, _ = compute_tp_fp_fn_tn(reference == label, prediction == label)
            if tp + fp + fn > 0:
                per_label[label].append(2 * tp / (2 * tp + fp + fn))
    return {label: float(np.mean(values)) if values else float("nan") for label, values in per_label.items()}


def _foreground_mean(dice: dict[int, float]) -> float:
    values = [value for value in dice.values() if not np.isnan(value)]
    return float(np.mean(values)) if values else float("nan")


def _improves(after: float, before: float) -> bool:
    """``after > before``, where a NaN (label never present) never improves."""
    return bool(after > before)


def _not_worse(after: float, before: float) -> bool:
    return bool(np.isnan(before) or after >= before)


def determine_postprocessing(
    predictions: ArraysOrFolder, references: ArraysOrFolder, *, labels: Sequence[int]
) -> dict:
    """Decide which keep-largest-component steps improve validation Dice (nnU-Net's rule).

    Args:
        predictions: predicted label maps, or a folder of them (image files).
        references: reference label maps in the same order, or a folder holding a file of the same
            name for every prediction (e.g. the raw dataset's ``labelsTr``).
        labels: foreground label values to consider (e.g. ``[1, 2, 3]``).

    Returns:
        The rules (see the module docstring), ready for :func:`apply_postprocessing` and ``save_json``.
    """
    predictions, references = _as_arrays(predictions, references)
    if not predictions:
        raise AutoPromptError(
            "no predictions to decide postprocessing on; predict the validation cases first"
        )
    labels = [int(label) for label in labels]
    current = list(predictions)
    before = mean_dice(current, references, labels)
    best = before
    steps: list[list[int]] = []
    candidates = [labels] + ([[label] for label in labels] if len(labels) > 1 else [])
    for index, step in enumerate(candidates):
        processed = [apply_postprocessing(case, {"steps": [step]}) for case in current]
        after = mean_dice(processed, references, labels)
        if index == 0:  # all foreground as one region: better on average and no class worse
            accept = _improves(_foreground_mean(after), _foreground_mean(best)) and all(
                _not_worse(after[label], best[label]) for label in labels
            )
        else:
            accept = _improves(after[step[0]], best[step[0]])
        if accept:
            current, best = processed, after
            steps.append(step)
    return {
        "steps": steps,
        "mean_dice_before": {str(label): _json_float(value) for label, value in before.items()},
        "mean_dice_after": {str(label): _json_float(value) for label, value in best.items()},
        "foreground_dice_before": _json_float(_foreground_mean(before)),
        "foreground_dice_after": _json_float(_foreground_mean(best)),
        "num_cases": len(predictions),
    }


def postprocessing_from_labels(
    references: Sequence[np.ndarray], *, labels: Sequence[int], min_share: float = 0.95
) -> dict:
    """Keep-largest-component rules for a model without validation cases, read from its training labels.

    When the foreground (all ``labels`` together) is one piece in every training label map (the heart of
    ACDC), the rule is one step over all of them: the region touching the organ stays whole, so a class
    cannot be erased because its largest piece was the wrong one. Otherwise (separate organs) each class
    that is one piece in every label map keeps its largest component.

    Args:
        references: the training label maps (any shape; connectivity as nnU-Net's postprocessing).
        labels: foreground label values to consider.
        min_share: "one piece": in every label map holding it, the largest connected component has at
            least this share of the voxels.

    Returns:
        Rules as :func:`determine_postprocessing` writes them (``steps``), with ``decided_from`` and the
        smallest ``largest_component_share`` of the foreground and of each class (null: never present).
    """
    groups = {
        "foreground": [int(label) for label in labels],
        **{str(int(label)): [int(label)] for label in labels},
    }
    shares: dict[str, list[float]] = {name: [] for name in groups}
    for reference in references:
        for name, members in groups.items():
            mask = np.isin(reference, members)
            if mask.any():
                _, sizes = label_with_component_sizes(mask)
                shares[name].append(max(sizes.values()) / sum(sizes.values()))
    one_piece = {name: bool(values) and min(values) >= min_share for name, values in shares.items()}
    if one_piece["foreground"]:
        steps = [groups["foreground"]]
    else:
        steps = [members for name, members in groups.items() if name != "foreground" and one_piece[name]]
    return {
        "steps": steps,
        "decided_from": (
            f"training labels (one piece: largest component >= {min_share:g} of the voxels in every map; "
            "the foreground as one region if it is one piece, else each class that is)"
        ),
        "largest_component_share": {
            name: round(min(values), 6) if values else None for name, values in shares.items()
        },
        "num_cases": len(references),
    }


def combine_fold_rules(fold_rules: Sequence[dict | None]) -> dict:
    """Rules for a fold ensemble: the steps every fold chose (a fold without rules chose none), in the first fold's order."""
    if not fold_rules:
        return {"steps": []}
    common = [step for step in (fold_rules[0] or {}).get("steps", [])]
    for rules in fold_rules[1:]:
        chosen = (rules or {}).get("steps", [])
        common = [step for step in common if step in chosen]
    return {"steps": common}


def load_postprocessing(path: str | os.PathLike) -> dict | None:
    """Read a ``postprocessing.json``; ``None`` when the file does not exist.

    Raises:
        AutoPromptError: the file exists but is not valid rules.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rules = load_json(path)
        steps = rules["steps"]
        valid = isinstance(steps, list) and all(
            isinstance(step, list) and all(isinstance(v, int) for v in step) for step in steps
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise AutoPromptError(
            f'{path}: not valid postprocessing rules (needs "steps": [[label, ...], ...]); delete it or fix it'
        )
    return rules


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


def _as_arrays(
    predictions: ArraysOrFolder, references: ArraysOrFolder
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if isinstance(predictions, (str, os.PathLike)) != isinstance(references, (str, os.PathLike)):
        raise TypeError("predictions and references must both be folders or both be sequences of arrays")
    if not isinstance(predictions, (str, os.PathLike)):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        return list(predictions), list(references)
    from pipeline.io import image_suffix, read_image

    prediction_folder, reference_folder = Path(predictions), Path(references)
    files = sorted(
        p
        for p in prediction_folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _is_image(p, image_suffix)
    )
    loaded_predictions, loaded_references = [], []
    for file in files:
        reference = reference_folder / file.name
        if not reference.is_file():
            raise AutoPromptError(
                f"{reference}: missing reference for prediction {file.name}; give the folder holding all references"
            )
        loaded_predictions.append(read_image(file)[0])
        loaded_references.append(read_image(reference)[0])
    return loaded_predictions, loaded_references


def _is_image(path: Path, image_suffix) -> bool:
    try:
        return bool(image_suffix(path))
    except AutoPromptError:
        return False
