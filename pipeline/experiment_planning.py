"""``plan_and_preprocess``: verify a raw dataset, fingerprint it, plan it, preprocess it, make its folds.

    from autoprompt import api
    folder = api.plan_and_preprocess("raw/Dataset027_ACDC", "preprocessed", group_regex=ACDC_GROUP_REGEX)

Every step is resumable: an existing fingerprint.json (for the same cases) and plans.json (possibly edited
by hand) are kept unless ``overwrite_plans``; finished cases and an existing splits_final.json are kept.

A small dataset is never refused: with fewer case groups than folds, every group is a fold
(leave-one-group-out), and a single group gets no folds, only fold ``all`` (a note says so).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from autoprompt.errors import AutoPromptError
from autoprompt.modeling.backbone import backbone_window_size, backbone_windows, check_backbone_name
from autoprompt.paths import dataset_id
from pipeline.dataset import (
    DEFAULT_NUM_FOLDS,
    SPLITS_FILE,
    RawDataset,
    check_num_folds,
    compile_group_regex,
    fold_indices,
    folds_made,
    group_cases,
    load_or_create_splits,
    load_raw_dataset,
    make_splits,
    splits_note,
    verify_dataset,
)
from pipeline.files import load_json, save_json
from pipeline.preprocessing import run_preprocessing
from planners.fingerprint import extract_fingerprint
from planners.planner import plan_dataset
from planners.plans import Plans

CONFIGURATIONS = ("2d", "3d")


def check_dataset(raw_dataset_folder: str | os.PathLike, *, num_processes: int = 2) -> RawDataset:
    """Load and verify a raw dataset; print every problem (stderr) and fail if there is any.

    Raises:
        AutoPromptError: ``"N problems in dataset ...; fix them and re-run"`` after printing the problems.
    """
    raw = load_raw_dataset(raw_dataset_folder)
    problems = verify_dataset(raw, num_processes=num_processes)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        raise AutoPromptError(
            f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in dataset {raw.folder} (listed above); "
            "fix them and re-run"
        )
    return raw


def plan_and_preprocess(
    raw_dataset_folder: str | os.PathLike,
    preprocessed_root: str | os.PathLike,
    *,
    configurations: Sequence[str] = CONFIGURATIONS,
    num_processes: int = 2,
    verify: bool = True,
    group_regex: str | None = None,
    seed: int = 12345,
    num_folds: int | None = None,
    overwrite_plans: bool = False,
    backbone: str = "litemedsam",
) -> Path:
    """Verify, fingerprint, plan and preprocess a raw dataset, and make its cross-validation folds.

    Writes ``preprocessed_root/<dataset>/``: ``fingerprint.json``, ``plans.json``, ``dataset.json``,
    ``<data_identifier>/{case}.npy|_seg.npy|.json`` and ``splits_final.json``. Nothing is written when
    verification finds a problem.

    Args:
        raw_dataset_folder: ``.../DatasetXXX_Name`` in nnU-Net v2 raw format.
        preprocessed_root: the folder that holds preprocessed datasets.
        configurations: which of "2d"/"3d" to preprocess (they share one preprocessing); "3d" is skipped
            with a note for a 2D dataset.
        num_processes: worker processes.
        verify: check the dataset first (recommended).
        group_regex: cases whose regex group 1 is equal share a fold (ACDC: ``ACDC_GROUP_REGEX``).
        seed: seed of the folds.
        num_folds: cross-validation folds (None: 5); with fewer case groups, one fold per group, and none
            (only fold ``all``) for a single group; a note on stderr says so. An existing
            splits_final.json is kept whatever this says (a note names the difference).
        overwrite_plans: plan again even if fingerprint.json/plans.json exist (drops hand edits).
        backbone: the backbone the plans are for; its input size is the window (LiteMedSAM 256, SAM/MedSAM
            ViT 1024). An existing plans.json with other windows is refused (re-plan with ``overwrite_plans``).

    Returns:
        The preprocessed dataset folder.

    Raises:
        AutoPromptError: a folder name that breaks nnU-Net's ``DatasetXXX_Name`` rule, dataset problems, an
            unknown configuration or backbone, a bad group regex, fewer than 2 folds asked for, or a
            plans.json that does not fit the dataset or the backbone.
    """
    unknown = [name for name in configurations if name not in CONFIGURATIONS]
    if unknown:
        raise AutoPromptError(
            f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGURATIONS)}"
        )
    check_backbone_name(backbone)
    folds = DEFAULT_NUM_FOLDS if num_folds is None else num_folds
    check_num_folds(folds)
    if group_regex is not None:
        compile_group_regex(group_regex)  # a broken regex fails before the dataset is read
    dataset_id(Path(raw_dataset_folder).name)  # nnU-Net's DatasetXXX_Name rule, checked before any work
    raw = (
        check_dataset(raw_dataset_folder, num_processes=num_processes)
        if verify
        else load_raw_dataset(raw_dataset_folder)
    )
    out = Path(preprocessed_root) / raw.name
    splits_existed = (out / SPLITS_FILE).is_file()
    if not splits_existed:  # a bad regex fails before any work
        make_splits(list(raw.cases), num_folds=folds, seed=seed, group_regex=group_regex)

    fingerprint = _fingerprint(
        raw, out / "fingerprint.json", num_processes=num_processes, reuse=not overwrite_plans
    )
    plans = _plans(raw, fingerprint, out / "plans.json", reuse=not overwrite_plans, backbone=backbone)
    planned = [name for name in configurations if name in plans.configurations]
    for name in sorted(set(configurations) - set(planned)):
        print(
            f"note: configuration '{name}' is not planned for {raw.name} (2D images); skipped",
            file=sys.stderr,
        )
    save_json(raw.dataset_json, out / "dataset.json")
    run_preprocessing(raw, plans, out, num_processes=num_processes, configurations=planned)
    splits = load_or_create_splits(out, list(raw.cases), num_folds=folds, seed=seed, group_regex=group_regex)
    note = _splits_note(raw, splits, group_regex, folds, existed=splits_existed, asked=num_folds is not None)
    if note:
        print(note, file=sys.stderr)
    return out


def _splits_note(
    raw: RawDataset,
    splits: list[dict],
    group_regex: str | None,
    num_folds: int,
    *,
    existed: bool,
    asked: bool,
) -> str | None:
    """The one-line note on the folds: fewer groups than ``num_folds`` (when the file was made now), or a kept
    file that holds another number of folds than ``--folds`` asked for; None when there is nothing to say."""
    if not existed:
        return splits_note(
            len(group_cases(list(raw.cases), group_regex)), num_folds, grouped=bool(group_regex)
        )
    if not asked:
        return None
    try:
        expected = folds_made(len(group_cases(list(raw.cases), group_regex)), num_folds)
    except AutoPromptError:  # the kept file was made without this regex; only the fold count matters here
        expected = num_folds
    found = len(fold_indices(splits))
    if found == expected:
        return None
    return (
        f"note: the existing {raw.name}/{SPLITS_FILE} is kept with {found} folds; delete it and re-run to "
        f"make {expected}"
    )


def _fingerprint(raw: RawDataset, path: Path, *, num_processes: int, reuse: bool) -> dict:
    """The existing fingerprint.json if it covers exactly these cases, else a new one (saved)."""
    if reuse and path.is_file():
        fingerprint = load_json(path)
        if set(fingerprint.get("cases", {})) == set(raw.cases):
            return fingerprint
    fingerprint = extract_fingerprint(raw, num_processes=num_processes)
    save_json(fingerprint, path)
    return fingerprint


def _plans(raw: RawDataset, fingerprint: dict, path: Path, *, reuse: bool, backbone: str) -> Plans:
    """The existing (maybe hand-edited) plans.json, else new plans for ``backbone``'s window; a file is
    rewritten only if it changes.

    Raises:
        AutoPromptError: an existing plans.json is invalid, has other labels/channels than dataset.json, or
            other windows than ``backbone`` takes.
    """
    native, windows = backbone_window_size(backbone), backbone_windows(backbone)
    if reuse and path.is_file():
        plans = Plans.load(path)
        for key in ("labels", "channel_names"):
            if getattr(plans, key) != getattr(raw, key):
                raise AutoPromptError(
                    f"{path}: {key} differ from {raw.dataset_json_path}; re-plan with --overwrite-plans"
                )
        planned = {tuple(plan.window_size) for plan in plans.configurations.values()}
        foreign = sorted(size for size in planned if size[0] != size[1] or size[0] not in windows)
        if foreign:
            shown = ", ".join(f"{rows} x {cols}" for rows, cols in foreign)
            raise AutoPromptError(
                f"{path}: planned for {shown} windows, but backbone {backbone} takes {native} x {native}"
                f"{' or smaller' if len(windows) > 1 else ''}; pass the backbone it was planned for (--backbone) or "
                "re-plan with --overwrite-plans (preprocessed cases of other windows are kept)"
            )
        return plans
    plans = plan_dataset(fingerprint, raw.dataset_json, window=native, smaller_windows=windows[:-1])
    try:
        unchanged = load_json(path) == plans.to_dict()
    except (OSError, ValueError):
        unchanged = False
    if not unchanged:  # an unchanged file keeps its time, so finished cases stay valid
        plans.save(path)
    return plans
