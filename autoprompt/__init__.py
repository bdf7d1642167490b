"""autoprompt: fully automatic medical image segmentation with a Segment Anything backbone.

The public API is in :mod:`autoprompt.api`; its names are also importable from here
(``from autoprompt import segment, predict``), loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    import importlib

    api = importlib.import_module("autoprompt.api")
    if name in api.EXPORTS:
        return getattr(api, name)
    raise AttributeError(f"module 'autoprompt' has no attribute '{name}'")
