"""Tests whose inputs (../shared/data) are missing skip on a user's clone and fail under CI."""

from __future__ import annotations

import pytest

from tests.conftest import missing_requirement


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_skips_without_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="data is missing"):
        missing_requirement("data is missing")


def test_skips_when_ci_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        missing_requirement("data is missing")


@pytest.mark.parametrize("value", ["1", "true"])
def test_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="data is missing; CI is set"):
        missing_requirement("data is missing")
