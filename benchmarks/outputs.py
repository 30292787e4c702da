"""The output files of the benchmark CLIs (report, paired, op_profile, serve_load): checked before any work, and
recognised by content so that a rerun replaces its own earlier outputs without ``--force``; their plots."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from runtime._io import (
    OutputPathError,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
    remove_stale_temporaries,
)

logger = logging.getLogger(__name__)


def pyplot(what: str) -> Optional[object]:
    """``matplotlib.pyplot`` on the Agg backend, or None with one warning saying that ``what`` is not drawn (the
    ``plots`` extra is optional: a CLI still writes its tables and JSON without it)."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install 'cnn-bilstm-deploy[plots]')", what)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it (also when writing fails)."""
    import io

    import matplotlib.pyplot as plt

    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        return atomic_write_bytes(Path(path), buf.getvalue())
    finally:
        plt.close(fig)


# The first line of report.md, and of paired's, op_profile's, serve_load's and ddp_throughput's PREFIX.md.
_OWN_HEADINGS = (b"# Latency report: ", b"# Paired latency: ", b"# ONNX Runtime profile: ", b"# Serving load: ",
                 b"# Data-parallel training throughput: ")
_PNG = b"\x89PNG\r\n\x1a\n"


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is an earlier output of ``benchmarks.report``, ``.paired``, ``.op_profile`` or
    ``.serve_load``, judged by content: a markdown file starting with their heading, a PNG that matplotlib wrote (its
    Software text chunk), or their JSON (paired's and serve_load's object with "environment" and "result",
    op_profile's with "nodes" and "ops"). Such files are replaced by a rerun without ``--force``."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
        if path.suffix == ".md":
            return head.startswith(_OWN_HEADINGS)
        if path.suffix == ".png":
            return head.startswith(_PNG) and b"Matplotlib" in head
        if path.suffix == ".json" and head.lstrip().startswith(b"{"):
            data = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and ({"environment", "result"} <= set(data) or {"nodes", "ops"} <= set(data))
    except (OSError, ValueError):
        pass
    return False


def check_outputs(out_dir: str | os.PathLike, names: Sequence[str], *, force: bool = False) -> None:
    """Before any work: ``out_dir`` is a folder that can be written (or created), and each file ``names`` in it may
    be written: absent, an earlier output of these tools (:func:`is_own_output`), or ``force``. Temporaries of those
    files that killed runs left are removed.

    Raises:
        OutputPathError: a file where the folder goes, a folder that cannot be written, a folder where a file goes,
            a file name that is not a plain name, or an existing file these tools did not write (without force).
    """
    check_output_dir(out_dir, what="--out")
    for name in names:
        if Path(name).name != name or name.startswith(".") or not Path(name).stem:
            raise OutputPathError(f"--prefix must be a plain file name stem (no folders, not hidden), which makes "
                                  f"{name!r}")
        check_output_file(Path(out_dir) / name, what="output", suffixes=(Path(name).suffix,), force=force,
                          replaceable=is_own_output)
    remove_stale_temporaries(out_dir, names)  # what killed earlier runs left of these files
