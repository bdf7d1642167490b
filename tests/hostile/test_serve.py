"""Hostile uploads and requests against the web service (issue #20, items 1, 2, 3, 4, 6 and 8).

A scan's cost is bounded by the model, not by its file: cost bombs are refused at upload (422); the queue
and the jobs' disk are bounded (503 with Retry-After); a deleted job stays deleted whatever work was
running for it; NaN is refused in scans and in box fields.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from autoprompt.errors import AutoPromptError
from autoprompt.serve import ServeSettings, create_app
from autoprompt.serve.worker import run_job
from tests.hostile.conftest import Setup, scan, write_volume
from tests.hostile.test_commands import header_only_nifti
from tests.serve.conftest import wait_for_job, wait_for_model, write_scan


def _settings(setup: Setup, data_dir: Path, **changes: object) -> ServeSettings:
    return ServeSettings(
        model_dir=setup.model_dir, data_dir=data_dir, **{"max_upload_mb": 1.0, "tta": False, **changes}
    )


def _upload(client: TestClient, path: Path):
    with path.open("rb") as handle:
        return client.post("/api/jobs", files={"file": (path.name, handle, "application/octet-stream")})


def _stored(client: TestClient) -> list[str]:
    """Every file the service keeps (jobs, uploads being received, staged results)."""
    root = client.app.state.store.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def client(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service with its worker process running and its model loaded."""
    app = create_app(_settings(setup, tmp_path_factory.mktemp("serve") / "jobs"))
    with TestClient(app) as test_client:
        wait_for_model(lambda: test_client.get("/api/health").json())
        yield test_client


@pytest.fixture(scope="module")
def done_job(client: TestClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished job of a small 2D picture (one network window)."""
    picture = write_scan(tmp_path_factory.mktemp("picture") / "small.png", shape=(20, 20))
    status = wait_for_job(client, _upload(client, picture).json()["id"])
    assert status["state"] == "done", status
    return status["id"]


def _idle_client(setup: Setup, data_dir: Path, **changes: object) -> TestClient:
    """The service without its worker (no lifespan): uploads stay queued."""
    return TestClient(create_app(_settings(setup, data_dir, **changes)))


# ------------------------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("bomb", ["coarse_spacing", "header_promises_600_slices"])
def test_cost_bombs_are_refused_at_upload(setup: Setup, tmp_path: Path, bomb: str) -> None:
    if bomb == "coarse_spacing":  # 22 KB, 4 x 40 x 40 voxels at 60 mm
        path = write_volume(tmp_path / "coarse.nii.gz", scan(shape=(4, 40, 40)), spacing=(60.0, 60.0, 60.0))
        expected = "coarse.nii.gz: 4x40x40 voxels resampled to"
    else:
        path = header_only_nifti(tmp_path / "huge.nii.gz", (1024, 1024, 600), (0.4, 0.4, 3.0))
        expected = "huge.nii.gz: 600x1024x1024 voxels"
    client = _idle_client(setup, tmp_path / "jobs")
    answer = _upload(client, path)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith(expected) and "over the limit" in detail and "\n" not in detail
    assert str(tmp_path / "jobs") not in detail  # names the upload, not the server's files
    assert _stored(client) == []


def test_model_info_reports_the_limits(client: TestClient) -> None:
    info = client.get("/api/model").json()
    assert info["max_case_memory_gb"] == 16.0 and info["max_case_windows"] == 20_000
    assert info["max_queued_jobs"] >= 1 and info["max_jobs_disk_gb"] > 0


def test_serve_defaults_match_the_command_line_help() -> None:
    from autoprompt.commands import serve as command
    from autoprompt.serve import settings

    assert command.DEFAULT_MAX_QUEUED_JOBS == settings.DEFAULT_MAX_QUEUED_JOBS
    assert command.DEFAULT_MAX_JOBS_DISK_GB == settings.DEFAULT_MAX_JOBS_DISK_GB


# ------------------------------------------------------------------------------------------- item 4
def test_queue_is_bounded_with_retry_after(setup: Setup, tmp_path: Path) -> None:
    client = _idle_client(setup, tmp_path / "jobs", max_queued_jobs=2)
    picture = write_scan(tmp_path / "a.png", shape=(20, 20))
    assert [_upload(client, picture).status_code for _ in range(2)] == [201, 201]
    before = _stored(client)
    refused = _upload(client, picture)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "queue is full" in refused.json()["detail"]
    assert _stored(client) == before
    assert client.get("/api/health").json()["queued"] == 2


def test_disk_used_by_jobs_is_bounded(setup: Setup, tmp_path: Path) -> None:
    client = _idle_client(
        setup, tmp_path / "jobs", max_jobs_disk_gb=0.5 / 1024
    )  # 0.5 MB < the 1 MB upload limit
    answer = _upload(client, write_scan(tmp_path / "a.png", shape=(20, 20)))
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
    assert "GB of disk" in answer.json()["detail"]
    assert _stored(client) == []


# ------------------------------------------------------------------------------------------- item 2
def test_delete_during_a_box_request_stays_deleted(
    client: TestClient, setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = write_scan(tmp_path / "boxed.png", shape=(20, 20), seed=3)
    job_id = wait_for_job(client, _upload(client, picture).json()["id"])["id"]
    engine, store = client.app.state.engine, client.app.state.store

    def segment_then_deleted(key, pixels, box, *, intensity_range):  # the DELETE lands mid-request
        assert store.delete(job_id)
        return np.ones(pixels.shape, dtype=bool)

    monkeypatch.setattr(engine, "segment_box", segment_then_deleted)
    answer = client.post(f"/api/jobs/{job_id}/box", json={"slice": 0, "box": [1, 1, 9, 9]})
    assert answer.status_code == 404
    assert not store.folder(job_id).exists()  # no box.png / box_mask.npy resurrected the folder
    assert list(store.incoming_dir.iterdir()) == []


def test_delete_while_running_discards_the_results(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _idle_client(setup, tmp_path / "jobs")
    job_id = _upload(client, write_scan(tmp_path / "a.png", shape=(20, 20))).json()["id"]
    engine, store = client.app.state.engine, client.app.state.store
    predict = engine.predict

    def predict_then_deleted(image_file: Path):
        prediction = predict(image_file)
        assert store.delete(job_id)
        return prediction

    monkeypatch.setattr(engine, "predict", predict_then_deleted)
    run_job(store, engine, job_id)
    assert not store.folder(job_id).exists()
    assert _stored(client) == []


# --------------------------------------------------------------------------------------- items 3, 6, 8
@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_nan_scan_fails_its_job_with_one_line(client: TestClient, tmp_path: Path, ending: str) -> None:
    array = scan()
    array[1, 5, 5] = np.nan
    status = wait_for_job(
        client, _upload(client, write_volume(tmp_path / f"nan{ending}", array)).json()["id"]
    )
    assert status["state"] == "failed"
    assert status["error"].startswith(f"nan{ending}: contains NaN or infinite values")
    result = client.get(f"/api/jobs/{status['id']}/result")
    assert result.status_code == 409
    assert "failed" in result.json()["detail"] and "wait for its result" not in result.json()["detail"]


@pytest.mark.parametrize("box", [[math.nan] * 4, [1, 1, math.inf, 9], [1, -math.inf, 9, 9]])
def test_non_finite_box_is_refused_and_nothing_stored(client: TestClient, done_job: str, box: list) -> None:
    store = client.app.state.store
    before = (store.folder(done_job) / "job.json").read_bytes()
    # JSON has no NaN; Python's encoder writes it anyway, as a hostile client would
    body = (
        '{"slice": 0, "box": ['
        + ", ".join(map(str, box)).replace("nan", "NaN").replace("inf", "Infinity")
        + "]}"
    )
    answer = client.post(
        f"/api/jobs/{done_job}/box", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert (store.folder(done_job) / "job.json").read_bytes() == before


@pytest.mark.parametrize(
    "changes",
    [
        {"job_ttl_hours": math.nan},
        {"max_upload_mb": math.nan},
        {"max_case_memory_gb": math.inf},
        {"max_queued_jobs": 0},
        {"max_jobs_disk_gb": -1.0},
    ],
)
def test_non_finite_or_non_positive_settings_are_refused(setup: Setup, tmp_path: Path, changes: dict) -> None:
    with pytest.raises(AutoPromptError, match="must be a positive finite number"):
        _settings(setup, tmp_path / "jobs", **changes)


def test_health_answers_while_uploads_are_refused(setup: Setup, tmp_path: Path) -> None:
    client = _idle_client(setup, tmp_path / "jobs", max_queued_jobs=1)
    picture = write_scan(tmp_path / "a.png", shape=(20, 20))
    _upload(client, picture)
    assert _upload(client, picture).status_code == 503
    started = time.perf_counter()
    assert client.get("/api/health").json()["status"] == "ok"
    assert time.perf_counter() - started < 5.0  # a safety bound, not a benchmark
