"""Every name of ``autoprompt.api`` resolves to the function or class it names (the table is by strings)."""

from __future__ import annotations

from autoprompt import api
from autoprompt.interactive.predictor import ModelOptions
from autoprompt.interactive.volume import segment_volume


def test_every_api_name_resolves() -> None:
    for name, target in api.EXPORTS.items():
        value = getattr(api, name)
        assert callable(value) and value.__name__ == target.split(":")[1], name
    assert api.segment_volume is segment_volume and api.ModelOptions is ModelOptions
