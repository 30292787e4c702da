"""The one seam between full TensorRT (module ``tensorrt``, 10.x or 11.x) and TensorRT for RTX (``tensorrt_rtx``).

Both flavours expose the same Python API (``Builder``, ``OnnxParser``, ``Runtime``, optimization profiles, strongly
typed networks) under different module names, with a few differences this module hides:

* which module to import, and which one ``backend="auto"`` picks (full TensorRT first, then TensorRT-RTX);
* strong typing: TensorRT 10.12+ takes the opt-in ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT 11.x and
  TensorRT-RTX are strongly typed always (the flag is deprecated and ignored there, but passing it is harmless).
  The weak-typing FP16 flags are never used: FP16 comes from the ONNX graph (see ``export/spec.py``);
* the target compute capability, which only TensorRT-RTX takes (ahead-of-time builds, even without a GPU);
* the engine inspector JSON, whose I/O section is ``"Bindings"`` (names) in 10.x and ``"I/O Tensors"`` (objects) in
  11.x and TensorRT-RTX, and whose per-tensor ``"Format/Datatype"`` string became separate ``"Format"`` and
  ``"DataType"`` fields.

Nothing here imports a TensorRT module at import time. Other modules (``export.to_trt``, the runtime's TensorRT
backend) call :func:`import_trt` and work with the returned :class:`TrtModule`.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Optional

logger = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "tensorrt_rtx")
BACKENDS = ("auto",) + FLAVOURS

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
}

# Canonical dtype names for what the engine inspector prints (10.x embeds them in "Format/Datatype" strings).
_INSPECTOR_DTYPES = (
    ("FP32", "FLOAT"), ("Float", "FLOAT"), ("FP16", "HALF"), ("Half", "HALF"), ("BF16", "BF16"), ("Int64", "INT64"),
    ("INT64", "INT64"), ("Int32", "INT32"), ("INT32", "INT32"), ("Int8", "INT8"), ("INT8", "INT8"), ("FP8", "FP8"),
    ("Bool", "BOOL"), ("BOOL", "BOOL"), ("UInt8", "UINT8"),
)


class TrtNotAvailableError(ImportError):
    """The requested TensorRT flavour is not installed (the message says how to install each one)."""


class TrtCompatError(ValueError):
    """A TensorRT option this flavour or version cannot honour (for example a compute capability on full TensorRT)."""


@dataclass(frozen=True)
class TrtModule:
    """An imported TensorRT flavour.

    Attributes:
        trt (module): the imported module (``tensorrt`` or ``tensorrt_rtx``).
        flavour (str): "tensorrt" or "tensorrt_rtx".
        version (tuple[int, ...]): parsed ``trt.__version__``, e.g. (10, 13, 0, 35) or (1, 7, 1, 116).
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
    def major(self) -> int:
        return int(self.version[0]) if self.version else 0

    def describe(self) -> str:
        """Human-readable name, e.g. "TensorRT-RTX 1.7.1.116"."""
        return f"{'TensorRT-RTX' if self.is_rtx else 'TensorRT'} {self.version_string}"


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


def not_installed_message(requested: str, errors: Optional[dict] = None) -> str:
    """The message of :class:`TrtNotAvailableError`: what was asked for, why it failed, how to install each flavour."""
    wanted = list(FLAVOURS) if requested == "auto" else [requested]
    lines = [f"no TensorRT flavour importable for backend={requested!r} (tried: {', '.join(wanted)})."]
    for name, err in (errors or {}).items():
        lines.append(f"  import {name}: {err}")
    lines.append("Install one of:")
    for name in FLAVOURS:
        lines.append(f"  - {INSTALL_HINTS[name]}")
    return "\n".join(lines)


def _import_module(name: str):
    return importlib.import_module(name)


def import_trt(backend: str = "auto") -> TrtModule:
    """Import a TensorRT flavour.

    Args:
        backend (str): "auto" (full TensorRT if importable, else TensorRT-RTX), "tensorrt" or "tensorrt_rtx".
            Defaults to "auto".

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
    for name in FLAVOURS if backend == "auto" else (backend,):
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
    raise TrtNotAvailableError(not_installed_message(backend, errors))


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
        return trt.Logger(getattr(trt.Logger, severity.upper()))
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


# --- building ----------------------------------------------------------------------------------------------------


def network_creation_flags(tm: TrtModule) -> int:
    """Flags for ``builder.create_network`` that give a strongly typed network on every supported version.

    TensorRT 10.x: ``1 << STRONGLY_TYPED`` (opt-in; required so FP16 comes from the graph, because the weak-typing
    FP16 flag is deprecated in 10.12 and removed in 11.0). TensorRT 11.x and TensorRT-RTX: strongly typed always; the
    flag is deprecated/ignored there but still accepted, so it is passed when it exists.

    Raises:
        TrtCompatError: a full TensorRT older than 10.12 (the FP16 flag's deprecation; strongly typed FP16 LSTMs
            before it are not worth relying on).
    """
    trt = tm.trt
    if not tm.is_rtx and tuple(tm.version[:2]) < (10, 12):
        raise TrtCompatError(
            f"{tm.describe()} is too old: this package needs TensorRT >= 10.12 (strongly typed networks) or 11.x, "
            "or TensorRT-RTX"
        )
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly = getattr(flag_enum, "STRONGLY_TYPED", None) if flag_enum is not None else None
    if strongly is None:
        if tm.is_rtx or tm.major >= 11:
            return 0  # strongly typed by default; the flag was removed
        raise TrtCompatError(f"{tm.describe()} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    return 1 << int(strongly)


def create_network(tm: TrtModule, builder):
    """``builder.create_network`` with :func:`network_creation_flags`, checked to be strongly typed.

    Raises:
        TrtCompatError: the network reports it is not strongly typed (FP16 would silently be lost).
    """
    network = builder.create_network(network_creation_flags(tm))
    if not is_strongly_typed(tm, network):
        raise TrtCompatError(f"{tm.describe()} created a network that is not strongly typed")
    return network


def is_strongly_typed(tm: TrtModule, network) -> bool:
    """Whether ``network`` is strongly typed (True on versions where strong typing is the only mode)."""
    flag_enum = getattr(tm.trt, "NetworkDefinitionCreationFlag", None)
    strongly = getattr(flag_enum, "STRONGLY_TYPED", None) if flag_enum is not None else None
    if strongly is None or not hasattr(network, "get_flag"):
        return tm.is_rtx or tm.major >= 11
    return bool(network.get_flag(strongly))


def compute_capability_choices(tm: TrtModule) -> list[str]:
    """Compute capabilities TensorRT-RTX can target, as "8.6"-style strings ([] for full TensorRT)."""
    enum = getattr(tm.trt, "ComputeCapability", None)
    if not tm.is_rtx or enum is None:
        return []
    out = []
    for name in dir(enum):
        m = re.fullmatch(r"SM(\d+)(\d)", name)
        if m:
            out.append(f"{int(m.group(1))}.{m.group(2)}")
    return sorted(out, key=lambda s: tuple(int(x) for x in s.split(".")))


def set_compute_capability(tm: TrtModule, config, capability: Optional[str]) -> Optional[str]:
    """Point a TensorRT-RTX builder config at one compute capability ("8.6", "8.9", "12.0", ... or "current").

    Args:
        tm (TrtModule): the flavour.
        config: the ``IBuilderConfig``.
        capability (str | None): None keeps the flavour's default (full TensorRT: the build GPU; TensorRT-RTX:
            its own default).

    Returns:
        str | None: the capability set, or None when left at the default.

    Raises:
        TrtCompatError: a capability for full TensorRT (it always builds for the GPU it runs on), or one
            TensorRT-RTX does not know (the message lists the valid ones).
    """
    if capability is None:
        return None
    capability = str(capability).strip()
    if not tm.is_rtx:
        raise TrtCompatError(
            f"--compute-capability {capability} is a TensorRT-RTX option; {tm.describe()} builds for the GPU it runs on"
        )
    enum = tm.trt.ComputeCapability
    if capability.lower() == "current":
        member = enum.CURRENT
    else:
        name = "SM" + capability.replace(".", "")
        member = getattr(enum, name, None) if re.fullmatch(r"\d+\.\d", capability) else None
        if member is None:
            raise TrtCompatError(
                f"unknown compute capability {capability!r} for {tm.describe()}; valid choices: "
                f"{', '.join(compute_capability_choices(tm) + ['current'])}"
            )
    config.num_compute_capabilities = 1
    config.set_compute_capability(member, 0)
    return capability


def has_weak_typing_fp16(tm: TrtModule) -> bool:
    """Whether this version still has ``BuilderFlag.FP16`` (10.x). Reported only: this package never sets it."""
    return hasattr(tm.trt.BuilderFlag, "FP16")


def timing_cache_supported(tm: TrtModule) -> bool:
    """False for TensorRT-RTX >= 1.2, where timing-cache calls are documented no-ops (and warn); True otherwise."""
    return not (tm.is_rtx and tuple(tm.version[:2]) >= (1, 2))


# Layer types the ONNX parser emits for an ONNX LSTM (an ILoop with recurrences over T).
LOOP_LAYER_TYPES = ("LOOP", "RECURRENCE", "ITERATOR", "LOOP_OUTPUT", "TRIP_LIMIT", "LOOP_BOUNDARY")


def dtype_name(dtype) -> str:
    """``trt.DataType.HALF`` -> "HALF" (works on any enum member with ``.name``)."""
    name = getattr(dtype, "name", None)
    return str(name) if name is not None else str(dtype).rsplit(".", 1)[-1]


# --- engine inspection ---------------------------------------------------------------------------------------------


def _inspector_dtype(fields: dict) -> Optional[str]:
    text = fields.get("DataType") or fields.get("Format/Datatype") or fields.get("Format") or ""
    for token, canonical in _INSPECTOR_DTYPES:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])", str(text)):
            return canonical
    return None


def normalize_engine_information(tm_or_major, info: str | dict) -> dict:
    """Parse the engine inspector's JSON into one schema for TensorRT 10.x, 11.x and TensorRT-RTX.

    Args:
        tm_or_major (TrtModule | int): the flavour (or a major version, for tests); only used to name the source.
        info (str | dict): ``inspector.get_engine_information(LayerInformationFormat.JSON)``.

    Returns:
        dict: ``{"io_tensors": [{"name", "mode", "dtype", "shape"}], "layers": [{"name", "type", "inputs",
        "outputs"}]}``; each layer input/output is ``{"name", "dtype", "format"}``. Fields the version does not report
        are None (10.x "Bindings" give names only). Layers only reported by name (without DETAILED verbosity) come
        back as ``{"name": ..., "type": None, ...}``.
    """
    data = json.loads(info) if isinstance(info, (str, bytes)) else dict(info)
    io = []
    if "I/O Tensors" in data:  # 11.x / TensorRT-RTX
        for t in data["I/O Tensors"]:
            io.append({
                "name": t.get("Name"),
                "mode": (t.get("IOMode") or "").upper() or None,
                "dtype": _inspector_dtype(t),
                "shape": t.get("Dimensions"),
            })
    elif "Bindings" in data:  # 10.x: a flat list of names
        io = [{"name": n, "mode": None, "dtype": None, "shape": None} for n in data["Bindings"]]
    layers = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):
            layers.append({"name": layer, "type": None, "inputs": [], "outputs": []})
            continue

        def tensors(key, layer=layer):
            return [
                {
                    "name": t.get("Name"),
                    "dtype": _inspector_dtype(t),
                    "format": t.get("Format") if "DataType" in t else t.get("Format/Datatype"),
                }
                for t in layer.get(key, [])
            ]

        layers.append({
            "name": layer.get("Name"),
            "type": layer.get("LayerType"),
            "inputs": tensors("Inputs"),
            "outputs": tensors("Outputs"),
        })
    return {"io_tensors": io, "layers": layers}
