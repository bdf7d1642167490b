"""The layers of docs/ARCHITECTURE.md hold: import-linter's contracts in pyproject.toml, and every module
is placed in a layer (a new module outside them would go unchecked)."""

from __future__ import annotations

import sys
from pathlib import Path

from importlinter.cli import lint_imports

if sys.version_info >= (3, 11):
    import tomllib
else:  # import-linter brings tomli on Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
ROOT_PACKAGES = ("autoprompt", "pipeline", "planners")


def _layer_modules() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["id"] == "layers")
    return [
        module.strip()
        for layer in contract["layers"]
        for module in layer.replace("|", ":").split(":")
        if module.strip()
    ]


def test_import_layers_are_kept(capsys) -> None:
    """`lint-imports` (every import counts: module level, inside functions, under TYPE_CHECKING)."""
    exit_code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert exit_code == 0, report
    assert "2 kept, 0 broken" in report


def test_every_module_is_in_a_layer() -> None:
    layered = _layer_modules()
    modules = [
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for package in ROOT_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    ]
    unplaced = [
        module
        for module in modules
        if module not in ROOT_PACKAGES and not any(module == m or module.startswith(f"{m}.") for m in layered)
    ]
    assert not unplaced, (
        f"modules in no layer of [tool.importlinter] (pyproject.toml): {unplaced}; "
        "add each to its layer there and in docs/ARCHITECTURE.md"
    )
    assert len(modules) > 50  # the walk found the code
