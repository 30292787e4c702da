"""runtime._io: atomic writes keep the old file on failure and give new files the usual permissions."""

import os
import stat

import pytest

from runtime._io import atomic_write, atomic_write_bytes, atomic_write_json, sha256_file


def test_atomic_write_replaces_whole_file_with_umask_mode(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"ok": 1})

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert path.read_text().strip().startswith("{") and '"ok": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert len(sha256_file(path)) == 64
