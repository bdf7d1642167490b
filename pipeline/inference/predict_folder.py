"""``predict``: segment every case of an input folder (or one file / DICOM series) with a model folder.

    from autoprompt import api
    summary = api.predict("results/Dataset027_ACDC/autoprompt__2d_frozen__2d", "imagesTs", "preds")
    print(summary.describe())        # "10 done, 0 skipped, 0 failed"

Outputs: ``{case}{suffix}`` label maps with the input's file type, size, spacing, origin and direction
(``.nii.gz`` for DICOM input, ``.png`` for JPEG input; a JPEG ``output_suffix`` is refused) and, with ``save_probabilities``, ``{case}.npz`` holding ``probabilities``
(``K+1 x Z x Y x X`` float16, background first) next to each label map. Every file is written under a
temporary name and renamed (the probabilities just before the label map), so an existing label map means
a finished case: those are skipped unless ``overwrite``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoprompt.errors import AutoPromptError, short_list
from autoprompt.progress import progress as progress_bar
from pipeline.files import atomic_path, check_output_folder
from pipeline.inference.case_cost import CaseLimits
from pipeline.inference.inputs import CaseInput, find_cases, split_cases
from pipeline.inference.predictor import ALL_TRAINED, Predictor
from pipeline.io import (
    LOSSY_SUFFIXES,
    PLANAR_ONLY_SUFFIXES,
    SUPPORTED_SUFFIXES,
    lossy_output_error,
    read_image_info,
    write_image,
)


@dataclass
class PredictSummary:
    """What a :func:`predict` run did.

    Attributes:
        output_folder: where the label maps are.
        done: case ids predicted in this run.
        skipped: case ids whose label map already existed.
        failed: case id -> the one-line reason (only with ``continue_on_error``).
        ignored: input files that are not images.
        notes: one-line notes on how the model was used (e.g. no postprocessing for fold ``all``), and one
            naming the cases whose slices were shrunk to fit the window (:func:`shrunk_cases_note`).
        seconds: wall time of the run.
    """

    output_folder: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 1 if self.failed else 0

    def describe(self) -> str:
        """One line: ``"N done, M skipped, F failed in T s -> OUTPUT"``."""
        return (
            f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s -> {self.output_folder}"
        )


def predict(
    model_folder: str | os.PathLike,
    input_path: str | os.PathLike,
    output_folder: str | os.PathLike,
    *,
    folds: Sequence[int | str] | str = ALL_TRAINED,
    checkpoint: str = "best",
    device: str = "auto",
    tta: bool | None = None,
    precision: str = "auto",
    use_postprocessing: bool = True,
    decoding: Mapping[str, float] | None = None,
    zoom: bool | None = None,
    save_probabilities: bool = False,
    output_suffix: str | None = None,
    part_id: int = 0,
    num_parts: int = 1,
    overwrite: bool = False,
    continue_on_error: bool = False,
    progress: bool = True,
    limits: CaseLimits | None = None,
) -> PredictSummary:
    """Predict every case of ``input_path`` into ``output_folder``.

    Args:
        model_folder: a folder written by ``autoprompt train``.
        input_path: a folder of images (``{case}_0000.nii.gz`` ..., or plain names for single-channel
            models; DICOM series sub-folders), one image file, or a DICOM series folder.
        output_folder: created if needed; must not be the input folder.
        folds: fold numbers and/or ``"all"`` (the fold trained on every case), or ``"all-trained"`` (every
            fold with the checkpoint); probabilities are averaged.
        checkpoint: "best", "final" or "latest".
        device: "auto", "cpu", "cuda" or "cuda:N".
        tta: mirroring test-time augmentation (4x the encoder work); None: on when every fold was trained
            with mirror augmentation, off for models trained on cached embeddings (they never saw mirrored
            anatomy, and mirroring them mislabels left/right-like classes).
        precision: "fp32", "bf16", "fp16" (CUDA only) or "auto": the precision the folds were trained in
            where the device computes it natively, else the device's native one (:mod:`autoprompt.precision`).
        use_postprocessing: apply the keep-largest-component steps all used folds agree on (none when a
            fold has no ``postprocessing.json``, as fold ``all``; ``notes`` then says so).
        decoding: overrides of the models' decoding settings (keys from
            :data:`~pipeline.inference.predictor.DECODING_SETTINGS`; :meth:`Predictor.from_model_folder`); None or
            a missing key: as trained.
        zoom: a second, zoomed pass over the region of interest on or off (:mod:`pipeline.roi_zoom`); None:
            as trained (``zoom.second_pass``).
        save_probabilities: also write ``{case}.npz`` (float16 probabilities in the input geometry).
        output_suffix: label map file type (e.g. ".nii.gz"; never ".jpg"); default: the input's (".nii.gz"
            for DICOM, ".png" for JPEG).
        part_id: this run's part of the sorted case list, ``cases[part_id::num_parts]`` (nnU-Net's rule).
        num_parts: number of runs sharing the cases (e.g. one per GPU).
        overwrite: predict cases whose label map exists (otherwise they are skipped).
        continue_on_error: a bad case is recorded in ``failed`` and the others still run (otherwise the
            first bad case raises).
        progress: show a tqdm bar. With ``continue_on_error`` each failure is written to stderr as it happens.
        limits: the most one case may cost, estimated from its header before it is read
            (:mod:`pipeline.inference.case_cost`); None: :class:`CaseLimits`' defaults.

    Raises:
        AutoPromptError: missing or incompatible model folder, fold or checkpoint; a bad input path;
            a bad case unless ``continue_on_error``.
    """
    from pipeline.model_folder import ModelFolder

    start = time.monotonic()
    output = Path(output_folder)
    input_path = Path(input_path)
    if output_suffix is not None and output_suffix not in SUPPORTED_SUFFIXES:
        raise AutoPromptError(
            f"output format '{output_suffix}' is not supported; use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if output_suffix in LOSSY_SUFFIXES:
        raise lossy_output_error(f"output format '{output_suffix}'")
    if input_path.is_dir() and output.exists() and output.resolve() == input_path.resolve():
        raise AutoPromptError(f"{output}: the output folder is the input folder; choose another -o")
    check_output_folder(output, option="-o")
    channel_names = ModelFolder(model_folder).plans.channel_names
    search = find_cases(input_path, channel_names=channel_names)
    cases = split_cases(search.cases, part_id=part_id, num_parts=num_parts)
    summary = PredictSummary(output_folder=output, ignored=search.ignored)
    todo = []
    for case in cases:
        if not overwrite and (output / case.output_name(output_suffix)).exists():
            summary.skipped.append(case.case_id)
        else:
            todo.append(case)
    if todo:
        predictor = Predictor.from_model_folder(
            model_folder,
            folds=folds,
            checkpoint=checkpoint,
            device=device,
            tta=tta,
            precision=precision,
            use_postprocessing=use_postprocessing,
            decoding=decoding,
            zoom=zoom,
        )
        summary.notes += predictor.notes
        predictor.limits = limits or CaseLimits()
        shrunk: dict[str, float] = {}
        bar = progress_bar(todo, desc="predict", unit="case", enabled=progress)
        for case in bar:
            bar.set_postfix_str(case.case_id)
            try:
                coarsening = _predict_case(
                    predictor,
                    case,
                    output,
                    save_probabilities=save_probabilities,
                    output_suffix=output_suffix,
                )
            except AutoPromptError as error:
                if not continue_on_error:
                    raise
                summary.failed[case.case_id] = str(error)
                bar.write(f"failed {case.case_id}: {error}", file=sys.stderr)  # once; the command adds none
            else:
                summary.done.append(case.case_id)
                if coarsening > 1:
                    shrunk[case.case_id] = coarsening
        if shrunk:
            summary.notes.append(shrunk_cases_note(shrunk, predictor.plan.window_size))
    summary.seconds = time.monotonic() - start
    return summary


def shrunk_cases_note(coarsening: Mapping[str, float], window: Sequence[int]) -> str:
    """The note for the cases whose slices were shrunk to fit the window: case id -> coarsening (> 1)."""
    return (
        f"note: {len(coarsening)} case(s) had slices larger than the {' x '.join(map(str, window))} window at "
        f"the plans' spacing and were predicted at a coarser in-plane spacing to fit it (up to "
        f"{max(coarsening.values()):.2f}x; label maps at the input's resolution): {short_list(list(coarsening))}"
    )


def _predict_case(
    predictor: Predictor,
    case: CaseInput,
    output: Path,
    *,
    save_probabilities: bool,
    output_suffix: str | None,
) -> float:
    """Predict one case; the label map and probabilities appear together (probabilities renamed first).
    Returns the case's :attr:`~pipeline.inference.predictor.Prediction.coarsening`."""
    if case.problem:
        raise AutoPromptError(case.problem)
    suffix = output_suffix or case.output_suffix
    if suffix in PLANAR_ONLY_SUFFIXES and read_image_info(case.files[0]).ndim == 3:
        raise AutoPromptError(
            f"{case.files[0]}: is a 3D image and {suffix} holds 2D images only; give --output-format .nii.gz"
        )
    prediction = predictor.predict_case(case.files, return_probabilities=save_probabilities)
    with atomic_path(output / case.output_name(output_suffix)) as labels_tmp:
        write_image(prediction.labels, prediction.geometry, labels_tmp)
        if save_probabilities:
            with atomic_path(output / f"{case.case_id}.npz") as probabilities_tmp:
                np.savez_compressed(
                    probabilities_tmp, probabilities=prediction.probabilities.astype(np.float16)
                )
    return prediction.coarsening
