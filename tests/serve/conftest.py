"""A tiny trained-looking model folder (tiny backbone, freshly initialised fold 0) and a running app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from autoprompt.modeling.config import ModelConfig
from autoprompt.serve import ServeSettings, create_app
from pipeline.checkpoint import save_checkpoint
from pipeline.experiment_planning import plan_and_preprocess
from pipeline.model_folder import ModelFolder
from pipeline.trainer_config import TrainerConfig
from tests.synthetic_data import make_synthetic_dataset, make_volume

SYNTHETIC = "Dataset901_Synthetic"
WORKER_START_S = 900.0
"""Safety limit on a worker process's start (importing torch, loading the model): minutes on a busy machine."""


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def raw_dataset(serve_root: Path) -> Path:
    """The synthetic raw dataset (5 cases, 2 classes, (8, 48, 40) voxels, 0.8 x 0.8 x 3 mm)."""
    return make_synthetic_dataset(serve_root / "raw", num_cases=5)


@pytest.fixture(scope="session")
def tiny_model_dir(serve_root: Path, raw_dataset: Path) -> Path:
    """A 2d model folder with the tiny backbone and one fold (0) of freshly initialised weights."""
    preprocessed = plan_and_preprocess(
        raw_dataset, serve_root / "preprocessed", configurations=("2d",), num_processes=1
    )
    config = TrainerConfig(
        model=ModelConfig(backbone="tiny", head_channels=16, adapter_dim=8), configuration="2d"
    )
    folder = ModelFolder.create(
        serve_root / "results" / SYNTHETIC / "autoprompt__tiny__2d",
        plans_file=preprocessed / "plans.json",
        dataset_json_file=preprocessed / "dataset.json",
        fingerprint_file=preprocessed / "fingerprint.json",
        trainer_config=config,
        configuration="2d",
    )
    model = folder.build_model(device="cpu")
    save_checkpoint(
        {
            "model": model.trainable_state_dict(),
            "metadata": {"backbone": "tiny", "backbone_checksum": model.backbone.checksum},
        },
        folder.fold_dir(0) / "checkpoint_best.pt",
    )
    return folder.path


@pytest.fixture(scope="session")
def settings(tiny_model_dir: Path, serve_root: Path) -> ServeSettings:
    return ServeSettings(model_dir=tiny_model_dir, data_dir=serve_root / "jobs", max_upload_mb=1.0, tta=False)


@pytest.fixture(scope="session")
def client(settings: ServeSettings) -> Iterator[TestClient]:
    """The app with its worker process running and its model loaded (the lifespan runs inside the ``with``),
    shared by all tests."""
    with TestClient(create_app(settings)) as test_client:
        wait_for_model(lambda: test_client.get("/api/health").json())
        yield test_client


def wait_for_model(health: Callable[[], dict], *, timeout_s: float = WORKER_START_S) -> None:
    """Poll ``health()`` (``GET /api/health``) until the workers' model is loaded (a safety limit, not a
    timing check)."""
    deadline = time.monotonic() + timeout_s
    while (model := health()["model"]) == "loading":
        assert time.monotonic() < deadline, f"the worker did not load the model within {timeout_s} s"
        time.sleep(0.2)
    assert model == "ready", health()


def write_scan(path: Path, *, shape: tuple[int, ...] = (3, 48, 40), seed: int = 0) -> Path:
    """A synthetic scan (two bright ellipses in noise) with non-trivial spacing, origin and direction."""
    rng = np.random.default_rng(seed)
    if len(shape) == 3:
        image, _ = make_volume(shape, num_classes=2, rng=rng)
        volume = sitk.GetImageFromArray(image.astype(np.int16))
        volume.SetSpacing((0.8, 0.7, 3.0))
        volume.SetOrigin((12.5, -40.0, 7.0))
        volume.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    else:
        image, _ = make_volume((1, *shape), num_classes=2, rng=rng)
        volume = sitk.GetImageFromArray(np.clip(image[0], 0, 255).astype(np.uint8))
    sitk.WriteImage(volume, str(path))
    return path


def wait_for_job(client: TestClient, job_id: str, *, timeout_s: float = 120.0) -> dict:
    """Poll ``GET /api/jobs/{id}`` until the job is done or failed (a safety limit, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}").json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish within {timeout_s} s: {status}")
