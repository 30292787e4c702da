"""runtime._io: atomic writes keep the old file on failure and give new files the usual permissions."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import dead_pid

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


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    from runtime._io import remove_stale_temporaries

    dead = dead_pid()
    (tmp_path / f".last.pt.{dead}.abc123.tmp").write_bytes(b"x" * 10)  # a writer killed mid-write
    (tmp_path / ".best.pt.k3j4h5g6.tmp").write_bytes(b"x")  # an older version's mkstemp name
    (tmp_path / f".onnx.{dead}.q1w2e3.tmp").mkdir()  # a staged export folder of a killed writer
    live = tmp_path / f".last.pt.{os.getpid()}.zz.tmp"  # this process is writing it now
    live.write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"keep")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.pt.{dead}.abc123.tmp", ".best.pt.k3j4h5g6.tmp",
                                                     f".onnx.{dead}.q1w2e3.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", live.name])
    (tmp_path / f".x.{dead}.a.tmp").write_bytes(b"")
    assert remove_stale_temporaries(tmp_path, names=["last.pt"]) == []  # only the names asked for




def test_output_file_guard(tmp_path):
    from runtime._io import OutputPathError, check_output_file

    ok = check_output_file(tmp_path / "new" / "a.json", what="--json", suffixes=(".json",))
    assert ok == tmp_path / "new" / "a.json" and not (tmp_path / "new").exists()  # checks only, creates nothing
    with pytest.raises(OutputPathError, match=r"--json .*a\.pt: must end in \.json \(got '\.pt'\)"):
        check_output_file(tmp_path / "a.pt", what="--json", suffixes=(".json",))
    (tmp_path / "d.json").mkdir()
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path / "d.json", what="--json", suffixes=(".json",))
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_file(tmp_path / "f" / "a.json", what="--json", suffixes=(".json",))
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(OutputPathError, match="already exists; pass --force"):
        check_output_file(tmp_path / "old.json", what="--json", suffixes=(".json",))
    check_output_file(tmp_path / "old.json", what="--json", suffixes=(".json",), force=True)
    check_output_file(tmp_path / "old.json", what="--json", suffixes=(".json",), replaceable=lambda p: True)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(OutputPathError, match="permission denied"):
            check_output_file(ro / "a.json", what="--json", suffixes=(".json",))


_READ_ONLY_CHECK = """
import sys
from runtime._io import OutputPathError, check_output_dir, check_output_file
ro = sys.argv[1]
for check in (lambda: check_output_file(ro + "/a.json", what="--json", suffixes=(".json",)),
              lambda: check_output_dir(ro, what="--out"), lambda: check_output_dir(ro + "/run", what="--out")):
    try:
        check()
    except OutputPathError as e:
        print(e)
"""


def test_a_read_only_file_system_is_named_as_such(tmp_path):
    """A real read-only mount (tmpfs, ro) in a private user and mount namespace: the output guards say "read-only file
    system" (EROFS), not "permission denied", which even root gets there."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux's unshare to mount a read-only file system without touching the machine's")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = 'mount -t tmpfs -o ro,size=64k tmpfs "$1" || exit 77; exec "$2" -c "$3" "$1"'
    done = subprocess.run([unshare, "--map-root-user", "--mount", "sh", "-c", script, "sh", str(ro), sys.executable,
                           _READ_ONLY_CHECK], capture_output=True, text=True, timeout=120)
    if done.returncode == 77 or (done.returncode != 0 and "unshare" in done.stderr):
        pytest.skip(f"cannot mount a read-only file system here: {' '.join(done.stderr.split())[:200]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"--json {ro}/a.json: cannot write in {ro} (read-only file system)",
                                        f"--out {ro}: cannot write in it (read-only file system)",
                                        f"--out {ro}/run: cannot write in {ro} (read-only file system)"]


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    from runtime._io import staged_dir

    final = tmp_path / "export"
    with staged_dir(final) as stage:
        (stage / "a.onnx").write_text("first")
        assert not final.exists()  # nothing visible until the folder is complete
    assert sorted(p.name for p in final.iterdir()) == ["a.onnx"]
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(final) as stage:
            (stage / "a.onnx").write_text("second")
            (stage / "b.onnx").write_text("second")
            raise KeyboardInterrupt  # killed half-way
    assert sorted(p.name for p in final.iterdir()) == ["a.onnx"] and (final / "a.onnx").read_text() == "first"
    with staged_dir(final) as stage:
        (stage / "b.onnx").write_text("third")
    assert sorted(p.name for p in final.iterdir()) == ["b.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staged or set-aside folder left
