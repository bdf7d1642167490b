"""Shared fixtures: tiny synthetic datasets and the real datasets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from tests.synthetic_data import make_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def missing_requirement(reason: str) -> NoReturn:
    """Skip a test whose input is missing on a user's clone, but fail it where ``CI`` is set: CI always has
    its inputs, so no CI run can skip its way to green."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI is set, and CI must run this test")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _encoder_exports_in_a_temporary_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """OpenVINO exports of the test backbones go to a session folder, not the user's ``~/.cache``; child
    processes (serve workers, CLI runs) inherit it."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (ACDC and Hippocampus in nnU-Net format); read it, never write into it."""
    if not (SHARED_DATA / "Dataset027_ACDC").is_dir():
        missing_requirement(
            f"{SHARED_DATA} is missing: the real-data tests need ../shared/data (ACDC and Hippocampus in "
            "nnU-Net format) beside the repository"
        )
    return SHARED_DATA


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A fresh 6-case, 2-class synthetic raw dataset under ``tmp_path/raw``."""
    return make_synthetic_dataset(tmp_path / "raw")
