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
from pathlib import Path

from autoprompt.errors import AutoPromptError
from pipeline.convert.common import CopyJob, copy_files, dataset_folder, write_dataset_json

ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
ACDC_LAYOUT = (
    "ACDC_DIR/training/patientNNN/ with Info.cfg (ED: and ES: lines), patientNNN_frameMM.nii.gz and "
    "patientNNN_frameMM_gt.nii.gz (and ACDC_DIR/testing/ likewise)"
)
_PATIENT = re.compile(r"^patient\d{3}$")


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
