"""Running jobs in the background: a queue served by worker threads sharing the one loaded model.

Inference runs in these threads, never in the web server's event loop, so the server keeps answering
while a scan is segmented. A job's steps update its ``job.json`` (stage and progress); a user's mistake
(an unreadable scan, a DICOM zip with two series, ...) fails the job with one line, and a failed job
keeps nothing but its state.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from autoprompt.errors import AutoPromptError
from autoprompt.serve.engine import Engine
from autoprompt.serve.jobs import JobState, JobStore
from autoprompt.serve.render import intensity_window
from autoprompt.serve.uploads import UploadKind, unpack_zip
from pipeline.io import Geometry, read_image, write_image

LOGGER = logging.getLogger("autoprompt.serve")
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


class JobQueue:
    """Worker threads taking job ids from a queue; the first thread also loads the model at start.

    Args:
        store: the job store.
        engine: the shared model.
        workers: number of threads (jobs run at the same time).
    """

    def __init__(self, store: JobStore, engine: Engine, *, workers: int = 1) -> None:
        self.store = store
        self.engine = engine
        self.workers = workers
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.running = 0
        self._count_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the threads; jobs left queued or running by a previous server run are queued again."""
        for job in self.store.all():
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                self.store.update(job.id, state=JobState.QUEUED, progress=0.0, stage="waiting in the queue")
                self.submit(job.id)
        self._threads = [
            threading.Thread(
                target=self._serve, args=(index == 0,), name=f"autoprompt-job-{index}", daemon=True
            )
            for index in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Ask the threads to finish after their current job and wait up to ``timeout`` seconds each."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _serve(self, load_model: bool) -> None:
        if load_model:
            try:
                self.engine.predictor()
            except Exception:  # reported by /api/health and by each job that needs the model
                LOGGER.exception("loading the model failed")
        while (job_id := self._queue.get()) is not None:
            with self._count_lock:
                self.running += 1
            try:
                run_job(self.store, self.engine, job_id)
            except Exception:  # e.g. a full disk under job.json: the worker must outlive any one job
                LOGGER.exception("job %s could not be run", job_id)
            finally:
                with self._count_lock:
                    self.running -= 1
