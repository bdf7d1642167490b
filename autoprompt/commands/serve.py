"""``autoprompt serve``: the web page and HTTP API around one trained model."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from autoprompt.commands.common import (
    add_decoding_arguments,
    add_device_argument,
    add_model_folder_arguments,
    add_tta_argument,
    decoding_from_args,
    model_folder_from_args,
)
from pipeline.inference.case_cost import DEFAULT_MAX_CASE_MEMORY_GB, DEFAULT_MAX_CASE_WINDOWS

# ServeSettings' defaults (kept equal by a test; importing autoprompt.serve would load the app for --help)
DEFAULT_MAX_QUEUED_JOBS = 8
DEFAULT_MAX_JOBS_DISK_GB = 20.0

DESCRIPTION = """\
Start a web service around one trained model: open the page in a browser, upload a scan (.nii.gz, .nii,
.mha, .nrrd, a .zip of one DICOM series, .png or .jpg) and get its segmentation back: a slice viewer with
the class overlay and per-class volumes, the label map in the input's format and geometry, a PNG overlay,
and a box mode (draw a box on a slice to segment that object with the pretrained promptable SAM).

Jobs run one after another in the background (--workers at a time), in worker processes that each load the
model, so the server keeps answering while scans are segmented. Each job's state is kept under --data-dir,
so a reloaded page (or a restarted server) finds it again. Finished jobs are deleted after --job-ttl-hours;
a deleted job stays deleted, even when its work ends later.

An upload's size does not bound its cost (a small file can hold a huge or coarsely spaced volume), so each
scan's memory and network windows are estimated from its header and the model's plans as it arrives, and
a scan over --max-case-memory-gb or --max-case-windows is refused (HTTP 422). With --max-queued-jobs jobs
waiting, or the jobs using --max-jobs-disk-gb of disk, uploads get HTTP 503 with Retry-After. GET
/api/model reports these limits.

The HTTP API (POST /api/jobs, GET /api/jobs/{id}, .../result, .../overlay.png?slice=K, .../box,
DELETE /api/jobs/{id}, GET /api/health, GET /api/model) is described at http://HOST:PORT/openapi.json
(OpenAPI 3; open it in any OpenAPI viewer).

The service has no login: keep the default --host 127.0.0.1 (this computer only) unless the network
it is opened to is trusted.

examples:
  autoprompt serve -d 27 -c 2d
  autoprompt serve --model-dir results/Dataset027_ACDC/autoprompt__2d_frozen__2d --port 8080
  autoprompt serve -d 4 --host 0.0.0.0 --max-upload-mb 100 --job-ttl-hours 2 --data-dir /srv/autoprompt_jobs
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the serve options."""
    model = add_model_folder_arguments(parser)
    model.add_argument(
        "-f", "--folds", nargs="+", help="folds to ensemble, e.g. -f 0 1 (default: every trained fold)"
    )
    add_tta_argument(model)
    add_device_argument(model)
    add_decoding_arguments(model)
    service = parser.add_argument_group("service")
    service.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this computer only)"
    )
    service.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    service.add_argument(
        "--max-upload-mb",
        type=float,
        default=512.0,
        help="largest upload in MB; larger ones are refused (default: 512)",
    )
    service.add_argument(
        "--workers",
        type=int,
        default=1,
        help="jobs segmented at the same time, each in its own process with its own copy of the model "
        "(each worker needs the model's memory; default: 1)",
    )
    service.add_argument(
        "--data-dir",
        type=Path,
        default=Path("autoprompt_data") / "serve",
        help="folder for uploads, job states and results (default: ./autoprompt_data/serve)",
    )
    service.add_argument(
        "--job-ttl-hours",
        type=float,
        default=24.0,
        help="delete finished jobs this many hours after their last change (default: 24)",
    )
    limits = parser.add_argument_group(
        "limits (a scan's cost is estimated from its header and the plans, before it is read)"
    )
    limits.add_argument(
        "--max-case-memory-gb",
        type=float,
        default=DEFAULT_MAX_CASE_MEMORY_GB,
        metavar="GB",
        help="refuse (HTTP 422) a scan whose prediction needs more memory; each of --workers jobs may use this "
        f"much (default: {DEFAULT_MAX_CASE_MEMORY_GB:g}, fits a 24 GB machine with --workers 1)",
    )
    limits.add_argument(
        "--max-case-windows",
        type=int,
        default=DEFAULT_MAX_CASE_WINDOWS,
        metavar="N",
        help="refuse (HTTP 422) a scan making more network windows (slices x in-plane windows after resampling, "
        f"x4 with TTA), which bounds a job's time (default: {DEFAULT_MAX_CASE_WINDOWS})",
    )
    limits.add_argument(
        "--max-queued-jobs",
        type=int,
        default=DEFAULT_MAX_QUEUED_JOBS,
        metavar="N",
        help=f"jobs waiting for a worker; more uploads get HTTP 503 with Retry-After (default: {DEFAULT_MAX_QUEUED_JOBS})",
    )
    limits.add_argument(
        "--max-jobs-disk-gb",
        type=float,
        default=DEFAULT_MAX_JOBS_DISK_GB,
        metavar="GB",
        help="disk all jobs may use together (uploads and results); past it uploads get HTTP 503 with "
        f"Retry-After until finished jobs expire (default: {DEFAULT_MAX_JOBS_DISK_GB:g})",
    )


def run(args: argparse.Namespace) -> int:
    """Build the app (errors in the model folder stop here, exit 2) and serve it until Ctrl+C."""
    import uvicorn

    from autoprompt.errors import AutoPromptError
    from autoprompt.serve import ServeSettings, create_app
    from pipeline.files import check_output_folder

    numbers = {
        "--workers": (args.workers, "1"),
        "--max-upload-mb": (args.max_upload_mb, "512"),
        "--job-ttl-hours": (args.job_ttl_hours, "24"),
        "--max-case-memory-gb": (args.max_case_memory_gb, f"{DEFAULT_MAX_CASE_MEMORY_GB:g}"),
        "--max-case-windows": (args.max_case_windows, str(DEFAULT_MAX_CASE_WINDOWS)),
        "--max-queued-jobs": (args.max_queued_jobs, str(DEFAULT_MAX_QUEUED_JOBS)),
        "--max-jobs-disk-gb": (args.max_jobs_disk_gb, f"{DEFAULT_MAX_JOBS_DISK_GB:g}"),
    }
    for name, (value, example) in numbers.items():
        if not math.isfinite(value) or value <= 0:
            raise AutoPromptError(f"{name} {value:g} must be positive and finite; give e.g. {name} {example}")
    if not 0 <= args.port <= 65535:
        raise AutoPromptError(f"--port {args.port} is not a port number (0-65535); give e.g. --port 8000")
    check_output_folder(args.data_dir, option="--data-dir")
    settings = ServeSettings(
        model_dir=model_folder_from_args(args),
        data_dir=args.data_dir,
        max_upload_mb=args.max_upload_mb,
        workers=args.workers,
        job_ttl_hours=args.job_ttl_hours,
        device=args.device,
        folds=tuple(args.folds) if args.folds else None,
        checkpoint=args.checkpoint,
        tta=args.tta,
        decoding=decoding_from_args(args),
        max_case_memory_gb=args.max_case_memory_gb,
        max_case_windows=args.max_case_windows,
        max_queued_jobs=args.max_queued_jobs,
        max_jobs_disk_gb=args.max_jobs_disk_gb,
    )
    app = create_app(settings)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"autoprompt: warning: listening on {args.host} without a login; anyone who can reach it can upload scans",
            file=sys.stderr,
        )
    print(f"autoprompt: serving {settings.model_dir} at http://{args.host}:{args.port}/ (Ctrl+C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
