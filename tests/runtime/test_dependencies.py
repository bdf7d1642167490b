"""Declared dependencies only (issue #18): every third-party import of the package is a declared
dependency, and no private module of another package is imported."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("autoprompt", "pipeline", "planners")


def _imports() -> dict[str, set[str]]:
    """``{top-level module: files}`` of the absolute imports in the installed packages' sources."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared() -> None:
    # pyproject.toml's [project] dependencies list (tomllib needs Python 3.11)
    block = re.search(
        r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M | re.S
    )[1]
    declared = {
        _normalise(re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0]) for item in re.findall(r'"([^"]+)"', block)
    }
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in _imports().items():
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in (*PACKAGES, "__future__"):
            continue
        owners = {_normalise(d) for d in distributions.get(top, [top])}
        if not owners & declared:
            missing[top] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_no_private_module_of_another_package_is_imported() -> None:
    private = {
        module: sorted(files)
        for module, files in _imports().items()
        if module.split(".")[0] not in PACKAGES
        and any(part.startswith("_") for part in module.split(".")[1:])
    }
    assert not private, f"private modules imported: {private}"
