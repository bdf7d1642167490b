"""Atomic file writes and small JSON helpers: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from autoprompt.errors import AutoPromptError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name keeps ``final``'s suffixes (``.nii.gz``, ``.npy``) so writers that choose a
    format by extension behave the same. An ``OSError`` or :class:`AutoPromptError` of the block that
    names the temporary file is raised again naming ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name.split('.')[0]}.", suffix=".tmp" + suffix, dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; final files get the usual mode
        os.replace(tmp, final)
    except OSError as error:  # name the file the user knows, not the temporary one (a full disk, ...)
        if error.filename is not None and str(error.filename) == str(tmp):
            raise type(error)(error.errno, error.strerror, str(final)) from error
        raise
    except AutoPromptError as error:
        if type(error) is AutoPromptError and str(tmp) in str(error):
            raise AutoPromptError(str(error).replace(str(tmp), str(final))) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def check_output_folder(path: str | os.PathLike, *, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be written: a file in its place or on its path,
    or a folder without write permission. Nothing is created.

    Args:
        path: the folder (created later if missing).
        option: how the user named it (``-o``), for the message.

    Raises:
        AutoPromptError: naming ``path`` and the fix.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AutoPromptError(f"{path}: is a file, not a folder; give {option} a folder (created if missing)")
    _check_creatable(path, path, option)


def _check_creatable(path: Path, folder: Path, option: str) -> None:
    """Refuse ``path`` when the nearest existing folder on the way to ``folder`` is a file or not writable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AutoPromptError(f"{path}: {existing} is a file, not a folder; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AutoPromptError(
            f"{path}: {existing} is not writable; choose another {option} or fix its permissions"
        )


def check_output_file(path: str | os.PathLike, *, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written (a folder in its place, or a folder
    that cannot be made or written to hold it).

    Raises:
        AutoPromptError: naming ``path`` and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise AutoPromptError(f"{path}: is a folder; give {option} a file name, e.g. {path / 'summary.json'}")
    _check_creatable(path, path.parent, option)


def load_npy(path: str | os.PathLike, *, mmap_mode: str | None = "r") -> np.ndarray:
    """Open a ``.npy`` file, refusing one that is shorter than its header says (an interrupted write).

    Raises:
        AutoPromptError: truncated or not a ``.npy`` file; the fix is to re-run plan-and-preprocess
            (it redoes damaged cases).
    """
    path = Path(path)
    if not npy_complete(path):
        raise AutoPromptError(
            f"{path}: damaged (truncated or not a .npy file); re-run 'autoprompt plan-and-preprocess' for "
            "this dataset (it redoes damaged cases)"
        )
    return np.load(path, mmap_mode=mmap_mode)


def npy_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.npy`` file holding every byte its header promises (reads the header only)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
        expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return not dtype.hasobject and os.path.getsize(path) >= expected
    except (OSError, ValueError, EOFError):
        return False
