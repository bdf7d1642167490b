"""Raw datasets in the nnU-Net v2 format: loading, validation and cross-validation folds.

A dataset folder holds ``dataset.json``, ``imagesTr/{case}_{XXXX}{file_ending}`` (one file per channel
``XXXX``) and ``labelsTr/{case}{file_ending}``, exactly as nnU-Net v2 expects, so an nnU-Net user's data
works unchanged. nnU-Net's RGB layout is read too: a dataset of 2D pictures whose dataset.json names three
channels (e.g. ``{"0": "R", "1": "G", "2": "B"}``) may give each case one colour ``{case}_0000.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nnunetv2.utilities.crossval_split import generate_crossval_split

from autoprompt.errors import AutoPromptError
from pipeline.files import load_json, save_json
from pipeline.io import (
    SUPPORTED_SUFFIXES,
    Geometry,
    holds_all_channels,
    read_channels,
    read_image,
    read_image_info,
)
from pipeline.parallel import parallel_map

ACDC_GROUP_REGEX = r"^(patient\d+)_frame\d+$"
"""Group ACDC's ``patientNNN_frameMM`` cases by patient, so both frames of a patient share a fold."""

SPLITS_FILE = "splits_final.json"
DEFAULT_NUM_FOLDS = 5
MIN_FOLDS = 2
_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_SCHEMA_FIX = (
    'write it as in nnU-Net v2: {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1}, '
    '"numTraining": N, "file_ending": ".nii.gz"}'
)


@dataclass
class CaseFiles:
    """The files of one case.

    Attributes:
        images: one path per channel, in channel order (``{case}_0000``, ``{case}_0001``, ...), or the one
            colour picture ``{case}_0000`` of nnU-Net's RGB layout; a path may not exist when the dataset
            is incomplete (:func:`verify_dataset` reports it).
        label: the label map, or ``None`` when there is none.
    """

    images: list[Path]
    label: Path | None


@dataclass
class RawDataset:
    """A raw dataset as listed on disk; nothing has been read from the images yet.

    Attributes:
        folder: the dataset folder (``.../DatasetXXX_Name``).
        name: the folder name.
        channel_names: ``{"0": "CT", ...}`` from dataset.json.
        labels: ``{"background": 0, "liver": 1, ...}`` from dataset.json.
        file_ending: e.g. ``".nii.gz"``.
        cases: case id -> files, sorted by case id.
        dataset_json: dataset.json as read.
        unexpected_files: files in imagesTr/labelsTr that fit no case (wrong name, ending or channel).
    """

    folder: Path
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    cases: dict[str, CaseFiles]
    dataset_json: dict = field(default_factory=dict)
    unexpected_files: list[Path] = field(default_factory=list)

    @property
    def dataset_json_path(self) -> Path:
        return self.folder / "dataset.json"


def load_raw_dataset(folder: str | os.PathLike) -> RawDataset:
    """Read ``folder/dataset.json`` and list the cases of ``imagesTr`` and ``labelsTr``.

    Raises:
        AutoPromptError: the folder or dataset.json is missing, or dataset.json breaks the schema.
    """
    folder = Path(folder)
    if not (folder / "imagesTr").is_dir():
        raise AutoPromptError(
            f"{folder}: no imagesTr folder; point to a DatasetXXX_Name folder in nnU-Net v2 format"
        )
    dataset_json = _load_dataset_json(folder / "dataset.json")
    channel_names = {str(k): str(v) for k, v in dataset_json["channel_names"].items()}
    file_ending = dataset_json["file_ending"]
    cases: dict[str, CaseFiles] = {}
    unexpected: list[Path] = []
    channel_pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    for path in _image_files(folder / "imagesTr"):
        match = channel_pattern.match(path.name)
        if match is None or str(int(match[2])) not in channel_names:
            unexpected.append(path)
            continue
        cases.setdefault(match[1], CaseFiles(images=[], label=None))
    for path in _image_files(folder / "labelsTr"):
        if not path.name.endswith(file_ending):
            unexpected.append(path)
            continue
        cases.setdefault(path.name[: -len(file_ending)], CaseFiles(images=[], label=None)).label = path
    for case_id, files in cases.items():
        files.images = [
            folder / "imagesTr" / f"{case_id}_{int(c):04d}{file_ending}"
            for c in sorted(channel_names, key=int)
        ]
        if holds_all_channels(file_ending, len(files.images)) and not any(
            path.exists() for path in files.images[1:]
        ):
            files.images = files.images[:1]  # nnU-Net's RGB layout: the picture holds the three channels
    return RawDataset(
        folder=folder,
        name=folder.name,
        channel_names=channel_names,
        labels={str(k): int(v) for k, v in dataset_json["labels"].items()},
        file_ending=file_ending,
        cases=dict(sorted(cases.items())),
        dataset_json=dataset_json,
        unexpected_files=unexpected,
    )


def _image_files(folder: Path) -> list[Path]:
    """Visible files in ``folder`` (sorted), or none when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _load_dataset_json(path: Path) -> dict:
    """Read dataset.json and check its schema; every problem is an AutoPromptError naming ``path``."""
    if not path.is_file():
        raise AutoPromptError(f"{path}: missing; {_SCHEMA_FIX}")
    try:
        data = load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AutoPromptError(f"{path}: not valid JSON ({error}); fix the syntax") from error
    if not isinstance(data, dict):
        raise AutoPromptError(f"{path}: must hold a JSON object; {_SCHEMA_FIX}")
    if "modality" in data and "channel_names" not in data:
        raise AutoPromptError(
            f"{path}: nnU-Net v1 format; convert it with nnUNetv2_convert_old_nnUNet_dataset"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise AutoPromptError(f"{path}: missing {', '.join(missing)}; {_SCHEMA_FIX}")
    if "dataset" in data:
        raise AutoPromptError(
            f"{path}: explicit 'dataset' file lists are not supported; use imagesTr/labelsTr"
        )
    channels = data["channel_names"]
    if (
        not isinstance(channels, dict)
        or not channels
        or set(map(str, channels)) != {str(i) for i in range(len(channels))}
    ):
        raise AutoPromptError(
            f'{path}: channel_names must map "0", "1", ... to modality names, e.g. {{"0": "CT"}}'
        )
    _check_labels(path, data["labels"])
    if not isinstance(data["numTraining"], int) or data["numTraining"] < 1:
        raise AutoPromptError(
            f"{path}: numTraining must be a positive integer (the number of training cases)"
        )
    if data["file_ending"] not in SUPPORTED_SUFFIXES:
        raise AutoPromptError(
            f"{path}: file_ending {data['file_ending']!r} is not one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return data


def _check_labels(path: Path, labels: object) -> None:
    if not isinstance(labels, dict):
        raise AutoPromptError(
            f'{path}: labels must map names to integers, e.g. {{"background": 0, "organ": 1}}'
        )
    regions = [name for name, value in labels.items() if isinstance(value, (list, tuple))]
    if regions:
        raise AutoPromptError(
            f"{path}: region-based labels ({', '.join(regions)}) are not supported by autoprompt; "
            "give every label one integer value"
        )
    if labels.get("background") != 0:
        raise AutoPromptError(f'{path}: labels must contain "background": 0')
    values = list(labels.values())
    valid = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    if not valid or len(set(values)) != len(values):
        raise AutoPromptError(f"{path}: label values must be distinct non-negative integers, got {values}")
    # nnU-Net's rule (its LabelManager and dataset check): values 0, 1, 2, ... without gaps, "ignore" last
    if sorted(values) != list(range(len(values))):
        renumber = ", ".join(f"{old} -> {new}" for new, old in enumerate(sorted(values)) if old != new)
        raise AutoPromptError(
            f"{path}: label values must be consecutive (0, 1, 2, ...; nnU-Net's rule), got {sorted(values)}; "
            f"renumber {renumber} in dataset.json and in the label maps"
        )
    if "ignore" in labels and labels["ignore"] != max(values):
        raise AutoPromptError(
            f"{path}: the 'ignore' label must have the highest value (nnU-Net's rule), got {labels['ignore']}; "
            f"give it {max(values)} and renumber the others"
        )


def verify_dataset(dataset: RawDataset, *, num_processes: int = 2) -> list[str]:
    """Check a raw dataset before planning; return every problem, one line each, naming the file.

    Checked: numTraining equals the number of cases; no stray files; every case has all channels and a
    label; channels and label share size, spacing, origin and direction; label values are declared in
    dataset.json; images hold no NaN/inf and are not constant.

    Args:
        dataset: from :func:`load_raw_dataset`.
        num_processes: worker processes reading the cases.

    Returns:
        Problem lines; empty when the dataset is fine.
    """
    problems = []
    if not dataset.cases:  # numTraining: 0 is refused by the schema: the fix is to add cases
        problems.append(
            f"{dataset.folder}: imagesTr/labelsTr hold no cases; add images {{case}}_0000{dataset.file_ending} "
            f"to imagesTr and labels {{case}}{dataset.file_ending} to labelsTr"
        )
    elif dataset.dataset_json.get("numTraining") != len(dataset.cases):
        problems.append(
            f"{dataset.dataset_json_path}: numTraining is {dataset.dataset_json.get('numTraining')} but imagesTr/labelsTr "
            f"hold {len(dataset.cases)} cases; set numTraining to {len(dataset.cases)}"
        )
    channels = ", ".join(f"_{int(c):04d}" for c in dataset.channel_names)
    problems += [
        f"{path}: fits no case; name images {{case}}_XXXX{dataset.file_ending} (channels {channels}) "
        f"and labels {{case}}{dataset.file_ending}"
        for path in dataset.unexpected_files
    ]
    declared = sorted(dataset.labels.values())
    jobs = [
        (
            case_id,
            files,
            dataset.folder / "labelsTr" / f"{case_id}{dataset.file_ending}",
            declared,
            len(dataset.channel_names),
        )
        for case_id, files in dataset.cases.items()
    ]
    for case_problems in parallel_map(_verify_case, jobs, num_processes=num_processes, desc="verify dataset"):
        problems += case_problems
    return problems + mixed_dimension_problems(dataset, _header_dimensions(dataset))


def _header_dimensions(dataset: RawDataset) -> dict[str, int]:
    """Each case's image dimensionality (2 or 3) from its first channel's header; unreadable ones left out
    (their own check names them)."""
    dimensions = {}
    for case_id, files in dataset.cases.items():
        with contextlib.suppress(AutoPromptError):
            dimensions[case_id] = read_image_info(files.images[0]).ndim
    return dimensions


def mixed_dimension_problems(dataset: RawDataset, dimensions: dict[str, int]) -> list[str]:
    """One line per case whose images are 2D in a dataset of mostly 3D images (or the other way round).

    Args:
        dataset: the raw dataset.
        dimensions: case id -> 2 or 3.
    """
    counts: dict[int, int] = {}
    for ndim in dimensions.values():
        counts[ndim] = counts.get(ndim, 0) + 1
    if len(counts) < 2:
        return []
    common = max(counts, key=lambda ndim: (counts[ndim], ndim))
    return [
        f"{dataset.cases[case].images[0]}: a {ndim}D image in a dataset of {common}D images; a dataset holds "
        f"only 2D or only 3D images: convert it or remove case {case}"
        for case, ndim in sorted(dimensions.items())
        if ndim != common
    ]


def _verify_case(job: tuple[str, CaseFiles, Path, list[int], int]) -> list[str]:
    """Problems of one case (runs in a worker); ``job`` is (case id, files, expected label path, label values,
    number of channels)."""
    case_id, files, expected_label, declared, num_channels = job
    problems = []
    reference: tuple[Path, Geometry] | None = None
    for index, path in enumerate(files.images):
        if not path.is_file():
            problems.append(
                f"{path}: missing channel {index} of case {case_id}; add it or remove the case's other files"
            )
            continue
        try:
            array, geometry = read_channels(path)
        except AutoPromptError as error:
            problems.append(str(error))
            continue
        if len(files.images) < num_channels and len(array) != num_channels:
            problems.append(
                f"{path}: holds {len(array)} channel(s) and no {case_id}_0001 file follows, dataset.json names "
                f"{num_channels}; save it as an RGB picture or add the files of channels 1 and 2"
            )
        if not np.all(np.isfinite(array)):
            problems.append(
                f"{path}: contains NaN or infinite values; replace them, e.g. with the image minimum"
            )
        elif array.size == 0 or array.min() == array.max():
            value = array.flat[0] if array.size else "none"
            problems.append(
                f"{path}: empty image (every voxel is {value}); fix the export or remove case {case_id}"
            )
        if reference is None:
            reference = (path, geometry)
        else:
            problems += _geometry_problems(path, geometry, *reference)
    if files.label is None:
        problems.append(
            f"{expected_label}: missing label of case {case_id}; add it or remove the case's images"
        )
        return problems
    try:
        label, geometry = read_image(files.label)
    except AutoPromptError as error:
        return [*problems, str(error)]
    if reference is not None:
        problems += _geometry_problems(files.label, geometry, *reference)
    unexpected = sorted(set(np.unique(label).tolist()) - set(declared))
    if unexpected:
        problems.append(
            f"{files.label}: unexpected label values {_short(unexpected)} (dataset.json declares {declared}); "
            "fix the label map or declare them in dataset.json"
        )
    return problems


def _geometry_problems(path: Path, geometry: Geometry, ref_path: Path, ref: Geometry) -> list[str]:
    return [
        f"{path}: {name} {_short(getattr(geometry, name))} differs from {_short(getattr(ref, name))} of {ref_path.name}; "
        + (
            "resample it onto that image's grid"
            if name == "size"
            else f"copy the {name} of {ref_path.name} onto it"
        )
        for name in geometry.mismatches(ref)
    ]


def _short(values: Sequence) -> str:
    """``[1, 2.5, ...]`` with floats rounded, at most 10 items."""
    items = [round(v, 4) if isinstance(v, float) else v for v in values[:10]]
    return "[" + ", ".join(map(str, items)) + (", ...]" if len(values) > 10 else "]")


def compile_group_regex(group_regex: str) -> re.Pattern:
    """The compiled ``--group-regex``.

    Raises:
        AutoPromptError: not a valid regular expression, or one without a group (group 1 names the group).
    """
    try:
        pattern = re.compile(group_regex)
    except re.error as error:
        raise AutoPromptError(
            f"--group-regex {group_regex!r}: not a valid regular expression ({error}); "
            r"give e.g. '^(patient\d+)_frame\d+$' (group 1 names the group)"
        ) from None
    if pattern.groups < 1:
        raise AutoPromptError(
            f"--group-regex {group_regex!r}: has no group; put the part that names the group in parentheses, "
            r"e.g. '^(patient\d+)_frame\d+$'"
        )
    return pattern


def group_cases(case_ids: Sequence[str], group_regex: str | None = None) -> dict[str, list[str]]:
    """Cases by group: group 1 of ``group_regex`` (e.g. the ACDC patient), or one group per case without it.

    Returns:
        Group key -> its sorted case ids, keys sorted.

    Raises:
        AutoPromptError: a case id does not match ``group_regex``.
    """
    if group_regex is None:
        return {case_id: [case_id] for case_id in sorted(case_ids)}
    pattern = compile_group_regex(group_regex)
    groups: dict[str, list[str]] = {}
    for case_id in sorted(case_ids):
        match = pattern.match(case_id)
        if match is None or match.lastindex is None:
            raise AutoPromptError(
                f"case {case_id}: does not match the group regex {group_regex!r} (group 1 names the group); "
                "fix the regex or the case name"
            )
        groups.setdefault(match[1], []).append(case_id)
    return dict(sorted(groups.items()))


def check_num_folds(num_folds: int) -> None:
    """Refuse a fold count below :data:`MIN_FOLDS`.

    Raises:
        AutoPromptError: ``num_folds`` is not an integer of at least 2.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < MIN_FOLDS:
        raise AutoPromptError(
            f"{num_folds} folds asked for: cross-validation needs at least {MIN_FOLDS}; pass --folds 2 or more "
            "(to train on every case, train fold all)"
        )


def folds_made(num_groups: int, num_folds: int = DEFAULT_NUM_FOLDS) -> int:
    """How many folds :func:`make_splits` makes from ``num_groups`` groups: ``num_folds``, at most one per
    group (leave-one-group-out), and none for a single group."""
    return 0 if num_groups < MIN_FOLDS else min(num_folds, num_groups)


def make_splits(
    case_ids: Sequence[str],
    *,
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = 12345,
    group_regex: str | None = None,
) -> list[dict[str, list[str]]]:
    """Cross-validation folds like nnU-Net's ``splits_final.json``.

    Without ``group_regex`` this is nnU-Net's own split (``KFold(shuffle=True, random_state=seed)`` on the
    sorted ids). With it, cases whose ``group_regex`` group 1 is equal (e.g. both frames of an ACDC patient,
    :data:`ACDC_GROUP_REGEX`) fall in the same fold: the same seeded KFold runs on the sorted group keys.

    A small dataset is never refused: with fewer groups than ``num_folds`` every group is a fold of its own
    (leave-one-group-out), and a single group cannot be split at all, so the result is
    ``[{"train": [every case], "val": []}]``: no fold, only fold ``all`` (see :func:`read_splits`).

    Returns:
        :func:`folds_made` dicts ``{"train": [...], "val": [...]}``, each list sorted, every case in exactly
        one ``val`` (or the single no-fold entry above).

    Raises:
        AutoPromptError: fewer than 2 folds asked for, or a case id does not match ``group_regex``.
    """
    check_num_folds(num_folds)
    groups = group_cases(case_ids, group_regex)
    count = folds_made(len(groups), num_folds)
    if count == 0:
        return [{"train": sorted(case_ids), "val": []}]
    splits = []
    for fold in generate_crossval_split(sorted(groups), seed=seed, n_splits=count):
        splits.append(
            {part: sorted(c for key in fold[part] for c in groups[str(key)]) for part in ("train", "val")}
        )
    return splits


def splits_note(num_groups: int, num_folds: int = DEFAULT_NUM_FOLDS, *, grouped: bool = False) -> str | None:
    """The one-line note on a dataset too small for ``num_folds`` folds; None when they can be made.

    Args:
        num_groups: groups of cases (cases, without a group regex).
        num_folds: the folds asked for.
        grouped: whether a group regex formed the groups (the note then says "groups").
    """
    count = folds_made(num_groups, num_folds)
    if count == num_folds:
        return None
    unit = "group" if grouped else "case"
    if count == 0:
        return (
            f"note: a single {unit} cannot be cross-validated: {SPLITS_FILE} holds no folds; "
            "train fold all (every case)"
        )
    return (
        f"note: {num_groups} {unit}s are fewer than {num_folds} folds: made {count} folds, "
        f"leave-one-{unit}-out"
    )


def fold_indices(splits: Sequence[dict]) -> list[int]:
    """The folds of ``splits`` that can be trained: entries with training and validation cases.

    An entry without validation cases is not a fold: ``[{"train": [every case], "val": []}]`` is how
    ``splits_final.json`` says "no folds" (a single group), where only fold ``all`` exists.
    """
    return [index for index, fold in enumerate(splits) if fold["train"] and fold["val"]]


def describe_folds(folds: Sequence[int]) -> str:
    """``"0-4"`` for consecutive folds from 0, else ``"0, 2"``; ``"none"`` for no folds."""
    if not folds:
        return "none"
    if list(folds) == list(range(len(folds))) and len(folds) > 1:
        return f"0-{len(folds) - 1}"
    return ", ".join(map(str, folds))


def load_or_create_splits(
    preprocessed_folder: str | os.PathLike,
    case_ids: Sequence[str],
    *,
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = 12345,
    group_regex: str | None = None,
) -> list[dict[str, list[str]]]:
    """The folds in ``preprocessed_folder/splits_final.json``; made by :func:`make_splits` and saved if absent.

    An existing file is kept as it is (a user may have edited it), after checking that it is a list of
    ``{"train": [...], "val": [...]}`` naming only known cases.

    Raises:
        AutoPromptError: the existing file is malformed or names a case that is not in ``case_ids``.
    """
    path = Path(preprocessed_folder) / SPLITS_FILE
    if not path.is_file():
        splits = make_splits(case_ids, num_folds=num_folds, seed=seed, group_regex=group_regex)
        save_json(splits, path)
        return splits
    fix = "fix it or delete it to have the folds made again"
    splits = read_splits(path, fix)
    unknown = sorted({c for fold in splits for c in fold["train"] + fold["val"]} - set(case_ids))
    if unknown:
        raise AutoPromptError(f"{path}: names cases that are not in the dataset: {_short(unknown)}; {fix}")
    return splits


def read_splits(path: Path, fix: str) -> list[dict]:
    """Read a splits file in nnU-Net's ``splits_final.json`` shape: ``[{"train": [...], "val": [...]}, ...]``.

    An entry with an empty ``val`` is accepted but is not a fold (:func:`fold_indices`); a dataset of a
    single group is written as ``[{"train": [every case], "val": []}]``: no folds, only fold ``all``.

    Raises:
        AutoPromptError: not JSON, or not that shape; the message names ``path`` and ends with ``fix``.
    """
    try:
        splits = load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AutoPromptError(f"{path}: not valid JSON ({error}); {fix}") from error
    if not isinstance(splits, list) or not splits or any(_malformed_fold(fold) for fold in splits):
        raise AutoPromptError(
            f'{path}: it must be a list of {{"train": [case ids], "val": [case ids]}}; {fix}'
        )
    return splits


def _malformed_fold(fold: object) -> bool:
    return not (
        isinstance(fold, dict)
        and all(
            isinstance(fold.get(part), list) and all(isinstance(c, str) for c in fold[part])
            for part in ("train", "val")
        )
    )
