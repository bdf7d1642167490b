"""Where datasets, preprocessed data and trained models live, and how a dataset is named.

Only the CLI reads the environment (:func:`roots_from_environment`); every function below the CLI
takes explicit paths.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from autoprompt.errors import AutoPromptError

_ENV = {"raw": "AUTOPROMPT_RAW", "preprocessed": "AUTOPROMPT_PREPROCESSED", "results": "AUTOPROMPT_RESULTS"}
NNUNET_ENV = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
"""nnU-Net v2's variables, read when neither a flag nor the ``AUTOPROMPT_*`` variable names a folder."""
# nnU-Net's rule: "Dataset", a three-digit id, "_", a freely chosen name (Dataset226_BraTS2024-BraTS-GLI);
# here the name may not hold whitespace or path separators
_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_([^\s/\\]+)$")
DATASET_NAME_RULE = "DatasetXXX_Name: 'Dataset', a three-digit id, '_', a name without spaces or slashes"


@dataclass(frozen=True)
class DataRoots:
    """The three top-level folders, as in nnU-Net (raw, preprocessed, results)."""

    raw: Path
    preprocessed: Path
    results: Path


def roots_from_environment(
    *, raw: str | None = None, preprocessed: str | None = None, results: str | None = None
) -> DataRoots:
    """Resolve each folder from its flag, else ``AUTOPROMPT_*``, else nnU-Net's ``nnUNet_raw`` /
    ``nnUNet_preprocessed`` / ``nnUNet_results``, else ``./autoprompt_data/<name>``."""
    given = {"raw": raw, "preprocessed": preprocessed, "results": results}
    resolved = {}
    for name, value in given.items():
        value = (
            value
            or os.environ.get(_ENV[name])
            or os.environ.get(NNUNET_ENV[name])
            or str(Path("autoprompt_data") / name)
        )
        resolved[name] = Path(value).expanduser()
    return DataRoots(**resolved)


def dataset_folder_name(dataset: str | int, search_in: Path) -> str:
    """Turn ``27``, ``"027"`` or ``"Dataset027_ACDC"`` into the folder name found in ``search_in``.

    Raises:
        AutoPromptError: when no folder (or more than one) matches, or the folder's name breaks nnU-Net's
            naming rule (``DatasetXXX_Name``), before any work is done.
    """
    text = str(dataset).strip()
    if _DATASET_FOLDER.match(text):
        return text
    if not text.isdigit():
        raise AutoPromptError(
            f"dataset '{text}' is neither an id (27) nor a folder name ({DATASET_NAME_RULE}); pass one of those"
        )
    prefix = f"Dataset{int(text):03d}_"
    matches = sorted(p.name for p in search_in.glob(prefix + "*") if p.is_dir()) if search_in.is_dir() else []
    if not matches:
        raise AutoPromptError(
            f"no folder {prefix}* in {search_in}; put the dataset there or point --raw/--preprocessed/--results at it"
        )
    if len(matches) > 1:
        raise AutoPromptError(
            f"dataset id {text} is ambiguous in {search_in}: {', '.join(matches)}; pass the full name"
        )
    dataset_id(matches[0])  # refuse a badly named folder now, not after planning
    return matches[0]


def dataset_id(folder_name: str) -> int:
    """``"Dataset027_ACDC"`` -> ``27``."""
    match = _DATASET_FOLDER.match(folder_name)
    if not match:
        raise AutoPromptError(
            f"'{folder_name}' is not a dataset folder name ({DATASET_NAME_RULE}, e.g. Dataset027_ACDC); rename it"
        )
    return int(match.group(1))
