"""Export folders (``export.to_onnx``, ``export.quantize``): checked before the work, written whole or not at all.

An export folder holds exactly the three graphs and ``export_report.json``. It is written into a hidden sibling and
renamed into place (:func:`runtime._io.staged_dir`), so a killed re-export leaves the old export whole or the new one,
never a mix of the two. Because the old folder is replaced whole, a folder that also holds anything else (a
checkpoint, engines, other precisions' subfolders, notes) is refused before the work starts, naming those entries:
they are never deleted or silently carried into the new export (engines built from the old graphs would then sit
beside new graphs). Temporaries that killed writers left are removed first.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from export.errors import ExportError, ExportOverwriteError
from export.spec import SPEC
from runtime._io import (
    OutputPathError,
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    remove_stale_temporaries,
    sha256_bytes,
    staged_dir,
)
from runtime.spec import EXPORT_REPORT_NAME, GRAPHS, METADATA_KEY

logger = logging.getLogger(__name__)

EXPORT_FILES = tuple(SPEC.graph(g).filename for g in GRAPHS) + (EXPORT_REPORT_NAME,)


def check_export_dir(out_dir: Path, what: str = "--out") -> Path:
    """Check an export folder before any work: a folder (or creatable), its parent writable (the new export is
    staged beside it), and holding nothing but an earlier export's files.

    Raises:
        runtime._io.OutputPathError: a file at ``out_dir``, an unwritable folder or parent, or other entries in it.
    """
    out_dir = Path(out_dir)
    here = Path.cwd().resolve()
    if out_dir.resolve() == here or out_dir.resolve() in here.parents:  # "." cannot be renamed aside
        raise OutputPathError(f"{what} {out_dir} is the current folder or holds it; an export folder is replaced "
                              "whole, so give it a folder of its own (e.g. onnx)")
    check_output_dir(out_dir, what=what)
    check_output_dir(out_dir.parent, what=f"{what} {out_dir}: the folder it is staged in,")
    remove_stale_temporaries(out_dir.parent, [out_dir.name])
    if not out_dir.is_dir():
        return out_dir
    remove_stale_temporaries(out_dir)  # per-file temporaries of killed writes (versions before staged folders)
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise OutputPathError(
            f"{what} {out_dir} also holds {shown}; a re-export replaces the folder whole ({', '.join(EXPORT_FILES)}), "
            "so it must hold nothing else: move those out, or choose another folder"
        )
    return out_dir



def refuse_other_exports(out_dir: Path, expected: dict, force: bool) -> None:
    """The overwrite guard of both exporters: refuse graphs in ``out_dir`` that are not the export about to be
    written, unless ``force``. A re-export of the same checkpoint, precision and graph needs no ``force``.

    Args:
        out_dir (Path): the export folder (already checked by :func:`check_export_dir`).
        expected (dict): graph name -> the metadata the new graph will carry (at least ``checkpoint_sha256``,
            ``precision`` and ``graph``).
        force (bool): replace whatever is there.

    Raises:
        ExportOverwriteError: a graph file there has no readable metadata, or another checkpoint, precision or graph.
    """
    from export.onnx_graph import read_metadata

    if force:
        return
    for graph, meta in expected.items():
        path = Path(out_dir) / SPEC.graph(graph).filename
        if not path.exists():
            continue
        try:
            old = read_metadata(path)
        except ExportError:
            old = None
        if old is None:
            raise ExportOverwriteError(
                f"{path} holds another export: it is not a {METADATA_KEY} export (no readable metadata); pass "
                "force=True (--force) to overwrite it or choose another --out folder"
            )
        diffs = [k for k in ("checkpoint_sha256", "precision", "graph") if old.get(k) != meta.get(k)]
        if diffs:
            detail = ", ".join(f"{k}: {old.get(k)!r} there, {meta.get(k)!r} now" for k in diffs)
            raise ExportOverwriteError(
                f"{path} holds another export, not this checkpoint's {meta.get('precision')} {graph} graph ({detail}); "
                "pass force=True (--force) to overwrite it or choose another --out folder"
            )


def write_export(out_dir: Path, blobs: dict, report: dict) -> tuple[dict, Path]:
    """Write an export: record each graph's file name and sha256 in ``report`` (the runtime compares a graph with its
    digest before loading it), then write the graphs (graph name -> bytes) and the report into a staged sibling
    and rename it over ``out_dir``.

    Returns:
        tuple[dict, Path]: graph name -> final path, and the report's final path.
    """
    out_dir = Path(out_dir)
    names = {g: SPEC.graph(g).filename for g in blobs}
    report["files"] = dict(names)
    report["sha256"] = {names[g]: sha256_bytes(b) for g, b in blobs.items()}
    with staged_dir(out_dir) as stage:
        for g, blob in blobs.items():
            atomic_write_bytes(stage / names[g], blob)
        atomic_write_json(stage / EXPORT_REPORT_NAME, report)
    return {g: out_dir / n for g, n in names.items()}, out_dir / EXPORT_REPORT_NAME


def scratch_dir(out_dir: Path) -> tempfile.TemporaryDirectory:
    """A scratch folder beside ``out_dir`` for intermediate files, removed on exit. Named as the shared atomic
    writers name their temporaries (``.NAME.PID.RANDOM.tmp``), so one left by a killed run is removed at the next
    start (:func:`runtime._io.remove_stale_temporaries`), not left to fill the disk."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=out_dir.parent)
