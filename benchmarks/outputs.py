"""The one writer of the benchmark CLIs' files (:class:`Outputs`: ``PREFIX.json``, ``PREFIX.md``, PNG plots): checked
before any work, written atomically, and recognised by content so that a rerun replaces its own earlier outputs
without ``--force``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from runtime._io import (
    OutputPathError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
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


# The first line of report.md, and of paired's, op_profile's, serve_load's, decode's, ddp_throughput's, timeline's
# (timing and peak memory) and backbones' PREFIX.md.
_OWN_HEADINGS = (b"# Latency report: ", b"# Paired latency: ", b"# ONNX Runtime profile: ", b"# Serving load: ",
                 b"# Data-parallel training throughput: ", b"# Video decoding against the model", b"# Timeline: ",
                 b"# Timeline peak memory: ", b"# Backbones: ")
_PNG = b"\x89PNG\r\n\x1a\n"


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is an earlier output of a benchmark CLI, judged by content: a markdown file starting with
    their heading, a PNG that matplotlib wrote (its Software text chunk), or their JSON (an object with "environment"
    and "result", or op_profile's with "nodes" and "ops"). Such files are replaced by a rerun without ``--force``."""
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


Draw = Callable[[Any], Optional[Any]]  # pyplot -> a figure, or None when there is nothing to draw


class Outputs:
    """The files one run of a benchmark CLI writes into ``out_dir``: ``PREFIX.json`` (with ``json``), ``PREFIX.md``
    and one ``PREFIX{suffix}.png`` per plot suffix. :meth:`check` them before any work, :meth:`write` them after.

    Args:
        out_dir (str | PathLike): the folder (created when missing).
        prefix (str): the file name stem.
        with_json (bool): a JSON file is written. Defaults to True.
        plots (Sequence[str]): the plots' suffixes (``""`` is ``PREFIX.png``). Defaults to ``("",)``.
        force (bool): replace existing files of those names that these tools did not write. Defaults to False.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str, *, with_json: bool = True,
                 plots: Sequence[str] = ("",), force: bool = False) -> None:
        self.out_dir, self.prefix, self.with_json = Path(out_dir), prefix, with_json
        self.plots, self.force = tuple(plots), force

    @property
    def names(self) -> list[str]:
        """The file names this run may write."""
        return ([f"{self.prefix}.json"] if self.with_json else []) + [f"{self.prefix}.md"] + [
            f"{self.prefix}{suffix}.png" for suffix in self.plots]

    def check(self) -> None:
        """Before any work: every file may be written (see :func:`check_outputs`).

        Raises:
            OutputPathError: one that cannot or may not be written.
        """
        check_outputs(self.out_dir, self.names, force=self.force)

    def write(self, markdown: Union[str, Callable[[dict], str]], data: Optional[dict] = None,
              plots: Optional[dict[str, Draw]] = None) -> dict[str, Path]:
        """Draw the plots (none without matplotlib, with one warning), then write the JSON and the markdown.

        Args:
            markdown (str | callable): the text, or a function of the drawn plots (as returned) that makes it.
            data (dict, optional): what ``PREFIX.json`` holds. Defaults to None (no JSON).
            plots (dict[str, callable], optional): suffix -> ``draw(pyplot)`` returning a figure or None. Defaults
                to None.

        Returns:
            dict[str, Path]: "json" and "markdown", and each drawn plot under its suffix without the dash
            ("png" for ``""``).
        """
        written: dict[str, Path] = {}
        plt = pyplot("plot") if plots else None  # None, with one warning, without matplotlib
        if plt is not None:
            for suffix, draw in plots.items():
                fig = draw(plt)
                if fig is not None:
                    written[suffix.lstrip("-") or "png"] = save_figure(fig, self.out_dir / f"{self.prefix}{suffix}.png")
        if data is not None:
            written["json"] = atomic_write_json(self.out_dir / f"{self.prefix}.json", data)
        text = markdown(written) if callable(markdown) else markdown
        written["markdown"] = atomic_write_text(self.out_dir / f"{self.prefix}.md", text)
        return written
