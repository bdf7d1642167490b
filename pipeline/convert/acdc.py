"""Convert the official ACDC download into an nnU-Net v2 raw dataset (``Dataset027_ACDC``).

Follows nnU-Net's ``Dataset027_ACDC`` conversion: the ED and ES frames of each patient become cases
``patientNNN_frameMM`` with one channel (``cineMRI``), the ``_gt`` files their labels (ACDC already uses
1 RV, 2 MYO, 3 LV), and ``patientNNN_4d.nii.gz`` is ignored. Unlike nnU-Net's script, the frames are taken
from each patient's ``Info.cfg`` (``ED: 1``, ``ES: 12``) and testing ground truth goes to ``labelsTs``.
Both frames of a patient must share a fold: plan with ``--group-regex '^(patient\\d+)_frame\\d+$'``.

The copy helpers at the bottom are shared with :mod:`pipeline.convert.amos`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from autoprompt.errors import AutoPromptError
from pipeline.files import atomic_path, save_json

ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
ACDC_LAYOUT = (
    "ACDC_DIR/training/patientNNN/ with Info.cfg (ED: and ES: lines), patientNNN_frameMM.nii.gz and "
    "patientNNN_frameMM_gt.nii.gz (and ACDC_DIR/testing/ likewise)"
)
_PATIENT = re.compile(r"^patient\d{3}$")


@dataclass(frozen=True)
class CopyJob:
    """One file to copy into the converted dataset."""

    source: Path
    target: Path


def convert_acdc(
    acdc_folder: str | os.PathLike, raw_folder: str | os.PathLike, *, dataset_id: int = 27
) -> Path:
    """Convert an official ACDC folder into ``raw_folder/DatasetXXX_ACDC``.

    Args:
        acdc_folder: the extracted download, holding ``training/`` (required) and ``testing/`` (optional);
            its ``database/`` subfolder is used when the folders sit there.
        raw_folder: where the nnU-Net raw datasets live.
        dataset_id: the nnU-Net dataset id.

    Returns:
        The dataset folder written (imagesTr, labelsTr, imagesTs, labelsTs when testing has ground truth,
        dataset.json).

    Raises:
        AutoPromptError: the layout differs from the official one (missing folder, Info.cfg, frame or
            ground-truth file), or the dataset id is taken by another dataset.
    """
    root = Path(acdc_folder)
    if not (root / "training").is_dir() and (root / "database" / "training").is_dir():
        root = root / "database"
    if not (root / "training").is_dir():
        raise AutoPromptError(f"{root}: no training folder; expected the official layout {ACDC_LAYOUT}")
    output = dataset_folder(raw_folder, dataset_id, "ACDC")
    jobs = _split_jobs(root / "training", output / "imagesTr", output / "labelsTr", labels_required=True)
    num_training = sum(job.target.parent.name == "imagesTr" for job in jobs)
    if (root / "testing").is_dir():
        jobs += _split_jobs(root / "testing", output / "imagesTs", output / "labelsTs", labels_required=False)
    copy_files(jobs, output, desc="ACDC")
    write_dataset_json(
        output,
        channel_names={"0": "cineMRI"},
        labels=ACDC_LABELS,
        num_training=num_training,
        description="ACDC cine MRI, ED and ES frames (Bernard et al., IEEE TMI 2018), converted by autoprompt "
        "from the official release.",
        reference="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    )
    return output


def _split_jobs(split: Path, images: Path, labels: Path, *, labels_required: bool) -> list[CopyJob]:
    """Copy jobs for the ED and ES frames of every patient folder in ``split`` (training or testing)."""
    patients = sorted(p for p in split.iterdir() if p.is_dir() and _PATIENT.match(p.name))
    if not patients:
        raise AutoPromptError(f"{split}: no patientNNN folders; expected the official layout {ACDC_LAYOUT}")
    jobs = []
    for patient in patients:
        for frame in _ed_es_frames(patient / "Info.cfg"):
            case = f"{patient.name}_frame{frame:02d}"
            image, label = patient / f"{case}.nii.gz", patient / f"{case}_gt.nii.gz"
            if not image.is_file():
                raise AutoPromptError(
                    f"{image}: missing (Info.cfg names frame {frame}); expected the official layout {ACDC_LAYOUT}"
                )
            jobs.append(CopyJob(image, images / f"{case}_0000.nii.gz"))
            if label.is_file():
                jobs.append(CopyJob(label, labels / f"{case}.nii.gz"))
            elif labels_required:
                raise AutoPromptError(
                    f"{label}: missing ground truth of a training frame; expected the official layout {ACDC_LAYOUT}"
                )
    return jobs


def _ed_es_frames(info: Path) -> list[int]:
    """The ED and ES frame numbers from a patient's ``Info.cfg`` (one number when they coincide)."""
    if not info.is_file():
        raise AutoPromptError(
            f"{info}: missing; every ACDC patient folder needs its Info.cfg with ED: and ES: lines"
        )
    fields = {}
    for line in info.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    frames = []
    for key in ("ED", "ES"):
        try:
            frames.append(int(fields[key]))
        except (KeyError, ValueError):
            raise AutoPromptError(
                f"{info}: no '{key}: <frame number>' line; restore the file from the official ACDC download"
            ) from None
    return sorted(set(frames))


# Shared by the converters ---------------------------------------------------------------------------------


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
    for job in tqdm(jobs, desc=f"copying {desc}", unit="file", disable=None):
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
