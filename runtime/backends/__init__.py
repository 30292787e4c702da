"""Backends behind :class:`runtime.base.BaseRunner`, and :func:`load`, which picks one by file type.

| file | backend | runner |
|---|---|---|
| ``.engine`` / ``.plan`` (+ ``ENGINE.json`` report) | TensorRT (``tensorrt`` or ``tensorrt_rtx``) | :class:`TrtRunner` |
| ``.onnx`` | ONNX Runtime | :class:`OnnxRuntimeRunner` |
| ``.onnx`` with ``providers=["OpenVINOExecutionProvider"]`` | ONNX Runtime + the OpenVINO plugin | :class:`OpenVinoRunner` |
| ``.pt`` / ``.pth`` checkpoint | PyTorch (eager, or the fast CUDA-graph path) | :class:`TorchRunner` |
| ``grpc://HOST:PORT/NAME``, ``http://HOST:PORT/NAME`` | a Triton server (``tritonclient``) | :class:`TritonRunner` |

Each backend module imports its library on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Optional

from ..errors import RuntimeInputError
from .ort_providers import names_openvino

BACKENDS = ("tensorrt", "onnxruntime", "torch")
SUFFIXES = {".engine": "tensorrt", ".plan": "tensorrt", ".onnx": "onnxruntime", ".pt": "torch", ".pth": "torch"}
_RUNNERS = {
    "tensorrt": ("runtime.backends.tensorrt", "TrtRunner"),
    "onnxruntime": ("runtime.backends.onnxrt", "OnnxRuntimeRunner"),
    "openvino": ("runtime.backends.openvino", "OpenVinoRunner"),  # .onnx with providers=["OpenVINOExecutionProvider"]
    "torch": ("runtime.backends.torch_backend.runner", "TorchRunner"),
    "triton": ("runtime.triton.client", "TritonRunner"),  # for URLs only
}
_ZIP_MAGIC = b"PK\x03\x04"


def runner_class(backend: str, options: Optional[dict] = None):
    """The runner class of ``backend`` ("tensorrt" | "onnxruntime" | "torch" | "triton") for ``options``, importing
    its module: ONNX Runtime with ``providers`` naming OpenVINO runs in
    :class:`~runtime.backends.openvino.OpenVinoRunner`."""
    if backend not in BACKENDS + ("triton",):
        raise RuntimeInputError(f"unknown backend {backend!r}; valid choices: auto, {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and names_openvino((options or {}).get("providers")):
        backend = "openvino"
    module, name = _RUNNERS[backend]
    return getattr(importlib.import_module(module), name)


def sniff_file(path: Path, backend: str) -> None:
    """Reject files whose first bytes contradict their extension, before a library parses them.

    Raises:
        RuntimeInputError: empty file, a zip archive (PyTorch checkpoint) named .onnx/.engine, an ONNX or JSON file
            named .engine, a non-zip non-pickle file named .pt.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    kind = {"tensorrt": "TensorRT engine", "onnxruntime": "ONNX model", "torch": "PyTorch checkpoint"}[backend]
    if not head:
        raise RuntimeInputError(f"{path} is empty, not a {kind}")
    if backend != "torch" and head.startswith(_ZIP_MAGIC):
        raise RuntimeInputError(f"{path} is a zip archive (a PyTorch checkpoint?), not a {kind}; a checkpoint must end "
                                "in .pt")
    if backend == "tensorrt" and head.lstrip()[:1] in (b"{", b"["):
        raise RuntimeInputError(f"{path} is JSON text, not a TensorRT engine (the engine's report is ENGINE.json)")
    if backend == "tensorrt" and head[:1] == b"\x08" and any(
            producer in _read_head(path, 256).lower() for producer in (b"pytorch", b"cnn-bilstm-deploy")):
        raise RuntimeInputError(f"{path} looks like an ONNX model, not a TensorRT engine; build one with "
                                "`python -m export.to_trt MODEL.onnx --out ENGINE`")
    if backend == "torch" and not (head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80"):
        raise RuntimeInputError(f"{path} is neither a zip nor a pickle file, so not a {kind} (damaged, or another "
                                "format named .pt)")


def _read_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def load(path: str | os.PathLike, device=None, backend: str = "auto", **options):
    """Open an engine, ONNX model or checkpoint as a runner (not yet activated; ``infer`` or ``with`` activates it).

    Args:
        path (str | PathLike): ``.engine``/``.plan`` (TensorRT, with its JSON report at ``path + ".json"``),
            ``.onnx`` (ONNX Runtime) or ``.pt``/``.pth`` (PyTorch checkpoint); or the URL of a model served by
            Triton, ``grpc://HOST:PORT/NAME`` or ``http://HOST:PORT/NAME`` (options: ``timeout``, ``check_finite``;
            it reads the served model's config now, so a server that is down fails here).
        device (str | None): "cpu", "cuda", "cuda:N"; None picks the backend's default (CUDA when usable).
            Defaults to None.
        backend (str): "auto" (by extension) or the backend the extension implies. Defaults to "auto".
        **options: passed to the runner: ``stage``, ``fast``, ``precision``, ``cuda_graphs``, ``channels_last``
            (torch);
            ``providers``, ``intra_op_threads``, ``allow_spinning``, ``openvino_precision`` (onnxruntime);
            ``cuda_graphs``, ``runtime_cache`` (tensorrt);
            ``check_finite`` (all; on by default: NaN/Inf at a clip's real steps is refused).

    Returns:
        BaseRunner: a :class:`TrtRunner`, :class:`OnnxRuntimeRunner` (:class:`OpenVinoRunner` when ``providers``
        names ``"OpenVINOExecutionProvider"``), :class:`TorchRunner` or, for a URL,
        :class:`runtime.triton.client.TritonRunner`.

    Raises:
        RuntimeInputError: a path that is not a str or PathLike (None, say), a missing file, a directory, an unknown
            extension, a backend that cannot read the extension, a file that is not what its extension says, a
            damaged file, an incompatible engine, a bad option; for a URL, see ``TritonRunner``.
        runtime.errors.RemoteServerError: a URL whose server cannot be reached or does not answer in time.
    """
    from ..triton.client import is_remote_url

    if is_remote_url(path):
        if device is not None or backend not in ("auto", "triton"):
            raise RuntimeInputError(f"{path} is served by Triton: device and backend are the server's choice; leave "
                                    f"them out (got device={device!r}, backend={backend!r})")
        return check_options("triton", options)(path, **options)
    if not isinstance(path, (str, os.PathLike)):
        raise RuntimeInputError(f"path must be a file path (str or os.PathLike) of a .engine/.plan, .onnx or .pt/.pth "
                                f"file, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise RuntimeInputError(f"{path} does not exist")
    if path.is_dir():
        raise RuntimeInputError(f"{path} is a directory; load one file (model.onnx, model.engine, a .pt checkpoint), "
                                "or pass the export directory to StreamingClassifier")
    implied = SUFFIXES.get(path.suffix.lower())
    if implied is None:
        raise RuntimeInputError(f"cannot tell the format of {path.name!r} from its extension; valid extensions: "
                                f"{', '.join(sorted(SUFFIXES))}")
    if backend not in ("auto",) + BACKENDS:
        raise RuntimeInputError(f"unknown backend {backend!r}; valid choices: auto, {', '.join(BACKENDS)}")
    if backend != "auto" and backend != implied:
        raise RuntimeInputError(f"backend {backend!r} cannot read a {path.suffix} file; {path.suffix} files run on "
                                f"{implied!r} (or pass backend='auto')")
    cls = check_options(implied, options)
    sniff_file(path, implied)
    return cls(path, device=device, **options)


def check_options(backend: str, options: dict):
    """Refuse options the backend's runner does not take (a clear error instead of a TypeError).

    Returns:
        type: the runner class.

    Raises:
        RuntimeInputError: unknown options, naming the valid ones.
    """
    cls = runner_class(backend, options)
    valid = _option_names(cls)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise RuntimeInputError(f"unknown options {unknown} for the {backend} backend; valid options: "
                                f"{', '.join(sorted(valid))}")
    return cls


def _option_names(cls) -> set:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
