"""Running jobs in the background: a queue served by worker processes, each with its own loaded model.

Inference runs in these processes, never in the web server's process, so the server keeps answering
while a scan is segmented. The server hands each idle worker one job id at a time through its own pipe
and keeps the waiting jobs itself, so a worker that dies (e.g. killed for memory) takes nothing else with
it: its job fails with one line and a new worker takes its place. A job's steps update its ``job.json``
(stage and progress); a user's mistake (an unreadable scan, a DICOM zip with two series, ...) fails the job
with one line, and a failed job keeps nothing but its state.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from autoprompt.errors import AutoPromptError
from autoprompt.serve.engine import Engine
from autoprompt.serve.jobs import JobState, JobStore
from autoprompt.serve.render import intensity_window
from autoprompt.serve.settings import ServeSettings
from autoprompt.serve.uploads import UploadKind, unpack_zip
from pipeline.io import Geometry, read_image, write_image

LOGGER = logging.getLogger("autoprompt.serve")
WORKER_NICENESS = 10
"""Added to the worker processes' nice value: their inference yields the CPU to the server's answers."""
_KNOWN_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".zip", ".png", ".jpeg", ".jpg")


def scan_stem(filename: str) -> str:
    """The client's file name without its image ending (``brain.nii.gz`` -> ``brain``)."""
    for ending in _KNOWN_ENDINGS:
        if filename.lower().endswith(ending):
            return filename[: -len(ending)] or "scan"
    return filename or "scan"


def output_name(filename: str, kind: UploadKind, tag: str) -> str:
    """Download name of an output in the input's format: ``brain.nii.gz``, ``seg`` -> ``brain_seg.nii.gz``.

    A JPEG gives PNG (lossless labels), a DICOM zip gives NIfTI.
    """
    return f"{scan_stem(filename)}_{tag}{kind.result_suffix}"


def class_measures(labels: np.ndarray, geometry: Geometry, engine: Engine) -> list[dict]:
    """Per foreground class: voxel count and volume in mL (3D) or area in mm² (2D)."""
    counts = np.bincount(
        labels.reshape(-1).astype(np.int64), minlength=max(c.label for c in engine.classes) + 1
    )
    voxel_mm = float(np.prod(geometry.spacing))
    measures = []
    for info in engine.classes:
        voxels = int(counts[info.label])
        measure = {"label": info.label, "name": info.name, "color": info.color, "voxels": voxels}
        if labels.ndim == 3:
            measure["volume_ml"] = round(voxels * voxel_mm / 1000.0, 3)
        else:
            measure["area_mm2"] = round(voxels * voxel_mm, 2)
        measures.append(measure)
    return measures


def run_job(store: JobStore, engine: Engine, job_id: str) -> None:
    """Segment one queued job's upload and store its results (or its error).

    Everything is written in a staging folder outside the job and moved in by
    :meth:`JobStore.commit`, so a job deleted while it runs is never re-created: its results are discarded.
    """
    folder = store.folder(job_id)
    job = store.update(job_id, state=JobState.RUNNING, progress=0.05, stage="reading the scan")
    if job is None:  # deleted while queued
        return
    kind = UploadKind(job.kind)
    upload = folder / "upload" / f"scan{kind.value}"
    staging = store.staging_folder()
    started = time.perf_counter()
    try:
        scan = unpack_zip(upload, staging / "series") if kind is UploadKind.DICOM_ZIP else upload
        engine.check_case(scan)  # from the header, before the voxels are read
        image, geometry = read_image(scan)
        store.update(job_id, progress=0.15, stage="segmenting")
        prediction = engine.predict(scan)
        if prediction.labels.shape != image.shape:
            raise RuntimeError(
                f"prediction shape {prediction.labels.shape} differs from the scan's {image.shape}"
            )
        store.update(job_id, progress=0.9, stage="writing the result")
        shutil.rmtree(staging / "series", ignore_errors=True)
        result = _write_result(staging, image, geometry, prediction.labels, job.filename, kind, engine)
        result["seconds"] = round(time.perf_counter() - started, 2)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        if store.get(job_id) is None:  # deleted while running: nothing to report, nothing to keep
            return
        if isinstance(error, AutoPromptError):
            message = str(error)
            for path in (staging, folder):
                message = re.sub(re.escape(str(path)) + r"[^\s:;,]*", job.filename, message)
            store.fail(job_id, message)
        else:  # a bug, not the user's doing: keep the traceback in the server log
            LOGGER.exception("job %s failed", job_id)
            store.fail(job_id, f"internal error ({type(error).__name__}: {error}); see the server log")
        return
    if store.commit(job_id, staging, state=JobState.DONE, progress=1.0, stage="done", result=result):
        shutil.rmtree(folder / "upload", ignore_errors=True)


def _write_result(
    folder: Path,
    image: np.ndarray,
    geometry: Geometry,
    labels: np.ndarray,
    filename: str,
    kind: UploadKind,
    engine: Engine,
) -> dict:
    """Write the label map in the input's format and geometry, and the arrays the viewer slices."""
    stored = f"labels{kind.result_suffix}"
    write_image(labels, geometry, folder / stored)
    volume = image[None] if image.ndim == 2 else image
    np.save(folder / "image.npy", volume)
    np.save(folder / "labels.npy", labels[None] if labels.ndim == 2 else labels)
    return {
        "file": stored,
        "download_name": output_name(filename, kind, "seg"),
        "ndim": image.ndim,
        "geometry": geometry.to_dict(),
        "shape": list(volume.shape),
        "spacing": list(geometry.spacing),
        "window": list(intensity_window(volume)),
        "eight_bit": kind in (UploadKind.PNG, UploadKind.JPEG),
        "classes": class_measures(labels, geometry, engine),
    }


def _serve_jobs(settings: ServeSettings, root: Path, connection: Connection) -> None:
    """A worker process: load the model, report the load, then run each job id received until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the server, which stops its workers
    os.nice(WORKER_NICENESS)  # the web server gets the CPU first, however busy the jobs keep it
    store, engine = JobStore(root), Engine(settings)
    try:
        engine.predictor()
    except Exception:  # reported by /api/health and by each job that needs the model
        LOGGER.exception("loading the model failed")
    connection.send(("loaded", engine.load_error, engine.tta if engine.loaded else None))
    while (job_id := connection.recv()) is not None:
        try:
            run_job(store, engine, job_id)
        except Exception:  # e.g. a full disk under job.json: the worker must outlive any one job
            LOGGER.exception("job %s could not be run", job_id)
        connection.send(("done", job_id))


@dataclass
class _Worker:
    """The server's handle on one worker process and what it was sent."""

    process: BaseProcess
    connection: Connection
    ready: bool = False  # its model load was reported and it is alive: jobs may be sent
    loaded: bool = False  # it reported its model load (a worker that ends before that is not replaced)
    job: str | None = None  # the job it runs now
    stopping: bool = False  # it was sent the stop signal
    ended: bool = False  # its end was handled


class JobQueue:
    """Worker processes (``spawn``) that each load the model and run the jobs the server hands them.

    The waiting jobs stay in the server process; a watcher thread there takes the workers' reports (model
    loaded, job done), hands waiting jobs to idle workers, and replaces a worker that ends unexpectedly,
    failing the job it ran.

    Args:
        store: the job store (the workers open the same folder).
        engine: the server's engine: its settings build each worker's, and it learns the workers' model load.
        workers: number of worker processes (jobs run at the same time; each loads the model).
    """

    def __init__(self, store: JobStore, engine: Engine, *, workers: int = 1) -> None:
        self.store = store
        self.engine = engine
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._waiting: collections.deque[str] = collections.deque()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._watcher: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet handed to a worker."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs a worker runs now."""
        return sum(worker.job is not None for worker in self._workers)

    @property
    def ready_workers(self) -> int:
        """Worker processes that reported their model load and can take jobs (a replacement that still loads
        the model is not one of them)."""
        return sum(worker.ready and not worker.ended for worker in self._workers)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current worker processes."""
        return [worker.process.pid for worker in self._workers]

    def start(self) -> None:
        """Start the workers; jobs left queued or running by a previous server run are queued again."""
        for job in self.store.all():
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                self.store.update(job.id, state=JobState.QUEUED, progress=0.0, stage="waiting in the queue")
                self.submit(job.id)
        self._workers = [self._start_worker(index) for index in range(self.workers)]
        self._watcher = threading.Thread(target=self._watch, name="autoprompt-jobs", daemon=True)
        self._watcher.start()

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._waiting.append(job_id)
            self._dispatch()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Ask the workers to end once no job waits, wait up to ``timeout`` seconds for each, and end those
        still running (their jobs are queued again at the next start)."""
        with self._lock:
            self._stopping = True
            self._dispatch()
            workers = list(self._workers)
        for worker in workers:
            if not wait([worker.process.sentinel], timeout):
                worker.process.terminate()
        if self._watcher is not None:
            self._watcher.join()  # it handles the ends (and reaps the processes), then returns

    def _start_worker(self, index: int) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve_jobs,
            args=(self.engine.settings, self.store.root, theirs),
            name=f"autoprompt-job-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def _dispatch(self) -> None:
        """Hand waiting jobs (or, when stopping and none wait, the stop signal) to idle workers; the caller
        holds ``_lock``."""
        for worker in self._workers:
            if worker.ended or not worker.ready or worker.job is not None or worker.stopping:
                continue
            message = self._waiting[0] if self._waiting else None
            if message is None and not self._stopping:
                return
            try:
                worker.connection.send(message)
            except OSError:  # it ended; the watcher replaces it
                worker.ready = False
                continue
            if message is None:
                worker.stopping = True
            else:
                worker.job = self._waiting.popleft()

    def _watch(self) -> None:
        """Take the workers' reports and handle their ends until, when stopping, every worker has ended."""
        while True:
            with self._lock:
                if self._stopping and all(worker.ended for worker in self._workers):
                    return
                owners = {
                    waitable: worker
                    for worker in self._workers
                    if not worker.ended
                    for waitable in (worker.connection, worker.process.sentinel)
                }
            for waitable in wait(list(owners), timeout=1.0):
                worker = owners[waitable]
                if worker.ended:  # handled in this round
                    continue
                if waitable is worker.connection:
                    self._receive(worker)
                else:
                    self._ended(worker)

    def _receive(self, worker: _Worker) -> None:
        """Take the reports ``worker`` sent: its model load, its jobs done."""
        with contextlib.suppress(EOFError, OSError):  # it ended: its sentinel tells
            while worker.connection.poll():
                kind, *details = worker.connection.recv()
                if kind == "loaded":
                    error, tta = details
                    worker.loaded = True
                    self.engine.worker_loaded(error=error, tta=tta)
                with self._lock:
                    worker.ready, worker.job = True, None
                    self._dispatch()

    def _ended(self, worker: _Worker) -> None:
        """A worker process ended: unless stopping, start a replacement and fail the job it ran; one that ended
        before its model load was reported is not replaced, and the model counts as failed."""
        with self._lock:
            worker.ended = True
        self._receive(worker)  # a job done just before the end is done
        worker.process.join()
        worker.connection.close()
        with self._lock:
            if self._stopping:
                return
            job_id, index = worker.job, self._workers.index(worker)
        code = worker.process.exitcode
        if not worker.loaded:  # it could not even load the model: a replacement would fail alike, forever
            LOGGER.error("a worker process ended while loading the model (exit code %s)", code)
            self.engine.worker_loaded(
                error=f"the worker process ended while loading the model (exit code {code}); see the server log",
                tta=None,
            )
            return
        replacement = self._start_worker(index)
        with self._lock:
            worker.job, self._workers[index] = None, replacement
            self._dispatch()
        if job_id is None:
            LOGGER.error("a worker process ended unexpectedly (exit code %s)", code)
            return
        LOGGER.error("the worker process running job %s ended unexpectedly (exit code %s)", job_id, code)
        try:
            self.store.fail(
                job_id, f"the worker process ended unexpectedly (exit code {code}); see the server log"
            )
        except Exception:  # e.g. a full disk: the queue must outlive any one job
            LOGGER.exception("job %s could not be marked failed", job_id)
