"""Finding the cases to predict: image files grouped by case into channels, and DICOM series folders.

An input is one of:

- a folder of images: ``{case}_0000.nii.gz``, ``{case}_0001.nii.gz``, ... (nnU-Net naming, one file per
  channel; for a three-channel model one colour ``{case}_0000.png`` may hold them all, nnU-Net's RGB
  layout) or, for single-channel and RGB models, plain names (``scan.nii.gz``); sub-folders holding a DICOM
  series are cases too (named after the folder); hidden files are skipped and other files are listed
  as ignored;
- one image file (a single-channel case);
- a DICOM series folder (a single-channel case named after the folder).

Every case gets the output name ``{case}{suffix}``, with the input's file type (``.nii.gz`` for DICOM,
``.png`` for JPEG: a label map is never written in a lossy format).
A case whose files do not fit the model (a missing channel, a name that fits no channel) carries a
``problem`` instead of failing the whole search, so the other cases can still run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoprompt.errors import AutoPromptError
from pipeline.io import SUPPORTED_SUFFIXES, holds_all_channels, image_suffix, label_map_suffix

DICOM_OUTPUT_SUFFIX = ".nii.gz"
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass
class CaseInput:
    """One case to predict.

    Attributes:
        case_id: the case name (output file stem).
        files: one image file (or DICOM folder) per channel, in channel order.
        output_suffix: file type of the label map (the input's; ``.nii.gz`` for DICOM, ``.png`` for JPEG).
        problem: why the case cannot be predicted (one line naming the file and the fix), or None.
    """

    case_id: str
    files: list[Path]
    output_suffix: str
    problem: str | None = None

    def output_name(self, suffix: str | None = None) -> str:
        """``{case}{suffix}``, the input's file type unless ``suffix`` is given."""
        return f"{self.case_id}{suffix or self.output_suffix}"


@dataclass
class InputSearch:
    """The result of :func:`find_cases`: cases sorted by id and the files that were not images."""

    cases: list[CaseInput]
    ignored: list[Path] = field(default_factory=list)


def is_dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files (``.dcm``/``.ima`` names or the ``DICM`` magic at byte 128)."""
    for child in folder.iterdir():
        if not child.is_file() or child.name.startswith("."):
            continue
        if child.name.lower().endswith(_DICOM_SUFFIXES):
            return True
        if not child.name.lower().endswith(SUPPORTED_SUFFIXES) and _has_dicom_magic(child):
            return True
    return False


def find_cases(input_path: str | os.PathLike, *, channel_names: dict[str, str]) -> InputSearch:
    """List the cases under ``input_path`` for a model with the given channels.

    Args:
        input_path: a folder of images, one image file, or a DICOM series folder.
        channel_names: the dataset's ``{"0": "MRI", ...}`` (its length is the number of channels).

    Raises:
        AutoPromptError: the path does not exist, is a file of an unsupported type, or holds no images.
    """
    path = Path(input_path)
    if not path.exists():
        raise AutoPromptError(
            f"{path}: no such file or folder; pass an image file, a folder of images or a DICOM series folder"
        )
    if path.is_file():
        suffix = image_suffix(path)
        return InputSearch(
            [
                _group_case(
                    path.parent, _case_name(path.name[: -len(suffix)]), [(0, path)], suffix, channel_names
                )
            ]
        )
    if is_dicom_folder(path):
        return InputSearch(
            [_group_case(path.parent, path.name, [(0, path)], DICOM_OUTPUT_SUFFIX, channel_names)]
        )
    search = _search_folder(path, channel_names)
    if not search.cases:
        found = f" (only non-image files, e.g. {search.ignored[0].name})" if search.ignored else ""
        raise AutoPromptError(
            f"{path}: no images found{found}; put {{case}}_0000{SUPPORTED_SUFFIXES[0]} files or DICOM series folders there"
        )
    return search


def split_cases(cases: list[CaseInput], *, part_id: int, num_parts: int) -> list[CaseInput]:
    """nnU-Net's split of the sorted case list over ``num_parts`` runs: ``cases[part_id::num_parts]``."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise AutoPromptError(
            f"--part-id {part_id} --num-parts {num_parts}: need 0 <= part-id < num-parts; e.g. --part-id 0 --num-parts 2"
        )
    return sorted(cases, key=lambda case: case.case_id)[part_id::num_parts]


def check_image_content(array: np.ndarray, path: Path) -> None:
    """Refuse an empty image (every voxel the same value).

    Raises:
        AutoPromptError: naming ``path``.
    """
    if array.size == 0 or np.min(array) == np.max(array):
        value = f" (all {np.min(array):g})" if array.size else ""
        raise AutoPromptError(f"{path}: image is empty{value}; check the export, it holds no anatomy")


def _search_folder(folder: Path, channel_names: dict[str, str]) -> InputSearch:
    entries: dict[str, list[tuple[int | None, Path]]] = {}
    suffixes: dict[str, str] = {}
    ignored: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if not is_dicom_folder(child):
                ignored.append(child)
                continue
            case_id, channel, suffix = child.name, 0, DICOM_OUTPUT_SUFFIX
        else:
            suffix = _image_suffix_or_none(child)
            if suffix is None:
                ignored.append(child)
                continue
            case_id, channel = _split_channel(child.name[: -len(suffix)], suffix, len(channel_names))
        entries.setdefault(case_id, []).append((channel, child))
        suffixes.setdefault(case_id, suffix)
    cases = [
        _group_case(folder, case_id, entries[case_id], suffixes[case_id], channel_names)
        for case_id in sorted(entries)
    ]
    return InputSearch(cases, ignored)


def _group_case(
    folder: Path,
    case_id: str,
    entries: list[tuple[int | None, Path]],
    suffix: str,
    channel_names: dict[str, str],
) -> CaseInput:
    """One case from its ``(channel, file)`` entries; the first thing wrong becomes its ``problem``."""
    num_channels = len(channel_names)
    model = f"the model needs {num_channels} channel{'s' if num_channels > 1 else ''} ({_describe(channel_names)})"
    files: dict[int, Path] = {}
    problems = []
    for channel, path in entries:
        if channel is None:
            problems.append(
                f"{path}: {model}; name the files {case_id}_0000{suffix} ... {case_id}_{num_channels - 1:04d}{suffix}"
            )
        elif channel >= num_channels:
            problems.append(
                f"{path}: channel {channel} of case '{case_id}', but {model}; remove it or use a model trained on these channels"
            )
        elif channel in files:
            problems.append(
                f"{path}: case '{case_id}' has two files for channel {channel} ({files[channel].name}); keep one"
            )
        else:
            files[channel] = path
    missing = [channel for channel in range(num_channels) if channel not in files]
    if list(files) == [0] and holds_all_channels(suffix, num_channels):
        missing = []  # nnU-Net's RGB layout: the picture holds the channels (read_case checks it holds three)
    if missing:
        problems.append(
            f"{folder / f'{case_id}_{missing[0]:04d}{suffix}'}: missing channel {missing[0]} of case '{case_id}'; {model}"
        )
    return CaseInput(
        case_id,
        [files[c] for c in sorted(files)],
        label_map_suffix(suffix),
        problems[0] if problems else None,
    )


def _split_channel(stem: str, suffix: str, num_channels: int) -> tuple[str, int | None]:
    """``"case_0001"`` -> ``("case", 1)``; a plain name is channel 0 of a single-channel model (or the colour
    picture of an RGB model), else None."""
    match = _CHANNEL.match(stem)
    if match:
        return match.group(1), int(match.group(2))
    return stem, 0 if num_channels == 1 or holds_all_channels(suffix, num_channels) else None


def _case_name(stem: str) -> str:
    match = _CHANNEL.match(stem)
    return match.group(1) if match and int(match.group(2)) == 0 else stem


def _image_suffix_or_none(path: Path) -> str | None:
    lower = path.name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if lower.endswith(suffix)), None)


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _describe(channel_names: dict[str, str]) -> str:
    return ", ".join(
        f"{key}: {value}" for key, value in sorted(channel_names.items(), key=lambda kv: int(kv[0]))
    )
