"""Shared fixtures: tiny synthetic datasets and the real datasets in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic_data import make_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (ACDC and Hippocampus in nnU-Net format); read it, never write into it."""
    if not (SHARED_DATA / "Dataset027_ACDC").is_dir():
        pytest.fail(
            f"{SHARED_DATA} is missing: the real-data tests need ../shared/data beside the repository"
        )
    return SHARED_DATA


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A fresh 6-case, 2-class synthetic raw dataset under ``tmp_path/raw``."""
    return make_synthetic_dataset(tmp_path / "raw")
