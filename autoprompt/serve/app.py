"""The FastAPI application: the upload page, the job API and the slice images.

Build it with :func:`create_app` (``autoprompt serve`` runs it with uvicorn; tests use it directly)::

    from autoprompt.serve import ServeSettings, create_app
    app = create_app(ServeSettings(model_dir=Path("results/Dataset027_ACDC/autoprompt__2d_frozen__2d"),
                                   data_dir=Path("serve_jobs")))

The API is described at the running app's ``/openapi.json`` (OpenAPI 3). FastAPI's ``/docs`` and
``/redoc`` pages are off: they load their scripts from a CDN, and the service must work offline.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.resources
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from autoprompt.errors import AutoPromptError
from autoprompt.serve.engine import Engine
from autoprompt.serve.jobs import Job, JobState, JobStore
from autoprompt.serve.render import BOX_COLOR, render_slice
from autoprompt.serve.settings import ServeSettings
from autoprompt.serve.uploads import (
    ACCEPTED,
    UNPACKED_ZIP_FACTOR,
    ReceivedUpload,
    UploadKind,
    UploadRejected,
    check_zip,
    receive_upload,
    unpack_zip,
)
from autoprompt.serve.worker import JobQueue, output_name, scan_stem
from pipeline.inference.case_cost import CaseTooLarge
from pipeline.io import Geometry, write_image

STATIC = ("autoprompt.serve", "static")
"""The page and its assets: package data of ``autoprompt.serve``, found through importlib (as installed)."""
QUEUE_RETRY_AFTER_S = 60
"""``Retry-After`` of a 503 for a full queue."""
RESULT_BYTES_PER_VOXEL = 6
"""Disk a job's results take per scan voxel: the viewer's image.npy (4 bytes for float32 scans) and labels.npy,
and the label map."""
_PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": f"the scan: {ACCEPTED}"}
                    },
                }
            }
        },
    }
}


class ClassMeasure(BaseModel):
    """One foreground class of the result."""

    label: int
    name: str
    color: str = Field(description="overlay colour, #rrggbb")
    voxels: int
    volume_ml: float | None = Field(None, description="3D scans: volume in mL")
    area_mm2: float | None = Field(None, description="2D images: area in mm²")


class BoxRequest(BaseModel):
    """A box drawn on one slice, in that slice's pixels (x = column, y = row)."""

    slice: int = Field(0, ge=0, description="slice index (axis 0 of the volume; 0 for a 2D image)")
    box: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=4, max_length=4, description="[x_min, y_min, x_max, y_max], finite numbers"
    )


class BoxResult(BaseModel):
    """The promptable segmentation of the boxed object."""

    slice: int
    box: list[float]
    pixels: int = Field(description="pixels in the mask")
    area_mm2: float
    color: str = Field(description="overlay colour of box.png")
    download_name: str


class JobResult(BaseModel):
    """What a finished job produced."""

    download_name: str = Field(description="file name of GET /api/jobs/{id}/result")
    ndim: int = Field(description="2 for a picture, 3 for a volume")
    shape: list[int] = Field(description="(slices, rows, columns) of the viewer; 1 slice for 2D")
    spacing: list[float] = Field(description="voxel spacing in mm, (x, y[, z])")
    classes: list[ClassMeasure]
    seconds: float = Field(description="time from the start of the job to its result")
    box: BoxResult | None = Field(None, description="the last box-mode result")


class JobStatus(BaseModel):
    """A job's state, as ``GET /api/jobs/{id}`` answers."""

    id: str
    state: Literal["queued", "running", "done", "failed"]
    progress: float = Field(description="0..1")
    stage: str
    error: str | None = None
    filename: str
    created: float
    updated: float
    result: JobResult | None = None


class Health(BaseModel):
    """``GET /api/health``: the server answers; whether the worker processes can take jobs; the queue."""

    status: Literal["ok"]
    model: Literal["loading", "ready", "failed"] = Field(
        description="ready: a worker process has the model loaded and takes jobs; loading: none has yet (at "
        "start-up, or while the replacement of a crashed worker loads the model; jobs wait in the queue); "
        "failed: the model cannot be loaded (see load_error of /api/model)"
    )
    workers_ready: int = Field(description="worker processes that can take jobs")
    workers: int = Field(description="worker processes configured (--workers)")
    queued: int
    running: int


def create_app(settings: ServeSettings) -> FastAPI:
    """The web service for one model folder.

    Raises:
        AutoPromptError: the model folder is unusable (see :class:`~autoprompt.serve.engine.Engine`).
    """
    engine = Engine(settings)
    store = _job_store(settings.data_dir)
    jobs = JobQueue(store, engine, workers=settings.workers)
    receiving = [0]  # uploads being received now (they count against max_queued_jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        engine.prepare_checks()
        _freeze_start_up_heap()
        sweeper = asyncio.create_task(_sweep(store, settings))
        yield
        sweeper.cancel()
        await run_in_threadpool(jobs.stop)

    app = FastAPI(
        title="autoprompt",
        summary="Upload a scan, get its segmentation back.",
        description=f"Model: {engine.folder.path.name} ({engine.folder.plans.dataset_name}). Accepted uploads: {ACCEPTED}.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc fetch their scripts from a CDN: blank pages offline
        redoc_url=None,
    )
    app.state.engine, app.state.store, app.state.jobs = engine, store, jobs
    app.mount("/static", StaticFiles(packages=[STATIC]), name="static")

    @app.exception_handler(AutoPromptError)
    async def _user_error(request: Request, error: AutoPromptError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=getattr(error, "status_code", 400))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """422 with one line; FastAPI's own answer echoes the input and cannot even encode a NaN in it."""
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"] if part not in ("body", "query", "path"))
            problems.append(f"{where}: {item['msg'][:1].lower()}{item['msg'][1:]}")
        return JSONResponse({"detail": "; ".join(dict.fromkeys(problems))}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        index = importlib.resources.files(STATIC[0]) / STATIC[1] / "index.html"
        return HTMLResponse(index.read_text(encoding="utf-8"))

    @app.get("/api/health", response_model=Health, tags=["service"])
    async def health() -> dict[str, Any]:
        """Whether the service answers, whether a worker process can take jobs, and the queue length."""
        ready = jobs.ready_workers
        model = "failed" if engine.load_error else ("ready" if ready else "loading")
        return {
            "status": "ok",
            "model": model,
            "workers_ready": ready,
            "workers": settings.workers,
            "queued": jobs.waiting,
            "running": jobs.running,
        }

    @app.get("/api/model", tags=["service"])
    async def model() -> dict[str, Any]:
        """The model: dataset, classes (names and overlay colours), folds, backbone, upload limit."""
        return engine.info()

    @app.post(
        "/api/jobs",
        status_code=201,
        response_model=JobStatus,
        tags=["jobs"],
        openapi_extra=_UPLOAD_BODY,
        responses={
            400: {"description": "no file, empty file, damaged zip or a zip member outside the zip"},
            413: {"description": "larger than --max-upload-mb"},
            415: {"description": "not a supported scan (decided by content)"},
            422: {
                "description": "over --max-case-memory-gb or --max-case-windows (estimated from the header)"
            },
            503: {"description": "the queue is full or the jobs' disk bound is reached; see Retry-After"},
        },
    )
    async def create_job(request: Request) -> dict[str, Any]:
        """Upload a scan (multipart field ``file``); it is queued and segmented in the background.

        Refused with 503 (and ``Retry-After``) before the body is read when --max-queued-jobs uploads
        wait or the job folders use --max-jobs-disk-gb. The body is streamed to disk and refused with 413
        as soon as it passes the size limit; a scan whose header promises a case over the cost limits
        gets 422.
        """
        if jobs.waiting + receiving[0] >= settings.max_queued_jobs:
            raise HTTPException(
                503,
                f"the queue is full ({settings.max_queued_jobs} jobs waiting); upload again in a minute",
                headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)},
            )
        receiving[0] += 1
        try:
            await _check_disk(store, settings, settings.max_upload_bytes, receiving=receiving[0])
            folder = store.incoming_folder()
            upload = await receive_upload(
                request.stream(),
                request.headers.get("content-type", ""),
                request.headers.get("content-length"),
                folder,
                max_bytes=settings.max_upload_bytes,
            )
            try:
                if upload.kind is UploadKind.DICOM_ZIP:
                    await run_in_threadpool(
                        check_zip,
                        upload.path,
                        max_unpacked_bytes=UNPACKED_ZIP_FACTOR * settings.max_upload_bytes,
                        name=upload.filename,
                    )
                voxels = await run_in_threadpool(_check_cost, engine, upload)
                await _check_disk(store, settings, voxels * RESULT_BYTES_PER_VOXEL)  # the upload is counted
                job = await run_in_threadpool(
                    store.create, upload=upload.path, filename=upload.filename, kind=upload.kind.value
                )
            finally:  # a DICOM zip's unpacked series may be large: removed off the event loop
                await run_in_threadpool(shutil.rmtree, folder, ignore_errors=True)
        finally:
            receiving[0] -= 1
        jobs.submit(job.id)
        return job.to_dict()

    @app.get("/api/jobs/{job_id}", response_model=JobStatus, tags=["jobs"], responses={404: {}})
    def job_status(job_id: str) -> dict[str, Any]:
        """State, progress, error, and for a finished job the classes with their volumes."""
        return _job(store, job_id).to_dict()

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"], responses={404: {}})
    async def delete_job(job_id: str) -> Response:
        """Delete a job and all its files (a running job's result is discarded when it ends)."""
        if not await run_in_threadpool(store.delete, job_id):
            raise HTTPException(404, "no such job")
        return Response(status_code=204)

    @app.get("/api/jobs/{job_id}/result", tags=["results"], responses={404: {}, 409: {}})
    def job_result(job_id: str) -> FileResponse:
        """The label map, in the input's format and geometry (JPEG -> PNG, DICOM -> NIfTI)."""
        job, folder = _done(store, job_id)
        return FileResponse(folder / "result" / job.result["file"], filename=job.result["download_name"])

    @app.get("/api/jobs/{job_id}/overlay.png", tags=["results"], response_class=Response, responses=_PNG)
    def overlay_png(
        job_id: str,
        slice: int | None = Query(None, ge=0, description="slice index (axis 0); default: the middle slice"),
        download: bool = Query(False, description="offer as a file download"),
    ) -> Response:
        """A slice with the segmentation drawn over it (class colours as in ``/api/model``)."""
        return _slice_png(store, engine, job_id, slice, overlay=True, download=download)

    @app.get("/api/jobs/{job_id}/image.png", tags=["results"], response_class=Response, responses=_PNG)
    def image_png(
        job_id: str,
        slice: int | None = Query(None, ge=0, description="slice index; default: the middle slice"),
    ) -> Response:
        """A slice of the scan alone (grey levels between the scan's 0.5 and 99.5 percentiles)."""
        return _slice_png(store, engine, job_id, slice, overlay=False, download=False)

    @app.post(
        "/api/jobs/{job_id}/box", response_model=BoxResult, tags=["box mode"], responses={404: {}, 409: {}}
    )
    def box_segment(job_id: str, request: BoxRequest) -> dict[str, Any]:
        """Box mode: segment the object inside a box on one slice with the pretrained promptable SAM.

        The result replaces the job's previous box; see ``box.png`` and ``box/result``. A job deleted
        meanwhile stays deleted (404): the box's files are written aside and moved in only if it exists.
        """
        job, folder = _done(store, job_id)
        try:
            image = np.load(folder / "result" / "image.npy", mmap_mode="r")
        except FileNotFoundError:  # deleted since _done looked
            _job(store, job_id)
            raise
        index = _slice_index(request.slice, image.shape[0])
        window = None if job.result["eight_bit"] else tuple(job.result["window"])
        mask = engine.segment_box(
            (job_id, index), np.asarray(image[index]), request.box, intensity_range=window
        )
        spacing = job.result["spacing"]
        box = {
            "slice": index,
            "box": request.box,
            "pixels": int(mask.sum()),
            "area_mm2": round(float(mask.sum()) * spacing[0] * spacing[1], 2),
            "color": BOX_COLOR,
            "download_name": output_name(job.filename, UploadKind(job.kind), "box"),
        }
        volume = np.zeros(image.shape, dtype=np.uint8)
        volume[index] = mask
        geometry = Geometry.from_dict(job.result["geometry"])
        staging = store.staging_folder()
        try:
            write_image(volume[0] if job.result["ndim"] == 2 else volume, geometry, staging / _box_file(job))
            np.save(staging / "box_mask.npy", mask.astype(np.uint8))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if store.commit(job_id, staging, result={**job.result, "box": box}) is None:
            _job(store, job_id)  # 404: deleted while the box was segmented; its files were discarded
        return box

    @app.get("/api/jobs/{job_id}/box.png", tags=["box mode"], response_class=Response, responses=_PNG)
    def box_png(job_id: str) -> Response:
        """The slice of the last box with the box outlined and its segmentation drawn."""
        job, folder = _done(store, job_id)
        box = _last_box(job)
        image = np.load(folder / "result" / "image.npy", mmap_mode="r")
        png = render_slice(
            np.asarray(image[box["slice"]]),
            window=tuple(job.result["window"]),
            spacing_xy=tuple(job.result["spacing"][:2]),
            labels=np.load(folder / "result" / "box_mask.npy"),
            colors={1: BOX_COLOR},
            box=box["box"],
        )
        return Response(png, media_type="image/png")

    @app.get("/api/jobs/{job_id}/box/result", tags=["box mode"], responses={404: {}, 409: {}})
    def box_result(job_id: str) -> FileResponse:
        """The last box's mask (0/1) in the input's format and geometry, that slice filled."""
        job, folder = _done(store, job_id)
        box = _last_box(job)
        return FileResponse(folder / "result" / _box_file(job), filename=box["download_name"])

    return app


def _freeze_start_up_heap() -> None:
    """Take the objects alive after start-up (torch, numpy, the app) out of the cyclic garbage collector.

    They live as long as the server; a full collection would otherwise walk them all, and every request
    waits while it does.
    """
    gc.collect()
    gc.freeze()


async def _sweep(store: JobStore, settings: ServeSettings) -> None:
    """Delete expired jobs now and every ``cleanup_interval_s`` seconds."""
    while True:
        await run_in_threadpool(store.cleanup, max_age_s=settings.job_ttl_s)
        await asyncio.sleep(settings.cleanup_interval_s)


def _job(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id)
    if job is None:
        raise HTTPException(404, "no such job (it may have expired or been deleted); upload the scan again")
    return job


def _done(store: JobStore, job_id: str) -> tuple[Job, Path]:
    job = _job(store, job_id)
    if job.state is JobState.FAILED:
        raise HTTPException(409, f"the job failed ({job.error}); it has no result, upload a corrected scan")
    if job.state is not JobState.DONE:
        raise HTTPException(409, f"the job is {job.state.value}, not done; wait for its result")
    return job, store.folder(job_id)


def _job_store(data_dir: Path) -> JobStore:
    """The job store under ``data_dir``.

    Raises:
        AutoPromptError: ``data_dir`` (or a folder on its path) is a file, or cannot be created.
    """
    try:
        return JobStore(data_dir)
    except OSError as error:
        raise AutoPromptError(
            f"{data_dir}: cannot hold the service's jobs ({error.strerror or error}: {error.filename}); "
            "give --data-dir a folder that can be created and written"
        ) from error


def _check_cost(engine: Engine, upload: ReceivedUpload) -> int:
    """Refuse (422) a scan over the case limits, from its header; returns its voxel count (0 if unknown).

    A header that cannot be read here is left to the job, which fails with its one-line reason.
    """
    scan = upload.path
    if upload.kind is UploadKind.DICOM_ZIP:
        scan = unpack_zip(upload.path, upload.path.parent / "series")
    try:
        cost = engine.check_case(scan)
    except CaseTooLarge as error:
        message = str(error).replace(str(scan), upload.filename)
        raise UploadRejected(422, message) from None
    except AutoPromptError:
        return 0
    return int(np.prod(cost.input_shape))


async def _check_disk(store: JobStore, settings: ServeSettings, adding: int, *, receiving: int = 1) -> None:
    """Refuse (503) an upload that could take the job folders past ``--max-jobs-disk-gb``.

    Args:
        adding: bytes this upload may add (the upload limit before it is received, then its results).
        receiving: uploads being received now, each of which may add as much.
    """
    used = await run_in_threadpool(store.disk_usage)
    if used + receiving * adding > settings.max_jobs_disk_bytes:
        raise HTTPException(
            503,
            f"the jobs use {used / 2**30:.1f} of {settings.max_jobs_disk_gb:g} GB of disk; upload again after "
            "finished jobs expire, or delete yours (DELETE /api/jobs/{id})",
            headers={"Retry-After": str(int(min(settings.cleanup_interval_s, 3600)))},
        )


def _last_box(job: Job) -> dict[str, Any]:
    if "box" not in job.result:
        raise HTTPException(404, "no box drawn on this job yet; POST /api/jobs/{id}/box first")
    return job.result["box"]


def _box_file(job: Job) -> str:
    return "box" + UploadKind(job.kind).result_suffix


def _slice_index(index: int | None, count: int) -> int:
    if index is None:
        return count // 2
    if index >= count:
        raise HTTPException(400, f"slice {index} is out of range; the scan has slices 0..{count - 1}")
    return index


def _slice_png(
    store: JobStore, engine: Engine, job_id: str, index: int | None, *, overlay: bool, download: bool
) -> Response:
    job, folder = _done(store, job_id)
    image = np.load(folder / "result" / "image.npy", mmap_mode="r")
    index = _slice_index(index, image.shape[0])
    labels = np.load(folder / "result" / "labels.npy", mmap_mode="r")[index] if overlay else None
    png = render_slice(
        np.asarray(image[index]),
        window=tuple(job.result["window"]),
        spacing_xy=tuple(job.result["spacing"][:2]),
        labels=None if labels is None else np.asarray(labels),
        colors={info.label: info.color for info in engine.classes},
    )
    headers = {}
    if download:
        headers["Content-Disposition"] = (
            f'attachment; filename="{scan_stem(job.filename)}_slice{index}_overlay.png"'
        )
    return Response(png, media_type="image/png", headers=headers)
