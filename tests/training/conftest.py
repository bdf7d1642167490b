"""Fixtures of the training tests: one small synthetic dataset, planned and preprocessed for the session.

Its embedding cache (tiny backbone) is built by the first training run and reused by the others, so
every test after the first pays only for its optimiser steps. The "2d" and "3d" configurations share
the preprocessed cases, the cache and (with the same view settings) the augmented views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.synthetic_data import make_synthetic_dataset

DATASET = "Dataset901_Synthetic"
# 2 classes, 6 cases (5 folds need 5), 3 slices of 40 x 32: the planner gives such small slices a small
# window and a finer_to_fill spacing, so every slice fits one window and the tiny backbone encodes 18 windows
# in all; "3d" stacks all 3 slices (stack depth 3).
SHAPE = (3, 40, 32)
TINY = ["final_validation=false"]


@dataclass(frozen=True)
class PlannedDataset:
    raw: Path  # raw root (holds DATASET)
    preprocessed: Path  # preprocessed root (holds DATASET)

    @property
    def folder(self) -> Path:
        return self.preprocessed / DATASET


@pytest.fixture(scope="session")
def planned(tmp_path_factory: pytest.TempPathFactory) -> PlannedDataset:
    from pipeline.experiment_planning import plan_and_preprocess

    root = tmp_path_factory.mktemp("training")
    raw = make_synthetic_dataset(root / "raw", shape=SHAPE, num_cases=6, num_classes=2)
    plan_and_preprocess(raw, root / "preprocessed", configurations=("2d", "3d"), num_processes=1)
    return PlannedDataset(raw=root / "raw", preprocessed=root / "preprocessed")
