"""Device memory, pinned host memory, streams and CUDA graphs through cuda-python (no PyTorch needed).

:class:`CudaApi` wraps the handful of ``cudart`` calls the TensorRT backend needs and turns cuda-python's
``(error, value)`` tuples into values or :class:`CudaError`. The TensorRT backend talks only to this interface, which
is what lets its glue be tested with a fake on machines without a GPU.

cuda-python is imported on first use: ``from cuda.bindings import runtime`` (cuda-python >= 12.6), falling back to
the older ``from cuda import cudart``.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)


class CudaError(RuntimeError):
    """A CUDA runtime call failed (the message names the call and CUDA's error string)."""


class NoCudaDeviceError(CudaError):
    """No usable CUDA device here (no NVIDIA driver, or no GPU): one line that says what needs the GPU."""


def import_cudart():
    """The cuda-python runtime module.

    Raises:
        ImportError: cuda-python is not installed (the message says how to install it).
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as e:
            raise ImportError("the TensorRT backend needs cuda-python for device memory: `pip install cuda-python` "
                              "(or `pip install -e '.[trt]'`)") from e
    return cudart


def _round_up(n: int, align: int = 256) -> int:
    return (int(n) + align - 1) // align * align


class CudaApi:
    """The cudart calls of the TensorRT backend (one instance per runner is fine; it holds no state but cudart)."""

    def __init__(self, cudart=None) -> None:
        self.cudart = cudart if cudart is not None else import_cudart()

    def _check(self, result, what: str):
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        if int(getattr(err, "value", err)) != 0:
            try:
                msg = self.cudart.cudaGetErrorString(err)[1]
                msg = msg.decode() if isinstance(msg, bytes) else str(msg)
            except Exception:
                msg = str(err)
            raise CudaError(f"{what} failed: {msg}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    # --- device ----------------------------------------------------------------------------------------------------
    def require_device(self, needed_by: str) -> None:
        """Raise :class:`NoCudaDeviceError` when no CUDA device is usable, before a library that needs one starts.

        TensorRT started without a GPU logs CUDA initialisation errors and may crash the process later (the lean
        runtime 11.4 does); this check through cuda-python comes first and says it in one line.

        Args:
            needed_by (str): what needs the GPU, for the message (e.g. "the TensorRT lean runtime").
        """
        try:
            count = self._check(self.cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except CudaError as e:  # no driver (cudaErrorInsufficientDriver) or no GPU (cudaErrorNoDevice)
            why = str(e)
        else:
            if count:
                return
            why = "cudaGetDeviceCount found 0 devices"
        raise NoCudaDeviceError(f"no CUDA device: {needed_by} needs an NVIDIA GPU ({why})")

    def set_device(self, device: int) -> None:
        self._check(self.cudart.cudaSetDevice(int(device)), "cudaSetDevice")

    def device_info(self, device: int = 0) -> dict:
        """{"name", "compute_capability" ("9.0"-style)} of a device."""
        props = self._check(self.cudart.cudaGetDeviceProperties(int(device)), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}

    # --- memory ----------------------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(int(nbytes)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self._check(self.cudart.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMallocHost(int(nbytes)), f"cudaMallocHost({nbytes})"))

    def free_host(self, ptr: int) -> None:
        self._check(self.cudart.cudaFreeHost(ptr), "cudaFreeHost")

    def host_view(self, ptr: int, nbytes: int) -> np.ndarray:
        """A uint8 numpy view of pinned host memory (valid until freed)."""
        return np.ctypeslib.as_array((ctypes.c_uint8 * int(nbytes)).from_address(int(ptr)))

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(dst, src, int(nbytes), kind, stream), "cudaMemcpyAsync(HtoD)")

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(dst, src, int(nbytes), kind, stream), "cudaMemcpyAsync(DtoH)")

    # --- streams and graphs ----------------------------------------------------------------------------------------
    def stream_create(self):
        return self._check(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                           "cudaStreamCreateWithFlags")

    def stream_destroy(self, stream) -> None:
        self._check(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_synchronize(self, stream) -> None:
        self._check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_handle(self, stream) -> int:
        """The integer handle ``execute_async_v3`` takes.

        ``int(cudaStream_t)`` is the stream itself; cuda-python's ``getPtr()`` is the address *of* the handle
        (``&stream``), which TensorRT would take for a (wild) stream.
        """
        return int(stream)

    def begin_capture(self, stream) -> None:
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        return self._check(self.cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")

    def graph_instantiate(self, graph):
        return self._check(self.cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def graph_launch(self, graph_exec, stream) -> None:
        self._check(self.cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph, graph_exec) -> None:
        if graph_exec is not None:
            self._check(self.cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        if graph is not None:
            self._check(self.cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def clear_error(self) -> None:
        """Reset the sticky-free last error after a failed capture (trtexec's fallback does the same)."""
        try:
            self.cudart.cudaGetLastError()
        except Exception:  # nothing to clear is fine
            pass


class DeviceBuffer:
    """A device allocation reused across calls and grown (never shrunk) when a call needs more.

    Attributes:
        ptr (int): device address (0 before the first :meth:`ensure`).
        nbytes (int): capacity in bytes.
        reallocations (int): how many times it (re)allocated.
    """

    def __init__(self, cuda: CudaApi, pinned_host: bool = False) -> None:
        self.cuda = cuda
        self.pinned_host = pinned_host
        self.ptr = 0
        self.nbytes = 0
        self.reallocations = 0

    def ensure(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; returns True when the address changed (graphs baked with it are stale)."""
        if nbytes <= self.nbytes:
            return False
        old = self.nbytes  # read before free(), which zeroes it
        self.free()
        # Grow by at least 1.5x so a stream of slowly growing shapes does not reallocate every call.
        size = _round_up(max(int(nbytes), int(old * 1.5)))
        self.ptr = self.cuda.malloc_host(size) if self.pinned_host else self.cuda.malloc(size)
        self.nbytes = size
        self.reallocations += 1
        return True

    def view(self, nbytes: int) -> np.ndarray:
        """uint8 view of the first ``nbytes`` (pinned host buffers only)."""
        return self.cuda.host_view(self.ptr, self.nbytes)[: int(nbytes)]

    def free(self) -> None:
        if self.ptr:
            try:
                (self.cuda.free_host if self.pinned_host else self.cuda.free)(self.ptr)
            finally:
                self.ptr, self.nbytes = 0, 0


def graph_capture(cuda: CudaApi, stream, enqueue) -> Optional[tuple]:
    """Capture ``enqueue()`` into a CUDA graph on ``stream``; None (and the error cleared) when capture fails.

    Returns:
        tuple | None: (graph, graph_exec) to launch, or None to fall back to plain enqueue.
    """
    try:
        cuda.begin_capture(stream)
    except CudaError as e:
        logger.info("CUDA graph capture unavailable (%s); running without graphs", e)
        cuda.clear_error()
        return None
    ok = False
    try:
        ok = bool(enqueue())
    except Exception as e:  # an enqueue that cannot be captured must not leave the stream capturing
        logger.info("enqueue failed under CUDA graph capture (%s)", e)
    graph = None
    try:
        graph = cuda.end_capture(stream)
    except CudaError as e:
        logger.info("ending CUDA graph capture failed (%s)", e)
        ok = False
    if not ok or graph is None:
        cuda.clear_error()
        if graph is not None:
            cuda.graph_destroy(graph, None)
        return None
    try:
        return graph, cuda.graph_instantiate(graph)
    except CudaError as e:
        logger.info("CUDA graph instantiation failed (%s); running without graphs", e)
        cuda.graph_destroy(graph, None)
        cuda.clear_error()
        return None
