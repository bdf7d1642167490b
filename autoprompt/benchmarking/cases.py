"""Which cases a benchmark trains and tests on: ``--splits``, case lists or a seeded fold, and nested
training subsets for a data-efficiency curve (patients kept together through a group regex)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoprompt.errors import AutoPromptError
from pipeline.dataset import make_splits, read_splits

ALL = "all"
"""The training-set size "every case of the pool"."""


@dataclass(frozen=True)
class CaseSelection:
    """The cases of a benchmark.

    Attributes:
        train: the training pool (sorted); a data-efficiency subset is drawn from it.
        test: the test cases (sorted); never used for training or checkpoint selection.
        source: where the lists came from, for the report.
    """

    train: list[str]
    test: list[str]
    source: str


def parse_train_cases(text: str) -> tuple[list[str] | None, list[int | str]]:
    """``--train-cases``: ``"5,10,all"`` -> sizes; ``"case_a,case_b"`` -> case ids.

    Returns:
        ``(case ids or None, sizes)``: sizes are ints and ``"all"``; ids come with the size ``["all"]``.

    Raises:
        AutoPromptError: empty, or sizes mixed with case ids, or a size below 1.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise AutoPromptError(
            "--train-cases is empty; pass sizes like 5,10,all or case ids like case_000,case_001"
        )
    is_size = [item.isdigit() or item == ALL for item in items]
    if all(is_size):
        sizes: list[int | str] = [ALL if item == ALL else int(item) for item in items]
        if any(size == 0 for size in sizes):
            raise AutoPromptError("--train-cases: a training-set size must be at least 1")
        return None, sizes
    if any(is_size):
        raise AutoPromptError(
            f"--train-cases {text!r} mixes sizes and case ids; pass either sizes (5,10,all) or case ids"
        )
    return items, [ALL]


def group_of(case_id: str, group_regex: str | None) -> str:
    """The group (e.g. ACDC patient) of a case: regex group 1, or the case itself without a regex.

    Raises:
        AutoPromptError: the case does not match the regex.
    """
    if group_regex is None:
        return case_id
    match = re.match(group_regex, case_id)
    if match is None or match.lastindex is None:
        raise AutoPromptError(
            f"case {case_id}: does not match the group regex {group_regex!r} (group 1 names the group); "
            "fix --group-regex"
        )
    return match[1]


def select_cases(
    case_ids: Sequence[str],
    *,
    splits_file: str | os.PathLike | None = None,
    train_cases: Sequence[str] | None = None,
    test_cases: Sequence[str] | None = None,
    group_regex: str | None = None,
    seed: int = 12345,
) -> CaseSelection:
    """Choose the training pool and the test cases.

    ``splits_file`` (nnU-Net's splits_final.json shape): fold 0's "train" / "val". Otherwise the given
    lists; a missing list is every other case (whole groups only). With neither: fold 0 of
    :func:`pipeline.dataset.make_splits` (5 folds, ``seed``, ``group_regex``).

    Raises:
        AutoPromptError: a malformed splits file, a splits file together with case lists, an unknown
            case, an empty list, or a case (or, with ``group_regex``, a group) in both lists.
    """
    known = set(case_ids)
    if splits_file is not None:
        if train_cases is not None or test_cases is not None:
            raise AutoPromptError("pass either --splits or --train-cases/--test-cases case lists, not both")
        train, test = _fold_zero(Path(splits_file))
        source = f"fold 0 of {Path(splits_file).name} ('train' -> training, 'val' -> test)"
    elif train_cases is None and test_cases is None:
        fold = make_splits(sorted(known), num_folds=5, seed=seed, group_regex=group_regex)[0]
        train, test = fold["train"], fold["val"]
        source = f"fold 0 of a 5-fold split (seed {seed}): 'train' -> training, 'val' -> test"
    else:
        given = train_cases if train_cases is not None else test_cases
        _check_known(given, known, "--train-cases" if train_cases is not None else "--test-cases")
        taken = {group_of(case, group_regex) for case in given}
        rest = [case for case in sorted(known) if group_of(case, group_regex) not in taken]
        train = list(train_cases) if train_cases is not None else rest
        test = list(test_cases) if test_cases is not None else rest
        if train_cases is not None and test_cases is not None:
            source = "--train-cases and --test-cases"
        elif train_cases is not None:
            source = "--train-cases; every other case tests"
        else:
            source = "--test-cases; every other case trains"
    _check_known(train, known, "training cases")
    _check_known(test, known, "test cases")
    if not train or not test:
        raise AutoPromptError(f"{'no training' if not train else 'no test'} cases selected; give both sets")
    overlap = sorted({group_of(c, group_regex) for c in train} & {group_of(c, group_regex) for c in test})
    if overlap:
        what = "groups" if group_regex else "cases"
        raise AutoPromptError(
            f"training and test share {len(overlap)} {what} ({', '.join(overlap[:5])}); "
            "the test cases must never be trained on; remove them from one list"
        )
    return CaseSelection(train=sorted(set(train)), test=sorted(set(test)), source=source)


def _fold_zero(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise AutoPromptError(f"{path}: splits file not found; pass an existing file to --splits")
    fold = read_splits(path, "pass a file shaped like nnU-Net's splits_final.json to --splits")[0]
    return list(fold["train"]), list(fold["val"])


def _check_known(cases: Sequence[str], known: set[str], what: str) -> None:
    unknown = sorted(set(cases) - known)
    if unknown:
        raise AutoPromptError(
            f"{what}: {len(unknown)} case(s) not in the dataset ({', '.join(unknown[:5])}); check the names "
            "against imagesTr/labelsTr"
        )


def training_subsets(
    train: Sequence[str], sizes: Sequence[int | str], *, group_regex: str | None, seed: int
) -> dict[str, list[str]]:
    """The training cases of each size: N = number of groups (patients with a regex, else cases).

    The groups are shuffled once with ``seed`` and each subset takes the first N, so smaller subsets are
    part of larger ones and the same call always gives the same subsets. A size equal to the pool is "all".

    Returns:
        ``{"5": [...], "all": [...]}`` in increasing size, case ids sorted.

    Raises:
        AutoPromptError: a size larger than the number of groups in the pool.
    """
    groups: dict[str, list[str]] = {}
    for case in sorted(train):
        groups.setdefault(group_of(case, group_regex), []).append(case)
    order = [sorted(groups)[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    unit = "groups" if group_regex else "cases"
    subsets: dict[str, list[str]] = {}
    for size in sorted(sizes, key=lambda s: len(groups) if s == ALL else int(s)):
        count = len(groups) if size == ALL else int(size)
        if count > len(groups):
            raise AutoPromptError(
                f"--train-cases {size}: the training pool has only {len(groups)} {unit}; use at most {len(groups)}"
            )
        label = ALL if count == len(groups) else str(count)
        subsets[label] = sorted(case for group in order[:count] for case in groups[group])
    return subsets
