"""Helpers shared by the dataset converters: target folder, atomic resumable copies, dataset.json."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from autoprompt.errors import AutoPromptError
from autoprompt.progress import progress
from pipeline.files import atomic_path, save_json


@dataclass(frozen=True)
class CopyJob:
    """One file to copy into the converted dataset."""

    source: Path
    target: Path


def dataset_folder(raw_folder: str | os.PathLike, dataset_id: int, name: str) -> Path:
    """``raw_folder/DatasetXXX_name``, after checking that no other dataset uses ``dataset_id``.

    Raises:
        AutoPromptError: the id is outside 1..999 or taken by a folder with another name.
    """
    if not 1 <= dataset_id <= 999:
        raise AutoPromptError(
            f"dataset id {dataset_id} is not in 1..999; pass --dataset-id with three digits at most"
        )
    raw_folder = Path(raw_folder)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    taken = sorted(p.name for p in raw_folder.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name)
    if taken:
        raise AutoPromptError(
            f"{raw_folder / taken[0]}: dataset id {dataset_id} is taken; pass another --dataset-id or remove that folder"
        )
    return raw_folder / folder_name


def copy_files(jobs: list[CopyJob], output: Path, *, desc: str) -> None:
    """Copy every job's file, each atomically, skipping targets already complete (so a rerun resumes).

    Raises:
        AutoPromptError: ``output`` holds image files this conversion would not write (another dataset or
            another conversion's options); nothing is copied then.
    """
    targets = {job.target for job in jobs}
    stale = sorted(
        path
        for split in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
        if (output / split).is_dir()
        for path in (output / split).iterdir()
        if not path.name.startswith(".") and path not in targets
    )
    if stale:
        raise AutoPromptError(
            f"{stale[0]}: {output} already holds files this conversion would not write; remove {output} or pass "
            "another --dataset-id"
        )
    for job in progress(jobs, desc=f"copying {desc}", unit="file"):
        if job.target.is_file() and job.target.stat().st_size == job.source.stat().st_size:
            continue
        with atomic_path(job.target) as tmp:
            shutil.copyfile(job.source, tmp)


def write_dataset_json(
    output: Path, *, channel_names: dict[str, str], labels: dict[str, int], num_training: int, **extra: str
) -> None:
    """Write ``output/dataset.json`` in the nnU-Net v2 schema (``extra``: description, reference, ...)."""
    save_json(
        {
            "channel_names": channel_names,
            "labels": labels,
            "numTraining": num_training,
            "file_ending": ".nii.gz",
            "name": output.name.split("_", 1)[1],
            **extra,
        },
        output / "dataset.json",
    )
