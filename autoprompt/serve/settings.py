"""The web service's settings (what ``autoprompt serve`` passes to :func:`autoprompt.serve.create_app`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one running service.

    Attributes:
        model_dir: the trained model folder (``RESULTS/DatasetXXX_Name/autoprompt__<preset>__<configuration>``).
        data_dir: where jobs (uploads, state, results) are kept.
        max_upload_mb: largest accepted upload in MiB; larger ones get HTTP 413.
        workers: jobs run at the same time (threads sharing the one loaded model).
        job_ttl_hours: finished jobs are deleted this long after their last change.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        folds: folds to ensemble; None: every trained fold.
        checkpoint: ``best``, ``final`` or ``latest``.
        tta: mirroring test-time augmentation (about 4x the work of a prediction without it); None: on
            when the folds were trained with mirror augmentation.
        cleanup_interval_s: seconds between sweeps for expired jobs.
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
    cleanup_interval_s: float = 600.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def job_ttl_s(self) -> float:
        return self.job_ttl_hours * 3600.0
