"""Jobs on disk: one folder per job under the data folder, its state in ``job.json``.

Keeping the state on disk lets a job outlive a page reload and a server restart. Job ids come from
:func:`secrets.token_urlsafe` and are checked against their pattern before any path is built from one.

Layout::

    DATA_DIR/incoming/<token>/scan.<ext>      an upload being received (removed if refused)
    DATA_DIR/incoming/<token>/...             a job's work being written (moved into the job by commit)
    DATA_DIR/jobs/<id>/job.json               the state (all a failed job keeps)
    DATA_DIR/jobs/<id>/upload/scan.<ext>      the input while the job waits or runs
    DATA_DIR/jobs/<id>/result/...             label map, preview arrays, box-mode results
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.files import load_json, save_json

_ID_BYTES = 16
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")  # token_urlsafe(16) -> 22 characters


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """One segmentation job, as stored in ``job.json``.

    Attributes:
        id: unguessable job id.
        state: queued, running, done or failed.
        filename: the client's file name (cleaned), for display and download names.
        kind: the upload type's file ending (``.nii.gz``, ``.zip``, ...).
        created: Unix time of the upload.
        updated: Unix time of the last change.
        progress: 0..1.
        stage: what the job is doing now, in words.
        error: one line for a failed job.
        result: for a done job: label map file name, shape, spacing and per-class measures.
    """

    id: str
    state: JobState
    filename: str
    kind: str
    created: float
    updated: float
    progress: float = 0.0
    stage: str = "waiting in the queue"
    error: str | None = None
    result: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**{**d, "state": JobState(d["state"])})


def new_job_id() -> str:
    """An unguessable id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(_ID_BYTES)


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the form of a job id (nothing else may name a job folder)."""
    return bool(_ID_PATTERN.match(text))


class JobStore:
    """Job folders under ``root``; every change of ``job.json`` goes through one lock (:meth:`lock`).

    A deleted job's folder is never re-created by work that finishes late: :meth:`update` writes only
    while the job exists, and results are written outside the job (:meth:`staging_folder`) and moved
    in by :meth:`commit`, under the same lock as :meth:`delete`, or discarded. The lock excludes the
    other threads and the other processes (the job workers) using the same ``root``; it relies on
    ``fcntl.flock``, so the store runs on Linux and macOS only.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.incoming_dir = self.root / "incoming"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's lock: a thread lock for this process's threads, and an exclusive ``flock`` on the
        jobs folder for other processes (dropped by the system if the holder dies)."""
        with self._thread_lock:
            handle = os.open(self.jobs_dir, os.O_RDONLY)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield
            finally:
                os.close(handle)  # releases the flock

    def folder(self, job_id: str) -> Path:
        """The folder of a job id (which must have the id pattern)."""
        if not is_job_id(job_id):
            raise KeyError(job_id)
        return self.jobs_dir / job_id

    def incoming_folder(self) -> Path:
        """A fresh, not yet existing folder for an upload being received."""
        return self.incoming_dir / secrets.token_urlsafe(_ID_BYTES)

    def staging_folder(self) -> Path:
        """A fresh, not yet existing folder for a job's results being written (see :meth:`commit`)."""
        return self.incoming_folder()

    def commit(self, job_id: str, staging: Path, *, into: str = "result", **changes: Any) -> Job | None:
        """Move the files of ``staging`` into the job's ``into`` folder and change its fields, atomically
        with respect to :meth:`delete`; ``staging`` is removed either way.

        Returns:
            The updated job, or None (and nothing written) if the job was deleted meanwhile.
        """
        try:
            with self.lock():
                job = self.get(job_id)
                if job is None:
                    return None
                target = self.folder(job_id) / into
                target.mkdir(exist_ok=True)
                for path in sorted(staging.iterdir()) if staging.is_dir() else ():
                    os.replace(path, target / path.name)
                return self._update(job, changes)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def disk_usage(self) -> int:
        """Bytes of every file under the data folder (jobs, uploads being received, staged results)."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):  # a file removed while counting
                    total += os.lstat(os.path.join(folder, name)).st_size
        return total

    def create(self, *, upload: Path, filename: str, kind: str) -> Job:
        """Make a queued job from a received upload (moved into the job's ``upload/`` folder)."""
        now = time.time()
        job = Job(
            id=new_job_id(), state=JobState.QUEUED, filename=filename, kind=kind, created=now, updated=now
        )
        folder = self.folder(job.id)
        (folder / "upload").mkdir(parents=True)
        shutil.move(str(upload), folder / "upload" / upload.name)
        save_json(job.to_dict(), folder / "job.json")
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None for an unknown or malformed id."""
        try:
            path = self.folder(job_id) / "job.json"
        except KeyError:
            return None
        try:
            return Job.from_dict(load_json(path))
        except FileNotFoundError:
            return None

    def update(self, job_id: str, **changes: Any) -> Job | None:
        """Change fields of a job and store it; None (and nothing written) if the job was deleted."""
        with self.lock():
            job = self.get(job_id)
            return None if job is None else self._update(job, changes)

    def _update(self, job: Job, changes: dict[str, Any]) -> Job:
        """Store ``job`` with ``changes`` (the caller holds :meth:`lock` and has seen the job exist)."""
        job = replace(job, **changes, updated=time.time())
        save_json(job.to_dict(), self.folder(job.id) / "job.json")
        return job

    def fail(self, job_id: str, message: str) -> Job | None:
        """Mark a job failed with ``message`` and remove everything of it but its state."""
        with self.lock():
            folder = self.folder(job_id)
            for child in folder.iterdir() if folder.is_dir() else ():
                if child.is_dir():
                    shutil.rmtree(child)
                elif child.name != "job.json":
                    child.unlink()
        return self.update(job_id, state=JobState.FAILED, error=message, stage="failed", result=None)

    def delete(self, job_id: str) -> bool:
        """Remove a job's folder; False if there was no such job."""
        with self.lock():
            if self.get(job_id) is None:
                return False
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
            return True

    def all(self) -> Iterator[Job]:
        """Every stored job, oldest first."""
        jobs = (self.get(path.name) for path in self.jobs_dir.iterdir() if is_job_id(path.name))
        yield from sorted((job for job in jobs if job is not None), key=lambda job: job.created)

    def cleanup(self, *, max_age_s: float, now: float | None = None) -> list[str]:
        """Delete finished jobs (and abandoned uploads) not changed for ``max_age_s`` seconds.

        Queued and running jobs are kept whatever their age.

        Returns:
            The ids of the deleted jobs.
        """
        now = time.time() if now is None else now
        removed = [
            job.id
            for job in self.all()
            if job.state in (JobState.DONE, JobState.FAILED)
            and now - job.updated > max_age_s
            and self.delete(job.id)
        ]
        for folder in self.incoming_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):  # an upload or staged result just moved away
                if now - folder.stat().st_mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
        for folder in self.jobs_dir.iterdir():  # a crash between mkdir and job.json leaves a bare folder
            with contextlib.suppress(FileNotFoundError):
                if not (folder / "job.json").exists() and now - folder.stat().st_mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
        return removed
