"""Atomic writes: nothing under the final name unless the block succeeds; normal file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.files import atomic_path, load_json, save_json


def test_atomic_path_renames_on_success_with_usual_permissions(tmp_path):
    final = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == final.parent
        tmp.write_bytes(b"data")
    assert final.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in final.parent.iterdir()) == ["out.nii.gz"]


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []


def test_save_json_round_trip(tmp_path):
    save_json({"a": [1, 2]}, tmp_path / "x.json")
    assert load_json(tmp_path / "x.json") == {"a": [1, 2]}
