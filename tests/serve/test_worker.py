"""Jobs run in worker processes (issue #20): the server process runs no inference, the job store's lock
holds across processes, and a worker that dies is replaced."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autoprompt.serve import ServeSettings, create_app
from autoprompt.serve.jobs import JobStore
from autoprompt.serve.worker import WORKER_NICENESS, JobQueue
from tests.serve.conftest import WORKER_START_S, wait_for_job, write_scan

SAFETY_S = 120.0
"""Limit of every wait below: a safety bound against a hang, not a timing check."""


def _upload(client: TestClient, path: Path) -> str:
    response = client.post("/api/jobs", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {SAFETY_S} s: {what}")
        time.sleep(0.05)


def test_jobs_run_in_a_worker_process_not_in_the_server(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: JobQueue = client.app.state.jobs
    pids = jobs.worker_pids
    assert len(pids) == 1 and os.getpid() not in pids
    server_nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pids[0]) == min(19, server_nice + WORKER_NICENESS)

    def no_inference_here(image_file: Path):
        raise AssertionError("the server process ran a job's prediction")

    monkeypatch.setattr(client.app.state.engine, "predict", no_inference_here)
    status = wait_for_job(client, _upload(client, write_scan(tmp_path / "a.png", shape=(30, 30))))
    assert status["state"] == "done", status["error"]
    assert client.get("/api/health").json()["model"] == "ready"  # as the worker reported its model
    assert client.get("/api/model").json()["loaded"] is True


def _hold_lock(root: Path, job_id: str, held, release, job_seen) -> None:
    """In another process: hold the store's lock until ``release``; report whether the job still existed."""
    store = JobStore(root)
    with store.lock():
        held.set()
        release.wait(WORKER_START_S)
        job_seen.value = store.get(job_id) is not None


def test_the_store_lock_excludes_another_process(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "data")
    (tmp_path / "incoming").mkdir()
    job = store.create(
        upload=write_scan(tmp_path / "incoming" / "a.png", shape=(20, 20)), filename="a.png", kind=".png"
    )
    context = multiprocessing.get_context("spawn")
    held, release, job_seen = context.Event(), context.Event(), context.Value("b", False)
    holder = context.Process(target=_hold_lock, args=(store.root, job.id, held, release, job_seen))
    deleted: list[bool] = []
    deleting = threading.Thread(target=lambda: deleted.append(store.delete(job.id)))
    holder.start()
    try:
        assert held.wait(WORKER_START_S)  # the child imports this module first
        deleting.start()
        deleting.join(0.5)  # enough for an unguarded delete to finish
        assert deleting.is_alive() and store.folder(job.id).exists()
    finally:
        release.set()
        holder.join(WORKER_START_S)
    deleting.join(SAFETY_S)
    assert holder.exitcode == 0
    assert job_seen.value  # the job existed until the other process let go of the lock
    assert deleted == [True] and not store.folder(job.id).exists()


def test_a_killed_worker_fails_its_job_and_is_replaced(client: TestClient, tmp_path: Path) -> None:
    jobs: JobQueue = client.app.state.jobs
    store: JobStore = client.app.state.store
    _until(lambda: jobs.running == 0 and jobs.waiting == 0, "the queue is idle")
    [killed] = jobs.worker_pids
    with store.lock():  # the worker blocks in the job's first store update: it is surely running the job
        job_id = _upload(client, write_scan(tmp_path / "b.png", shape=(30, 30)))
        _until(lambda: jobs.running == 1, "the job is handed to the worker")
        os.kill(killed, signal.SIGKILL)
    status = wait_for_job(client, job_id, timeout_s=SAFETY_S)
    assert status["state"] == "failed"
    assert status["error"] == "the worker process ended unexpectedly (exit code -9); see the server log"
    assert jobs.running == 0
    [replacement] = jobs.worker_pids
    assert replacement != killed

    job_id = _upload(client, write_scan(tmp_path / "c.png", shape=(30, 30)))
    status = wait_for_job(client, job_id, timeout_s=WORKER_START_S)  # the replacement loads the model first
    assert status["state"] == "done", status["error"]


def test_health_is_loading_while_the_replacement_of_a_killed_worker_loads(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: JobQueue = client.app.state.jobs
    engine = client.app.state.engine
    _until(lambda: jobs.running == 0 and jobs.waiting == 0, "the queue is idle")
    assert client.get("/api/health").json()["model"] == "ready"
    reported, release = threading.Event(), threading.Event()
    worker_loaded = engine.worker_loaded

    def held_report(**report: object) -> None:  # the server takes the replacement's load report on release
        reported.set()
        release.wait(WORKER_START_S)
        worker_loaded(**report)

    monkeypatch.setattr(engine, "worker_loaded", held_report)
    [killed] = jobs.worker_pids
    try:
        os.kill(killed, signal.SIGKILL)
        _until(lambda: jobs.worker_pids != [killed], "a replacement is started")
        health = client.get("/api/health").json()
        assert health["model"] == "loading" and health["workers_ready"] == 0, health
        job_id = _upload(client, write_scan(tmp_path / "d.png", shape=(30, 30)))
        assert reported.wait(WORKER_START_S)  # the replacement has loaded; the server holds its report
        health = client.get("/api/health").json()
        assert health["model"] == "loading" and health["workers_ready"] == 0, health
        assert health["queued"] == 1  # the job waits: no worker can take it
    finally:
        release.set()
    _until(lambda: client.get("/api/health").json()["model"] == "ready", "health says ready again")
    health = client.get("/api/health").json()
    assert health["workers_ready"] == health["workers"] == 1, health
    status = wait_for_job(client, job_id, timeout_s=SAFETY_S)
    assert status["state"] == "done", status["error"]


def test_a_worker_dying_while_loading_the_model_is_not_restarted_forever(
    settings: ServeSettings, tmp_path: Path
) -> None:
    with TestClient(create_app(replace(settings, data_dir=tmp_path / "data"))) as fresh:
        jobs: JobQueue = fresh.app.state.jobs
        [killed] = jobs.worker_pids
        os.kill(killed, signal.SIGKILL)  # long before it has imported torch and loaded the model
        _until(lambda: fresh.get("/api/health").json()["model"] == "failed", "the model counts as failed")
        assert jobs.worker_pids == [killed]  # not replaced by a worker that would die alike
        error = fresh.get("/api/model").json()["load_error"]
        assert error == "the worker process ended while loading the model (exit code -9); see the server log"
