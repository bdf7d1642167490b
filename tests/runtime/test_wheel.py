"""The wheel a user installs (``pip install .``, not editable) holds the package data: the trainer presets
(found through importlib.resources) and the web page with its assets."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "autoprompt", "pipeline", "planners", "configs")


def test_wheel_ships_presets_and_serve_page(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the repository
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("autoprompt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    presets = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml"))
    page = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "autoprompt/serve/static").iterdir())
    assert len(presets) >= 3 and "autoprompt/serve/static/index.html" in page
    assert not [name for name in presets + page if name not in names]
    assert {"configs/__init__.py", "autoprompt/benchmarking/runner.py", "pipeline/trainer_config.py"} <= names
