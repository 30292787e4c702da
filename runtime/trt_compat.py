"""The one seam between full TensorRT (module ``tensorrt``, 10.x or 11.x), TensorRT for RTX (``tensorrt_rtx``) and
the TensorRT lean runtime (``tensorrt_lean_bindings``).

The flavours expose the same Python API (``Runtime``, engines, execution contexts, optimization profiles; full
TensorRT and TensorRT-RTX also ``Builder`` and ``OnnxParser``) under different module names. The lean runtime is
TensorRT's runtime API alone (no builder, no parser), and it runs only version-compatible engines, which full
TensorRT builds (``python -m export.to_trt --version-compatible``). This module holds what running an engine needs:
which module to import (and which one ``backend="auto"`` picks: full TensorRT first, then TensorRT-RTX, then the lean
runtime), its parsed version, the install hints, a logger that keeps TensorRT's own messages, and dtype names. What only building needs (strongly typed
network flags, compute capabilities, timing caches, the engine inspector's JSON) lives in :mod:`export.trt_build`.

Nothing here imports a TensorRT module at import time. Other modules (``export.to_trt``, the runtime's TensorRT
backend) call :func:`import_trt` and work with the returned :class:`TrtModule`.
"""

from __future__ import annotations

import collections
import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Optional

logger = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "tensorrt_rtx", "tensorrt_lean_bindings")
BACKENDS = ("auto",) + FLAVOURS
# The flavours with a builder and an ONNX parser (the lean runtime has neither).
BUILD_FLAVOURS = ("tensorrt", "tensorrt_rtx")
# How messages name each flavour.
PRODUCTS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX", "tensorrt_lean_bindings": "TensorRT lean runtime"}

# What to tell a user who asked for a flavour that is not importable.
INSTALL_HINTS = {
    "tensorrt": (
        "full TensorRT (module `tensorrt`, 10.12+ or 11.x): `pip install tensorrt-cu13` (or `tensorrt-cu12` to match a "
        "CUDA 12 PyTorch), or `pip install -e '.[trt]'`. The PyPI package downloads the real libraries from NVIDIA's "
        "index at install time, so that index must be reachable. Building and running engines need an NVIDIA GPU "
        "(Turing or newer, e.g. T4, A100, L4, H100/H200) with a matching driver."
    ),
    "tensorrt_rtx": (
        "TensorRT for RTX (module `tensorrt_rtx`): `pip install tensorrt-rtx-cu13` or `pip install -e '.[trt-rtx]'`. "
        "It builds engines on any machine, even without a GPU (ahead of time for compute capability 7.5/8.0/8.6/8.9/"
        "12.0), but running them needs a GPU it supports (GeForce/RTX-class Turing, Ampere, Ada or Blackwell); it "
        "refuses data-centre Hopper parts such as H100/H200 (compute capability 9.0)."
    ),
    "tensorrt_lean_bindings": (
        "the TensorRT lean runtime (module `tensorrt_lean_bindings`, runtime only, a 45 MB download): "
        "`pip install tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings cuda-python` or "
        "`pip install -e '.[trt-lean]'`. It runs version-compatible engines that full TensorRT built with "
        "`python -m export.to_trt --version-compatible`, on an NVIDIA GPU (Turing or newer, H100/H200 included)."
    ),
}

class TrtNotAvailableError(ImportError):
    """The requested TensorRT flavour is not installed (the message says how to install each one)."""


@dataclass(frozen=True)
class TrtModule:
    """An imported TensorRT flavour.

    Attributes:
        trt (module): the imported module (``tensorrt``, ``tensorrt_rtx`` or ``tensorrt_lean_bindings``).
        flavour (str): one of :data:`FLAVOURS`.
        version (tuple[int, ...]): parsed ``trt.__version__``, e.g. (10, 13, 0, 35), (1, 7, 1, 116) or
            (11, 4, 0, 106).
    """

    trt: Any
    flavour: str
    version: tuple

    @property
    def version_string(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def is_rtx(self) -> bool:
        return self.flavour == "tensorrt_rtx"

    @property
    def is_lean(self) -> bool:
        return self.flavour == "tensorrt_lean_bindings"

    @property
    def major(self) -> int:
        return int(self.version[0]) if self.version else 0

    @property
    def product(self) -> str:
        """"TensorRT", "TensorRT-RTX" or "TensorRT lean runtime"."""
        return PRODUCTS.get(self.flavour, self.flavour)

    def describe(self) -> str:
        """Human-readable name, e.g. "TensorRT-RTX 1.7.1.116" or "TensorRT lean runtime 11.4.0.106"."""
        return f"{self.product} {self.version_string}"


def parse_version(text: str) -> tuple:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; trailing non-numeric parts (``"11.0.0rc1"``) are dropped.

    Raises:
        ValueError: no leading number at all.
    """
    parts = []
    for piece in str(text).strip().split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"cannot parse a TensorRT version from {text!r}")
    return tuple(parts)


def not_installed_message(requested: str, errors: Optional[dict] = None, order: tuple = FLAVOURS) -> str:
    """The message of :class:`TrtNotAvailableError`: what was asked for, why it failed, how to install each flavour."""
    wanted = list(order) if requested == "auto" else [requested]
    lines = [f"no TensorRT flavour importable for backend={requested!r} (tried: {', '.join(wanted)})."]
    for name, err in (errors or {}).items():
        lines.append(f"  import {name}: {err}")
    lines.append("Install one of:")
    for name in FLAVOURS:
        lines.append(f"  - {INSTALL_HINTS[name]}")
    return "\n".join(lines)


def _import_module(name: str):
    return importlib.import_module(name)


def import_trt(backend: str = "auto", *, order: tuple = FLAVOURS) -> TrtModule:
    """Import a TensorRT flavour.

    Importing touches no GPU (the modules import on machines without one); creating a ``Runtime`` does.

    Args:
        backend (str): "auto" (the first importable flavour of ``order``) or one of :data:`FLAVOURS`.
            Defaults to "auto".
        order (tuple[str, ...]): the flavours "auto" tries, in this order: :data:`FLAVOURS` (full TensorRT,
            TensorRT-RTX, the lean runtime) by default; :data:`BUILD_FLAVOURS` to build engines; the flavours that
            can load one engine (:func:`runtime.backends.engine_report.runtime_flavours`) to run it.

    Returns:
        TrtModule: the module, its flavour and its parsed version.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        TrtNotAvailableError: the flavour (or, for "auto", every flavour) cannot be imported; the message says how to
            install each flavour and which hardware it needs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown TensorRT backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    errors = {}
    for name in order if backend == "auto" else (backend,):
        try:
            mod = _import_module(name)
        except ImportError as e:  # includes a shared library that fails to load
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        except OSError as e:  # a broken CUDA/driver install surfaces here on some systems
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        version = parse_version(getattr(mod, "__version__", "0"))
        logger.debug("using %s %s", name, ".".join(map(str, version)))
        return TrtModule(trt=mod, flavour=name, version=version)
    raise TrtNotAvailableError(not_installed_message(backend, errors, order))


_SEVERITIES = ("internal_error", "error", "warning", "info", "verbose")


def make_logger(tm: TrtModule, severity: str = "warning", *, collect: bool = False, forward: bool = True):
    """A TensorRT logger at the given minimum severity ("internal_error", "error", "warning", "info", "verbose").

    Args:
        tm (TrtModule): the flavour.
        severity (str): minimum severity passed on. Defaults to "warning".
        collect (bool): return an ``ILogger`` subclass that forwards to Python logging and keeps the last 500
            messages at or above ``severity`` in ``.messages`` ((severity name, text) pairs), so callers can put
            TensorRT's own words (e.g. "does not support this compute capability") into their exceptions. Defaults to
            False.
        forward (bool): with ``collect``, also pass messages on to Python logging (False: keep them only, for
            attempts whose failure is expected and reported otherwise). Defaults to True.

    Raises:
        ValueError: unknown severity.
    """
    if severity not in _SEVERITIES:
        raise ValueError(f"unknown TensorRT log severity {severity!r}; valid choices: {', '.join(_SEVERITIES)}")
    trt = tm.trt
    if not collect:
        # Spelled out (not getattr): tests/runtime/test_trt_api_names.py finds every TensorRT name used here.
        levels = {"internal_error": trt.Logger.INTERNAL_ERROR, "error": trt.Logger.ERROR,
                  "warning": trt.Logger.WARNING, "info": trt.Logger.INFO, "verbose": trt.Logger.VERBOSE}
        return trt.Logger(levels[severity])
    limit = _SEVERITIES.index(severity)
    py_levels = [logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            # Bounded: TensorRT logs to it for the runtime's whole life (e.g. a warning per enqueue).
            self.messages = collections.deque(maxlen=500)

        def log(self, sev, msg) -> None:  # called by TensorRT, possibly from its own threads
            idx = min(int(sev), len(_SEVERITIES) - 1)
            if idx <= limit:
                self.messages.append((_SEVERITIES[idx], str(msg)))
                if forward:
                    logger.log(py_levels[idx], "[%s] %s", tm.flavour, msg)

        def errors(self) -> list:
            return [m for s, m in self.messages if s in ("internal_error", "error")]

    return CollectingLogger()


def dtype_name(dtype) -> str:
    """``trt.DataType.HALF`` -> "HALF" (works on any enum member with ``.name``)."""
    name = getattr(dtype, "name", None)
    return str(name) if name is not None else str(dtype).rsplit(".", 1)[-1]
