"""``autoprompt serve``: a web page and HTTP API that segment uploaded scans with one trained model.

Modules: ``app`` (FastAPI routes, :func:`create_app`), ``settings`` (:class:`ServeSettings`), ``uploads``
(streamed, size-limited, content-typed uploads and safe zips), ``jobs`` (job state on disk), ``worker``
(background queue running the jobs in worker processes), ``engine`` (the model; box mode), ``render`` (slice
PNGs), ``static/`` (the page: plain HTML, CSS and JavaScript).
"""

from __future__ import annotations

from autoprompt.serve.app import create_app
from autoprompt.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
