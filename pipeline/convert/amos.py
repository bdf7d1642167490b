"""Convert the official AMOS 2022 download (``amos22``) into an nnU-Net v2 raw dataset.

Follows nnU-Net's ``Dataset218_Amos2022_task1`` (CT only) and ``Dataset219_Amos2022_task2`` (CT and MRI)
conversions: the cases are those listed in the AMOS ``dataset.json``; training and validation cases are
merged into ``imagesTr``/``labelsTr`` (AMOS does not say how to use its validation set, and 5-fold cross-
validation beats one split), test images go to ``imagesTs``; the 15 organ labels come from the AMOS
``dataset.json``. A case ``amos_NNNN`` is CT when ``NNNN <= 500`` and MRI above (AMOS numbers its 500 CT
scans first); ``ct_only`` keeps the CT cases.
"""

from __future__ import annotations

import os
from pathlib import Path

from autoprompt.errors import AutoPromptError
from pipeline.convert.common import CopyJob, copy_files, dataset_folder, write_dataset_json
from pipeline.files import load_json

AMOS_CT_MAX_ID = 500
AMOS_LAYOUT = "amos22/ with dataset.json, imagesTr, labelsTr, imagesVa, labelsVa and imagesTs"
_TASKS = {
    True: (218, "AMOS2022_postChallenge_task1", "CT"),
    False: (219, "AMOS2022_postChallenge_task2", "either_CT_or_MR"),
}


def convert_amos(
    amos_folder: str | os.PathLike,
    raw_folder: str | os.PathLike,
    *,
    ct_only: bool = False,
    dataset_id: int | None = None,
) -> Path:
    """Convert an official ``amos22`` folder into ``raw_folder/DatasetXXX_AMOS2022_postChallenge_task{1,2}``.

    Args:
        amos_folder: the extracted ``amos22`` folder (or the folder holding it).
        raw_folder: where the nnU-Net raw datasets live.
        ct_only: keep only the CT cases (task 1, channel "CT"); otherwise CT and MRI (task 2, channel
            "either_CT_or_MR", so every image is normalised on its own).
        dataset_id: the nnU-Net dataset id; default 218 with ``ct_only``, else 219.

    Returns:
        The dataset folder written (imagesTr, labelsTr, imagesTs, dataset.json).

    Raises:
        AutoPromptError: dataset.json or a file it lists is missing or malformed, or the id is taken.
    """
    root = Path(amos_folder)
    if not (root / "dataset.json").is_file() and (root / "amos22" / "dataset.json").is_file():
        root = root / "amos22"
    source = _load_amos_json(root / "dataset.json")
    default_id, task_name, channel = _TASKS[ct_only]
    output = dataset_folder(raw_folder, default_id if dataset_id is None else dataset_id, task_name)
    jobs = []
    for key, images, labels in (("training", "imagesTr", "labelsTr"), ("validation", "imagesVa", "labelsVa")):
        for case in _cases(source, key, root / "dataset.json", ct_only=ct_only):
            jobs.append(
                CopyJob(
                    _existing(root / images / f"{case}.nii.gz"), output / "imagesTr" / f"{case}_0000.nii.gz"
                )
            )
            jobs.append(
                CopyJob(_existing(root / labels / f"{case}.nii.gz"), output / "labelsTr" / f"{case}.nii.gz")
            )
    num_training = len(jobs) // 2
    if num_training == 0:
        raise AutoPromptError(
            f"{root / 'dataset.json'}: lists no {'CT ' if ct_only else ''}training or validation cases"
        )
    for case in _cases(source, "test", root / "dataset.json", ct_only=ct_only):
        jobs.append(
            CopyJob(
                _existing(root / "imagesTs" / f"{case}.nii.gz"), output / "imagesTs" / f"{case}_0000.nii.gz"
            )
        )
    copy_files(jobs, output, desc="AMOS")
    write_dataset_json(
        output,
        channel_names={"0": channel},
        labels=_labels(source, root / "dataset.json"),
        num_training=num_training,
        description="AMOS 2022 post-challenge release, converted by autoprompt as nnU-Net does: validation cases "
        "(with their labels) joined the training cases" + ("; CT only." if ct_only else "; CT and MRI."),
        reference="https://amos22.grand-challenge.org/",
        release="https://zenodo.org/record/7262581",
    )
    return output


def _load_amos_json(path: Path) -> dict:
    if not path.is_file():
        raise AutoPromptError(
            f"{path}: missing; point to the extracted AMOS folder, expected layout {AMOS_LAYOUT}"
        )
    try:
        data = load_json(path)
    except ValueError as error:
        raise AutoPromptError(
            f"{path}: not valid JSON ({error}); restore it from the AMOS download"
        ) from error
    missing = [key for key in ("labels", "training", "validation", "test") if key not in data]
    if missing:
        raise AutoPromptError(
            f"{path}: no {', '.join(missing)} entries; use the dataset.json of the AMOS post-challenge release"
        )
    return data


def _cases(source: dict, key: str, path: Path, *, ct_only: bool) -> list[str]:
    """The case names (``amos_0001``) listed under ``key``, CT only when asked."""
    cases = []
    for entry in source[key]:
        image = entry["image"] if isinstance(entry, dict) else entry
        case = Path(str(image)).name.removesuffix(".nii.gz")
        number = case.rsplit("_", 1)[-1]
        if not number.isdigit():
            raise AutoPromptError(
                f"{path}: '{image}' in '{key}' is not named amos_NNNN.nii.gz; restore the AMOS dataset.json"
            )
        if not ct_only or int(number) <= AMOS_CT_MAX_ID:
            cases.append(case)
    return cases


def _existing(path: Path) -> Path:
    if not path.is_file():
        hint = " (labelsVa ships with the post-challenge release)" if path.parent.name == "labelsVa" else ""
        raise AutoPromptError(
            f"{path}: missing but listed in dataset.json{hint}; expected layout {AMOS_LAYOUT}"
        )
    return path


def _labels(source: dict, path: Path) -> dict[str, int]:
    """AMOS's ``{"0": "background", "1": "spleen", ...}`` as nnU-Net's ``{"background": 0, "spleen": 1, ...}``."""
    try:
        values = sorted((int(value), str(name)) for value, name in source["labels"].items())
    except (AttributeError, ValueError):
        raise AutoPromptError(
            f"{path}: labels must map numbers to names; restore the AMOS dataset.json"
        ) from None
    return {("background" if value == 0 else name): value for value, name in values}
