"""The web service's settings (what ``autoprompt serve`` passes to :func:`autoprompt.serve.create_app`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autoprompt.errors import AutoPromptError
from pipeline.inference.case_cost import DEFAULT_MAX_CASE_MEMORY_GB, DEFAULT_MAX_CASE_WINDOWS

DEFAULT_MAX_QUEUED_JOBS = 8
DEFAULT_MAX_JOBS_DISK_GB = 20.0


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one running service.

    Attributes:
        model_dir: the trained model folder (``RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>``).
        data_dir: where jobs (uploads, state, results) are kept.
        max_upload_mb: largest accepted upload in MiB; larger ones get HTTP 413.
        workers: jobs run at the same time, each in its own process with its own copy of the model (each
            worker loads the model: memory grows with ``workers``).
        job_ttl_hours: finished jobs are deleted this long after their last change.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        folds: folds to ensemble; None: every trained fold.
        checkpoint: ``best``, ``final`` or ``latest``.
        tta: mirroring test-time augmentation (2x or 4x the work of a prediction without it); None: on
            when the folds were trained with mirror augmentation.
        decoding: overrides of the model's decoding settings (keys from
            :data:`~pipeline.inference.predictor.DECODING_SETTINGS`;
            :meth:`~pipeline.inference.predictor.Predictor.from_model_folder`); a missing key: as trained.
        cleanup_interval_s: seconds between sweeps for expired jobs.
        max_case_memory_gb: a scan whose prediction needs more memory (estimated from its header and the
            plans) is refused at upload with HTTP 422; each of ``workers`` jobs may use this much.
        max_case_windows: a scan making more network windows is refused at upload with HTTP 422.
        max_queued_jobs: uploads waiting for a worker (and being received); more get HTTP 503 with
            ``Retry-After``.
        max_jobs_disk_gb: disk the job folders may use together (uploads, results); an upload that would
            pass it gets HTTP 503 with ``Retry-After`` (finished jobs expire after ``job_ttl_hours``).

    Raises:
        AutoPromptError: a value that is not a positive finite number (e.g. NaN).
    """

    model_dir: Path
    data_dir: Path
    max_upload_mb: float = 512.0
    workers: int = 1
    job_ttl_hours: float = 24.0
    device: str = "auto"
    folds: tuple[int | str, ...] | None = None
    checkpoint: str = "best"
    tta: bool | None = None
    decoding: Mapping[str, float] = field(default_factory=dict)
    cleanup_interval_s: float = 600.0
    max_case_memory_gb: float = DEFAULT_MAX_CASE_MEMORY_GB
    max_case_windows: int = DEFAULT_MAX_CASE_WINDOWS
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    max_jobs_disk_gb: float = DEFAULT_MAX_JOBS_DISK_GB

    def __post_init__(self) -> None:
        numbers = {
            "max_upload_mb": self.max_upload_mb,
            "workers": self.workers,
            "job_ttl_hours": self.job_ttl_hours,
            "cleanup_interval_s": self.cleanup_interval_s,
            "max_case_memory_gb": self.max_case_memory_gb,
            "max_case_windows": self.max_case_windows,
            "max_queued_jobs": self.max_queued_jobs,
            "max_jobs_disk_gb": self.max_jobs_disk_gb,
        }
        for name, value in numbers.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                option = "--" + name.replace("_", "-")
                raise AutoPromptError(
                    f"{option} {value!r} must be a positive finite number; give e.g. {option} 1"
                )
        for name in ("workers", "max_case_windows", "max_queued_jobs"):
            if not isinstance(numbers[name], int):
                raise AutoPromptError(f"--{name.replace('_', '-')} {numbers[name]!r} must be a whole number")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def job_ttl_s(self) -> float:
        return self.job_ttl_hours * 3600.0

    @property
    def max_jobs_disk_bytes(self) -> int:
        return int(self.max_jobs_disk_gb * 2**30)
