"""Output files and folders, shared by training, export, runtime caches and benchmark reports.

- Atomic writes: every artifact (checkpoint, ONNX graph, engine, JSON report) is written to a temporary file in the
  same folder, flushed to disk, then renamed over the target: a reader sees the old file or the new one, never half
  of one, even if the process is killed mid-write. A folder of artifacts (an export) is written whole into a hidden
  sibling and renamed into place (:func:`staged_dir`).
- Temporaries are named ``.NAME.PID.RANDOM.tmp``: a writer removes its own on any error, and
  :func:`remove_stale_temporaries` removes those of killed processes at the next start.
- Output guards (:func:`check_output_file`, :func:`check_output_dir`): checked before any work starts, so a bad
  ``--out`` fails in one line at once, not with a traceback after the work. An existing file is never replaced
  unless the caller says it may be (``--force``, or a file it recognises as its own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .errors import RuntimeInputError

logger = logging.getLogger(__name__)

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_LEGACY_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp names of versions before the pid


class OutputPathError(RuntimeInputError):
    """An output path that cannot or must not be written: wrong suffix, a folder where a file goes (or the reverse),
    not writable, or an existing file that the caller may not replace."""


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Call ``write(file_object)`` on a temporary file, then atomically move it to ``path``.

    Args:
        path (str | PathLike): the final file.
        write (callable): receives an open file object and writes the content.
        binary (bool): open the temporary file in binary mode. Defaults to True.

    Returns:
        Path: the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would have
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask is a process-wide set)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (torch is imported lazily: the runtime does not need it)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes in memory (a serialized graph or engine before it is written)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: Optional[Sequence[str]] = None) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder``: ``.NAME.PID.*.tmp`` whose process is gone
    (files or staged folders), and the pid-less ones of older versions. Live writers' temporaries stay.

    Args:
        folder: where the artifacts are written.
        names: only temporaries of these final names (e.g. ``["last.pt", "best.pt"]``); None for any.

    Returns:
        list[Path]: what was removed (each also logged).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP.match(entry.name)
        if m is not None:
            stale = not _pid_alive(int(m["pid"]))
        else:
            m = _LEGACY_TMP.match(entry.name)
            stale = m is not None
        if not stale or (names is not None and m["name"] not in names):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except FileNotFoundError:
            continue
        logger.info("removed %s, left by a killed writer", entry)
        removed.append(entry)
    return removed


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _check_writable_parent(path: Path, what: str) -> None:
    """The folder that will hold ``path`` is a folder we can create files in (or can be created)."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputPathError(f"{what} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: cannot write in {base} ({_why_unwritable(base)})")


def _why_unwritable(folder: Path) -> str:
    """Why ``folder`` refuses new files, as the OS names it: a read-only file system (EROFS; root is refused there
    too) or missing permission (EACCES)."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:  # cannot even stat it: the permission is what is missing
        pass
    return "permission denied"


def check_output_file(path: str | os.PathLike, *, what: str, suffixes: Sequence[str], force: bool = False,
                      replaceable: Optional[Callable[[Path], bool]] = None, force_flag: str = "--force") -> Path:
    """Check an output file before any work: its suffix, its folder, and whether an existing file may be replaced.

    Args:
        path: the file to write.
        what: what it is, for the message ("--json", "engine", ...).
        suffixes: the valid suffixes (compared case-insensitively), e.g. ``(".json",)``.
        force: replace an existing file of the right suffix.
        replaceable: a test that says an existing file is the caller's own kind of output (say, the cached engine
            of this same request) and may be replaced without ``force``. Defaults to None (only with ``force``).
        force_flag: the option to name in the message. Defaults to "--force".

    Returns:
        Path: ``path``.

    Raises:
        OutputPathError: another suffix, a folder at ``path``, an unwritable or impossible parent folder, or an
            existing file that may not be replaced.
    """
    path = Path(path)
    valid = tuple(s.lower() for s in suffixes)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file path ending in {' or '.join(valid)}")
    if path.suffix.lower() not in valid:
        raise OutputPathError(f"{what} {path}: must end in {' or '.join(valid)}"
                              + (f" (got {path.suffix!r})" if path.suffix else ""))
    _check_writable_parent(path, what)
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise OutputPathError(f"{what} {path} exists and is not a regular file")
        if not force and not (replaceable is not None and replaceable(path)):
            raise OutputPathError(f"{what} {path} already exists; pass {force_flag} to replace it, or choose "
                                  "another path")
    return path


def check_output_dir(path: str | os.PathLike, *, what: str) -> Path:
    """Check an output folder before any work: not a file, and creatable or writable.

    Raises:
        OutputPathError: ``path`` is a file, or it (or the folder it would be made in) is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {path}: cannot write in it ({_why_unwritable(path)})")
    else:
        _check_writable_parent(path, what)
    return path


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Write a folder whole or not at all: yields an empty hidden sibling to fill; on success it replaces ``final``.

    On any error (or a kill) the sibling is removed (or left for :func:`remove_stale_temporaries`) and ``final`` is
    untouched. On success an existing ``final`` is first renamed aside, the new folder renamed into place, and the
    old one deleted: a reader finds the old folder or the new one, never a mix. Files of ``final`` that the new
    folder does not have are gone with the old folder, so copy anything to keep into the staged folder first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent, [final.name])
    stage = Path(tempfile.mkdtemp(prefix=_temp_prefix(final.name), suffix=".tmp", dir=final.parent))
    try:
        os.chmod(stage, 0o777 & ~_umask())
        yield stage
        if final.exists():
            aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(final.name), suffix=".tmp", dir=final.parent))
            os.rmdir(aside)
            os.replace(final, aside)
            try:
                os.replace(stage, final)
            except BaseException:
                os.replace(aside, final)  # put the old folder back
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
