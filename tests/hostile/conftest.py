"""Fixtures of the hostile-input tables: one small planned dataset and a tiny model folder for the session.

Every hostile input must end in one line naming the file or option and the fix (exit status 2 on the
command line), leave no partial output and lose nothing; these fixtures give the tables something real
to aim at while staying seconds-fast (the ``tiny`` backbone, 3 x 24 x 20 voxel cases).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.cli import main
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import load_trainer_config
from tests.inference.conftest import write_fold
from tests.synthetic_data import make_synthetic_dataset

DATASET = "Dataset901_Synthetic"
SHAPE = (3, 24, 20)  # (Z, Y, X)
SPACING = (0.8, 0.8, 3.0)  # SimpleITK (x, y, z)


@dataclass(frozen=True)
class Setup:
    """The session's planned dataset and model folder (fold 0 trained, preset ``tiny``, configuration 2d)."""

    raw: Path  # raw root holding DATASET
    preprocessed: Path  # preprocessed root holding DATASET
    results: Path  # results root holding DATASET/autoprompt__tiny__2d
    model_dir: Path

    @property
    def raw_dataset(self) -> Path:
        return self.raw / DATASET

    def image(self, index: int = 0) -> Path:
        return self.raw_dataset / "imagesTr" / f"case_{index:03d}_0000.nii.gz"


@pytest.fixture(scope="session")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("hostile")
    raw = make_synthetic_dataset(root / "raw", num_cases=5, shape=SHAPE, spacing=SPACING)
    preprocessed = plan_and_preprocess(raw, root / "preprocessed", configurations=("2d",), num_processes=1)
    folder = ModelFolder.create(
        root / "results" / DATASET / "autoprompt__tiny__2d",
        plans_file=preprocessed / "plans.json",
        dataset_json_file=preprocessed / "dataset.json",
        fingerprint_file=preprocessed / "fingerprint.json",
        trainer_config=load_trainer_config("tiny"),
        configuration="2d",
    )
    write_fold(folder, 0, seed=0)
    return Setup(
        raw=root / "raw", preprocessed=root / "preprocessed", results=root / "results", model_dir=folder.path
    )


@dataclass(frozen=True)
class Outcome:
    """What a command did: its exit status and what it printed."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "error" in line]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run ``autoprompt ARGS...`` in-process; argparse's own refusals (SystemExit) count as their status."""

    def run(*args: str | Path) -> Outcome:
        capsys.readouterr()
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code=code, out=captured.out, err=captured.err)

    return run


def assert_one_line_error(outcome: Outcome, *expected: str) -> None:
    """Exit status 2, no traceback, and exactly one ``autoprompt: error:`` line holding every ``expected``."""
    assert outcome.code == 2, (outcome.code, outcome.err)
    assert "Traceback" not in outcome.err, outcome.err
    errors = [line for line in outcome.err.splitlines() if line.startswith("autoprompt: error:")]
    assert len(errors) == 1, outcome.err
    for text in expected:
        assert text in errors[0], (text, errors[0])


def write_volume(
    path: Path,
    array: np.ndarray,
    *,
    spacing: tuple[float, ...] | None = None,
) -> Path:
    """Write ``array`` (``(Z, Y, X)`` or ``(Y, X)``) with SimpleITK, e.g. with NaN voxels or odd spacing."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing or SPACING[: array.ndim])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def scan(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A float32 scan with some structure (not constant)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(100.0, 10.0, size=shape)).astype(np.float32)


def copy_dataset(setup: Setup, root: Path, name: str = DATASET) -> Path:
    """A writable copy of the session's raw dataset under ``root/raw/name``."""
    target = root / "raw" / name
    shutil.copytree(setup.raw_dataset, target)
    return target


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (relative, sorted); ``[]`` when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
