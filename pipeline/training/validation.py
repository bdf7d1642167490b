"""The end-of-training validation of a fold through the real prediction path.

Every validation case of the fold is predicted by :class:`pipeline.inference.predictor.Predictor`
(sliding windows, optional mirroring) from its preprocessed data, reverted to the original geometry
(``revert_probabilities``), written as ``fold_K/validation/{case}<file_ending>`` and evaluated with
:func:`pipeline.evaluation.evaluate_folders` into ``fold_K/validation/summary.json`` (+ ``.csv``).
The references are the raw dataset's ``labelsTr`` files when the raw dataset is at hand, else the
preprocessed labels reverted to the original geometry (``summary.json`` says which). Finally the
keep-largest-component postprocessing is decided on these predictions (nnU-Net's rule,
:func:`pipeline.inference.postprocessing.determine_postprocessing`) into ``fold_K/postprocessing.json``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autoprompt.modeling.autoprompt_sam import AutoPromptSAM
from autoprompt.progress import progress
from pipeline.evaluation import evaluate_folders
from pipeline.files import load_json, save_json
from pipeline.inference.postprocessing import determine_postprocessing
from pipeline.inference.predictor import Predictor
from pipeline.inference.tta import IN_PLANE_AXES
from pipeline.io import read_image, write_image
from pipeline.preprocessing import geometry_of, revert_probabilities, revert_segmentation
from pipeline.trainer_config import ZoomConfig
from planners.plans import Plans


def validate_fold(
    models: Sequence[AutoPromptSAM],
    plans: Plans,
    configuration: str,
    *,
    case_ids: Sequence[str],
    preprocessed_folder: Path,
    fold_dir: Path,
    device: torch.device,
    tta: bool,
    mirror_axes: tuple[int, ...] = IN_PLANE_AXES,
    precision: str = "auto",
    batch_size: int | None = None,
    raw_labels_folder: Path | None = None,
    zoom: ZoomConfig | None = None,
) -> dict:
    """Predict, export, evaluate and decide postprocessing for the validation cases of a fold.

    Args:
        models: the trained models (eval mode), averaged as :class:`Predictor` averages an ensemble.
        plans: the dataset's plans.
        configuration: "2d" or "3d".
        case_ids: the fold's validation cases.
        preprocessed_folder: ``PREPROCESSED/DatasetXXX/<data_identifier>``.
        fold_dir: ``MODEL_FOLDER/fold_K`` (outputs go to ``validation/`` and ``postprocessing.json``).
        device: where the network runs.
        tta: mirroring test-time augmentation.
        mirror_axes: the in-plane axes it flips (:func:`~pipeline.inference.tta.mirror_axes_for`).
        precision: the Predictor's precision ("fp32", "bf16", "auto"; as ``autoprompt predict --precision``).
        batch_size: windows per network call (None: the plans' batch size).
        raw_labels_folder: the raw dataset's ``labelsTr`` (references), if available.
        zoom: the second, zoomed pass of prediction (:class:`~pipeline.trainer_config.ZoomConfig`), as trained.

    Returns:
        The evaluation summary (as written to ``summary.json``), with ``reference_source`` and
        ``postprocessing`` added.
    """
    output = fold_dir / "validation"
    output.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(
        models,
        plans,
        configuration,
        device=device,
        tta=tta,
        mirror_axes=mirror_axes,
        precision=precision,
        batch_size=batch_size,
        zoom=zoom,
    )
    suffix = plans.file_ending
    foreground = plans.foreground_labels  # the ignore label is neither scored nor postprocessed
    use_raw = raw_labels_folder is not None and all(
        (raw_labels_folder / f"{c}{suffix}").is_file() for c in case_ids
    )
    predictions, references = [], []
    with tempfile.TemporaryDirectory(prefix="autoprompt_references_") as reference_dir:
        for case in progress(case_ids, desc="final validation", unit="case"):
            data = np.load(preprocessed_folder / f"{case}.npy")
            properties = load_json(preprocessed_folder / f"{case}.json")
            probabilities = revert_probabilities(predictor.predict_preprocessed(data), properties)
            labels = predictor.labels_from_probabilities(probabilities)
            geometry = geometry_of(properties)
            write_image(labels, geometry, output / f"{case}{suffix}")
            reference_file = Path(reference_dir) / f"{case}{suffix}"
            if use_raw:
                reference_file.symlink_to((raw_labels_folder / f"{case}{suffix}").resolve())
                reference = read_image(reference_file)[0]
            else:
                seg = np.load(preprocessed_folder / f"{case}_seg.npy")
                reference = revert_segmentation(seg, properties)
                write_image(reference, geometry, reference_file)
            reference = reference.astype(labels.dtype, copy=False)
            if plans.ignore_label is not None:  # postprocessing is chosen on annotated voxels only
                unannotated = reference == plans.ignore_label
                reference, labels = np.where(unannotated, 0, reference), np.where(unannotated, 0, labels)
            predictions.append(labels)
            references.append(reference)
        summary = evaluate_folders(
            reference_dir,
            output,
            labels=foreground,
            output_json=output / "summary.json",
            ignore_label=plans.ignore_label,
        )
    rules = determine_postprocessing(predictions, references, labels=sorted(foreground.values()))
    save_json(rules, fold_dir / "postprocessing.json")
    for entry in summary["metric_per_case"]:  # the temporary reference folder is gone: name the real source
        case = entry["case"]
        source = raw_labels_folder / f"{case}{suffix}" if use_raw else preprocessed_folder / f"{case}_seg.npy"
        entry["reference_file"] = str(source)
    summary["reference_source"] = (
        "raw labelsTr" if use_raw else "preprocessed labels reverted to the original geometry"
    )
    summary["postprocessing"] = rules["steps"]
    save_json(summary, output / "summary.json")
    return summary
