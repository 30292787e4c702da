"""The TensorRT runner's glue (runtime/backends/tensorrt.py, runtime/cuda_mem.py) against FAKES.

No TensorRT can execute an engine on the CPU-only machines these tests run on (TensorRT-RTX builds engines without a
GPU but cannot run them; full TensorRT does not install without one). So this file drives the real
:class:`runtime.backends.tensorrt.TrtRunner` and the real :class:`runtime.cuda_mem.CudaApi` through two labelled
fakes that stand in for the libraries underneath them:

* ``FakeTensorRT`` (with ``FakeRuntime``, ``FakeEngine``, ``FakeExecutionContext``): a fake ``tensorrt`` module.
  It fakes only the glue surface (I/O tensor names, modes and dtypes, optimization profiles, ``set_input_shape`` /
  ``get_tensor_shape``, tensor addresses, ``execute_async_v3`` on a stream). There is NO engine math: "inference" is
  a fixed toy function of the inputs (:func:`fake_model`) so the tests can see that data went in and came back
  through the right buffers, shapes, dtypes and streams.
* ``FakeCudart`` (a fake cuda-python ``cudart`` module: fake device memory, real pinned host memory, streams whose
  work runs only at synchronize, stream capture and CUDA graphs) under the real ``CudaApi``; ``FakeCudaApi`` is that
  pair, with counters for allocations and frees.

The real path (a real engine built from the tiny model, real cuda-python, compared with eager PyTorch) is covered by
the GPU-marked tests in tests/test_runtime_gpu.py.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
from collections import Counter

import numpy as np
import pytest

import runtime
from runtime import RuntimeInputError
from runtime.cuda_mem import CudaApi, CudaError, DeviceBuffer
from runtime.trt_compat import TrtModule

H, W = 4, 4
CLASSES = ["a", "b", "c"]
C = len(CLASSES)
FEATURE_DIM = 8
TRT_VERSION = (10, 13, 0, 35)
GPU_NAME, GPU_CC = b"NVIDIA H100 80GB HBM3", (9, 0)
# The profiles of the brief's example engine: (batch (min, opt, max), time (min, opt, max)).
TWO_PROFILES = [((1, 1, 8), (1, 16, 128)), ((8, 64, 64), (1, 16, 32))]


# ======================================================================================================================
# FAKE cuda-python runtime module (fake device memory; real, ctypes-backed pinned host memory)
# ======================================================================================================================


class FakeCudaErr(enum.IntEnum):
    """Stands in for ``cudart.cudaError_t`` (only ``.value`` is used by CudaApi)."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


OK = FakeCudaErr.cudaSuccess


class FakeStream:
    """Like cuda-python's ``cudaStream_t``: ``int(s)`` is the handle, ``s.getPtr()`` the address OF the handle."""

    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:  # noqa: N802 (cuda-python's name): &cudaStream_t, not the stream
        return id(self)


class FakeGraph:
    def __init__(self, ops: list) -> None:
        self.ops = ops
        self.destroyed = False


class FakeGraphExec:
    def __init__(self, graph: FakeGraph) -> None:
        self.ops = list(graph.ops)
        self.destroyed = False


class FakeCudart:
    """FAKE ``cuda.bindings.runtime``: the calls CudaApi makes, returning cuda-python's ``(error, value)`` tuples.

    Work enqueued on a stream (copies, fake kernels, graph launches) runs only at ``cudaStreamSynchronize``, so a
    missing synchronize shows up as wrong outputs. Fresh device memory is 0xFF bytes (NaN as float32), so reading
    memory nothing wrote shows up too.
    """

    cudaStreamNonBlocking = 1

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801 (cuda-python's name)
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1
        cudaStreamCaptureModeRelaxed = 2

    def __init__(self, cc: tuple = GPU_CC, name: bytes = GPU_NAME, *, fail_begin_capture: bool = False,
                 fail_malloc: bool = False) -> None:
        self.cc, self.gpu_name = cc, name
        self.fail_begin_capture, self.fail_malloc = fail_begin_capture, fail_malloc
        self.calls: Counter = Counter()
        self.device: dict = {}  # base address -> bytearray (live device allocations)
        self.host: dict = {}  # base address -> ctypes array (live pinned allocations)
        self._graveyard: list = []  # freed host arrays kept alive so a use-after-free cannot crash the test process
        self._next_dev = 0x7F00_0000_0000
        self._next_stream = 0x5000
        self.streams: dict = {}  # handle -> {"flags", "queue", "capture", "obj"}
        self.memcpys: list = []  # (kind, dst, src, nbytes, stream handle, host side pinned?)
        self.launched_on: list = []  # stream handles fake kernels and graphs ran on
        self.graphs: list = []
        self.execs: list = []
        self.last_error = OK
        self.device_set = None

    # --- errors / device --------------------------------------------------------------------------------------------
    def cudaGetErrorString(self, err):  # noqa: N802
        return OK, f"fake CUDA error {FakeCudaErr(err).name}".encode()

    def cudaGetLastError(self):  # noqa: N802
        self.calls["cudaGetLastError"] += 1
        err, self.last_error = self.last_error, OK
        return (err,)

    def cudaSetDevice(self, device):  # noqa: N802
        self.device_set = device
        return (OK,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        class Props:
            name = self.gpu_name
            major, minor = self.cc

        return OK, Props()

    # --- memory -----------------------------------------------------------------------------------------------------
    def cudaMalloc(self, nbytes):  # noqa: N802
        self.calls["cudaMalloc"] += 1
        if self.fail_malloc:
            return FakeCudaErr.cudaErrorMemoryAllocation, None
        base = self._next_dev
        self._next_dev += (nbytes + 4095) // 4096 * 4096 + 4096
        self.device[base] = bytearray(b"\xff" * nbytes)
        return OK, base

    def _drain(self) -> None:
        for st in self.streams.values():
            queue, st["queue"] = st["queue"], []
            for op in queue:
                op()

    def cudaFree(self, ptr):  # noqa: N802
        self.calls["cudaFree"] += 1
        self._drain()  # cudaFree synchronizes the device first
        if ptr not in self.device:
            return (FakeCudaErr.cudaErrorInvalidValue,)
        del self.device[ptr]
        return (OK,)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        self.calls["cudaMallocHost"] += 1
        buf = (ctypes.c_uint8 * nbytes)()
        ctypes.memset(buf, 0xAB, nbytes)
        self.host[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def cudaFreeHost(self, ptr):  # noqa: N802
        self.calls["cudaFreeHost"] += 1
        self._drain()
        if ptr not in self.host:
            return (FakeCudaErr.cudaErrorInvalidValue,)
        self._graveyard.append(self.host.pop(ptr))
        return (OK,)

    def pinned_range(self, ptr: int, nbytes: int) -> bool:
        """Whether [ptr, ptr + nbytes) lies inside one live pinned host allocation."""
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in self.host.items())

    def _device_slice(self, ptr: int, nbytes: int):
        for base, buf in self.device.items():
            if base <= ptr < base + len(buf):
                off = ptr - base
                assert off + nbytes <= len(buf), f"fake GPU: {nbytes} bytes at {ptr:#x} overrun {len(buf)} bytes"
                return buf, off
        raise AssertionError(f"fake GPU: illegal address {ptr:#x} (not a live cudaMalloc allocation)")

    def read(self, ptr: int, nbytes: int) -> bytes:
        buf, off = self._device_slice(ptr, nbytes)
        return bytes(buf[off:off + nbytes])

    def write(self, ptr: int, data: bytes) -> None:
        buf, off = self._device_slice(ptr, len(data))
        buf[off:off + len(data)] = data

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        handle = int(stream)
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            pinned = self.pinned_range(src, nbytes)
            self._device_slice(dst, nbytes)  # validate now, as the real call does

            def op():
                self.write(dst, ctypes.string_at(src, nbytes))
        elif kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            pinned = self.pinned_range(dst, nbytes)
            self._device_slice(src, nbytes)

            def op():
                ctypes.memmove(dst, self.read(src, nbytes), nbytes)
        else:
            return (FakeCudaErr.cudaErrorInvalidValue,)
        self.memcpys.append((kind.name, dst, src, nbytes, handle, pinned))
        return self.enqueue(handle, op)

    # --- streams ----------------------------------------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        handle, self._next_stream = self._next_stream, self._next_stream + 0x10
        stream = FakeStream(handle)
        self.streams[handle] = {"flags": flags, "queue": [], "capture": None, "obj": stream}
        return OK, stream

    def cudaStreamDestroy(self, stream):  # noqa: N802
        st = self.streams.pop(int(stream), None)
        if st is None:
            return (FakeCudaErr.cudaErrorInvalidResourceHandle,)
        for op in st["queue"]:  # pending work still completes
            op()
        return (OK,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        self.calls["cudaStreamSynchronize"] += 1
        st = self.streams.get(int(stream))
        if st is None:
            return (FakeCudaErr.cudaErrorInvalidResourceHandle,)
        queue, st["queue"] = st["queue"], []
        for op in queue:
            op()
        return (OK,)

    def enqueue(self, handle: int, op) -> tuple:
        """Queue ``op`` on a stream (recorded instead when the stream is capturing)."""
        st = self.streams.get(handle)
        if st is None:
            return (FakeCudaErr.cudaErrorInvalidResourceHandle,)
        if st["capture"] is not None:
            st["capture"].append(op)
        else:
            st["queue"].append(op)
        return (OK,)

    def is_capturing(self, handle: int) -> bool:
        st = self.streams.get(handle)
        return st is not None and st["capture"] is not None

    def invalidate_capture(self, handle: int) -> None:
        self.streams[handle]["capture_invalid"] = True
        self.last_error = FakeCudaErr.cudaErrorStreamCaptureInvalidated

    # --- capture and graphs -----------------------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.calls["cudaStreamBeginCapture"] += 1
        if self.fail_begin_capture:
            self.last_error = FakeCudaErr.cudaErrorStreamCaptureUnsupported
            return (FakeCudaErr.cudaErrorStreamCaptureUnsupported,)
        st = self.streams[int(stream)]
        st["capture"], st["capture_invalid"] = [], False
        return (OK,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        self.calls["cudaStreamEndCapture"] += 1
        st = self.streams[int(stream)]
        ops, st["capture"] = st["capture"], None
        if ops is None:
            return FakeCudaErr.cudaErrorInvalidValue, None
        if st.get("capture_invalid"):
            return FakeCudaErr.cudaErrorStreamCaptureInvalidated, None
        graph = FakeGraph(ops)
        self.graphs.append(graph)
        return OK, graph

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        self.calls["cudaGraphInstantiate"] += 1
        graph_exec = FakeGraphExec(graph)
        self.execs.append(graph_exec)
        return OK, graph_exec

    def cudaGraphLaunch(self, graph_exec, stream):  # noqa: N802
        self.calls["cudaGraphLaunch"] += 1
        if graph_exec.destroyed:
            return (FakeCudaErr.cudaErrorInvalidResourceHandle,)
        self.launched_on.append(int(stream))
        for op in graph_exec.ops:
            err = self.enqueue(int(stream), op)
            if err[0] != OK:
                return err
        return (OK,)

    def cudaGraphExecDestroy(self, graph_exec):  # noqa: N802
        graph_exec.destroyed = True
        return (OK,)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        graph.destroyed = True
        return (OK,)


class FakeCudaApi(CudaApi):
    """The REAL :class:`runtime.cuda_mem.CudaApi` over :class:`FakeCudart` (``.rt``), with allocation counters."""

    def __init__(self, **fake_options) -> None:
        self.rt = FakeCudart(**fake_options)
        super().__init__(cudart=self.rt)

    def host_view(self, ptr, nbytes):
        # A view of anything but live pinned memory would be a wild pointer on a real machine: fail loudly instead.
        assert self.rt.pinned_range(ptr, nbytes), f"host_view of {nbytes} bytes at {ptr:#x}: not pinned host memory"
        return super().host_view(ptr, nbytes)

    @property
    def device_allocs(self) -> int:
        return self.rt.calls["cudaMalloc"]

    @property
    def host_allocs(self) -> int:
        return self.rt.calls["cudaMallocHost"]

    def live(self) -> int:
        return len(self.rt.device) + len(self.rt.host)


# ======================================================================================================================
# FAKE TensorRT module (glue surface only; no engine math)
# ======================================================================================================================


def fake_model(x: np.ndarray, lengths: np.ndarray, graph: str = "model") -> dict:
    """The toy function FakeExecutionContext computes: NOT the model, just something that depends on every input.

    frame_logits[b, t, c] = sum(x[b, t]) * (c + 1) + lengths[b]; clip_logits[b] = mean of the first lengths[b] frames.
    cnn graph: features[b, t, f] = sum(x[b, t]) + f.
    """
    b, t = x.shape[:2]
    s = x.reshape(b, t, -1).sum(-1, dtype=np.float64)
    if graph == "cnn":
        return {"features": (s[..., None] + np.arange(FEATURE_DIM)).astype(np.float32)}
    lengths = np.asarray(lengths, dtype=np.int64)
    frame = (s[..., None] * (np.arange(C) + 1) + lengths[:, None, None]).astype(np.float32)
    clip = np.stack([frame[i, : lengths[i]].mean(0) for i in range(b)]).astype(np.float32)
    return {"frame_logits": frame, "clip_logits": clip}


class FakeTensorRT:
    """FAKE ``tensorrt`` module: Logger, Runtime, TensorIOMode, DataType, and engines registered by plan bytes."""

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity=2) -> None:
            self.severity = severity

    class ILogger:
        """FAKE trt.ILogger: subclasses call ``ILogger.__init__(self)`` and override ``log(severity, msg)``."""

        def __init__(self) -> None:
            pass

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        INT64 = 8

    class CudaGraphStrategy(enum.Enum):  # TensorRT for RTX only
        DISABLED = 0
        WHOLE_GRAPH_CAPTURE = 1

    def __init__(self, gpu: FakeCudart, *, deserialize_raises: bool = False) -> None:
        self.gpu = gpu
        self.deserialize_log: str | None = None  # an error FakeRuntime logs before returning None
        self.plans: dict = {}  # plan bytes -> engine options
        self.calls: Counter = Counter()
        self.deserialize_raises = deserialize_raises
        self.engines: list = []

    def Runtime(self, logger):  # noqa: N802 (trt.Runtime)
        return FakeRuntime(self, logger)


class FakeRuntime:
    def __init__(self, trt: FakeTensorRT, logger) -> None:
        self.trt, self.logger = trt, logger

    def deserialize_cuda_engine(self, blob: bytes):
        self.trt.calls["deserialize_cuda_engine"] += 1
        options = self.trt.plans.get(bytes(blob))
        if options is None:
            if self.trt.deserialize_raises:
                raise RuntimeError("fake TensorRT: Serialization assertion failed (magic tag mismatch)")
            if self.trt.deserialize_log and hasattr(self.logger, "log"):
                self.logger.log(1, self.trt.deserialize_log)  # severity ERROR, as TensorRT logs before giving up
            return None  # what TensorRT does for a plan it cannot read (after logging an error)
        engine = FakeEngine(self.trt, **options)
        self.trt.engines.append(engine)
        return engine


class FakeEngine:
    """FAKE ICudaEngine of one of the three graphs, with optimization profiles over (batch, time)."""

    def __init__(self, trt: FakeTensorRT, graph: str = "model", profiles=TWO_PROFILES, lengths_dtype: str = "INT32",
                 drop_tensor: str | None = None, dtype_overrides: dict | None = None) -> None:
        self.trt, self.graph, self.profiles = trt, graph, profiles
        dt, mode = trt.DataType, trt.TensorIOMode
        if graph == "model":
            io = [("frames", mode.INPUT, dt.FLOAT), ("lengths", mode.INPUT, dt[lengths_dtype]),
                  ("frame_logits", mode.OUTPUT, dt.FLOAT), ("clip_logits", mode.OUTPUT, dt.FLOAT)]
        elif graph == "cnn":
            io = [("frames", mode.INPUT, dt.FLOAT), ("features", mode.OUTPUT, dt.FLOAT)]
        elif graph == "bilstm":
            io = [("features", mode.INPUT, dt.FLOAT), ("lengths", mode.INPUT, dt[lengths_dtype]),
                  ("frame_logits", mode.OUTPUT, dt.FLOAT), ("clip_logits", mode.OUTPUT, dt.FLOAT)]
        else:
            raise AssertionError(f"fake engine for graph {graph!r} not implemented")
        overrides = dtype_overrides or {}
        self.io = [(n, m, dt[overrides[n]] if n in overrides else d) for n, m, d in io if n != drop_tensor]
        self.contexts: list = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def _tensor(self, name: str):
        for t in self.io:
            if t[0] == name:
                return t
        raise AssertionError(f"fake engine has no tensor {name!r}")

    def get_tensor_mode(self, name: str):
        return self._tensor(name)[1]

    def get_tensor_dtype(self, name: str):
        return self._tensor(name)[2]

    def get_tensor_profile_shape(self, name: str, p: int):
        batch, time = self.profiles[p]
        if name == "frames":
            return [(b, t, 3, H, W) for b, t in zip(batch, time, strict=True)]
        if name == "features" and self.graph == "bilstm":
            return [(b, t, FEATURE_DIM) for b, t in zip(batch, time, strict=True)]
        if name == "lengths":
            return [(b,) for b in batch]
        raise AssertionError(f"fake engine: {name!r} has no profile shape")

    def create_execution_context(self, runtime_config=None):
        ctx = FakeExecutionContext(self)
        ctx.runtime_config = runtime_config
        self.contexts.append(ctx)
        return ctx

    def create_runtime_config(self):  # TensorRT for RTX (and full TensorRT >= 10.11, which the runner does not use)
        return FakeRuntimeConfig(self.trt)


class FakeRuntimeConfig:
    """FAKE TensorRT-RTX IRuntimeConfig: the CUDA graph strategy and the runtime (JIT kernel) cache."""

    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.cuda_graph_strategy = trt.CudaGraphStrategy.DISABLED
        self.cache = None

    def create_runtime_cache(self):
        return FakeRuntimeCache(self.trt)

    def set_runtime_cache(self, cache) -> bool:
        self.cache = cache
        return True


class FakeRuntimeCache:
    """FAKE IRuntimeCache: "kernels" are strings; a blob loads only if written for the same (fake) GPU."""

    def __init__(self, trt: FakeTensorRT) -> None:
        self.tag = b"FAKE-RTX-CACHE:" + trt.gpu.gpu_name + b"\n"
        self.kernels: list = []

    def deserialize(self, blob) -> bool:
        blob = bytes(blob)
        if not blob.startswith(self.tag):
            return False  # another GPU, driver or version: TensorRT-RTX leaves the cache unchanged
        self.kernels = blob[len(self.tag):].decode().split(",") if blob[len(self.tag):] else []
        return True

    def serialize(self) -> bytes:
        return self.tag + ",".join(self.kernels).encode()


class FakeExecutionContext:
    """FAKE IExecutionContext: validates what the runner sets, and enqueues :func:`fake_model` on the given stream.

    Attributes set by tests: ``capture_behaviour`` ("ok", "raise", "false": what execute_async_v3 does while the stream
    is being captured), ``reject_shapes`` (set_input_shape returns False).
    """

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.gpu = engine.trt.gpu
        self.profile = 0
        self.shapes: dict = {}
        self.addresses: dict = {}
        # ("set_profile", p, stream), ("set_input_shape", name, shape), ("get_tensor_shape", name) in call order
        self.log: list = []
        self.executions: list = []  # stream handles of execute_async_v3 calls
        self.capture_behaviour = "ok"
        self.reject_shapes = False
        self.reject_addresses = False  # set_tensor_address returns False (e.g. a misaligned pointer)
        self.runtime_config = None  # TensorRT for RTX: the IRuntimeConfig it was created with

    def set_optimization_profile_async(self, index: int, stream_handle: int) -> bool:
        assert isinstance(stream_handle, int), "TensorRT takes the stream as an int handle"
        self.log.append(("set_profile", index, stream_handle))
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile, self.shapes = index, {}
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        self.log.append(("set_input_shape", name, shape))
        lo, _opt, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        fits = len(shape) == len(lo) and all(a <= d <= c for a, d, c in zip(lo, shape, hi, strict=True))
        if self.reject_shapes or not fits:
            return False  # TensorRT: shape outside the selected profile
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        self.log.append(("get_tensor_shape", name))
        if self.engine.get_tensor_mode(name) == self.engine.trt.TensorIOMode.INPUT:
            return self.shapes.get(name, (-1,))
        x_name = "features" if self.engine.graph == "bilstm" else "frames"
        if x_name not in self.shapes:
            return (-1, -1, C)  # unresolved, as TensorRT reports before the input shapes are set
        b, t = self.shapes[x_name][:2]
        return {"frame_logits": (b, t, C), "clip_logits": (b, C), "features": (b, t, FEATURE_DIM)}[name]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.engine._tensor(name)
        if self.reject_addresses or int(ptr) % 256:
            return False  # TensorRT keeps the previous address
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert isinstance(stream_handle, int), "TensorRT takes the stream as an int handle"
        self.executions.append(stream_handle)
        cache = getattr(self.runtime_config, "cache", None)
        if cache is not None:  # TensorRT-RTX compiles a shape-specialised kernel once per shape
            kernel_name = "x".join(map(str, self.shapes.get("frames", self.shapes.get("features", ()))))
            if kernel_name not in cache.kernels:
                cache.kernels.append(kernel_name)
        names = [t[0] for t in self.engine.io]
        inputs = [t[0] for t in self.engine.io if t[1] == self.engine.trt.TensorIOMode.INPUT]
        if any(n not in self.addresses for n in names) or any(n not in self.shapes for n in inputs):
            return False  # TensorRT: "address or shape not set"
        if self.gpu.is_capturing(stream_handle) and self.capture_behaviour != "ok":
            self.gpu.invalidate_capture(stream_handle)
            if self.capture_behaviour == "raise":
                raise RuntimeError("fake TensorRT: operation not permitted when stream is capturing")
            return False
        shapes, addrs = dict(self.shapes), dict(self.addresses)
        dtypes = {n: np.dtype(_FAKE_NP[self.engine.get_tensor_dtype(n).name]) for n in names}

        def kernel():
            self.gpu.launched_on.append(stream_handle)
            x_name = "features" if self.engine.graph == "bilstm" else "frames"
            x_shape = shapes[x_name]
            x = np.frombuffer(self.gpu.read(addrs[x_name], int(np.prod(x_shape)) * 4), np.float32).reshape(x_shape)
            lengths = None
            if "lengths" in shapes:
                n = shapes["lengths"][0]
                lengths = np.frombuffer(self.gpu.read(addrs["lengths"], n * dtypes["lengths"].itemsize),
                                        dtypes["lengths"])
            for name, value in fake_model(x, lengths, self.engine.graph).items():
                self.gpu.write(addrs[name], value.astype(dtypes[name]).tobytes())

        err = self.gpu.enqueue(stream_handle, kernel)
        return err[0] == OK


_FAKE_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}


# ======================================================================================================================
# helpers
# ======================================================================================================================


RTX_VERSION = (1, 7, 1, 116)


class Fakes:
    def __init__(self, flavour: str = "tensorrt", **cuda_options) -> None:
        self.cuda = FakeCudaApi(**cuda_options)
        self.trt = FakeTensorRT(self.cuda.rt)
        self.tm = TrtModule(trt=self.trt, flavour=flavour,
                            version=RTX_VERSION if flavour == "tensorrt_rtx" else TRT_VERSION)


def make_report(blob: bytes, graph: str = "model", **overrides) -> dict:
    """The fields of export.to_trt's report that the runner reads (plus a few it ignores)."""
    report = {
        "engine": "model.engine",
        "engine_bytes": len(blob),
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": {"graph": graph, "class_names": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3,
                     "frame_size": [H, W], "feature_dim": FEATURE_DIM, "precision": "fp16",
                     "model_config": {"num_classes": C, "frame_size": [H, W]}},
        "precision": "fp16",
        "trt": {"flavour": "tensorrt", "version": ".".join(map(str, TRT_VERSION)), "strongly_typed": True},
        "target": {"kind": "gpu", "name": GPU_NAME.decode(), "compute_capability": "%d.%d" % GPU_CC},
        "profiles": [],
        "io_tensors": [],
    }
    report.update(overrides)
    return report


def write_engine(tmp_path, fakes: Fakes | None, name: str = "model.engine", *, blob: bytes | None = None,
                 report: dict | None = None, **engine_options):
    """Write a fake plan and its report; register the plan with the fake TensorRT so it deserializes."""
    blob = blob if blob is not None else b"FAKE-TRT-PLAN:" + name.encode() + bytes(range(64))
    path = tmp_path / name
    path.write_bytes(blob)
    if fakes is not None:
        fakes.trt.plans[blob] = engine_options
    graph = engine_options.get("graph", "model")
    (tmp_path / (name + ".json")).write_text(json.dumps(report if report is not None else make_report(blob, graph)))
    return path


def load(path, fakes: Fakes, **options):
    return runtime.load(path, trt_module=fakes.tm, cuda_api=fakes.cuda, **options)


def frames(b: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, t, 3, H, W)).astype(np.float32)


def assert_outputs(out: dict, x: np.ndarray, lengths=None, graph: str = "model") -> None:
    b, t = x.shape[:2]
    want = fake_model(x, np.full(b, t) if lengths is None else lengths, graph)
    assert set(out) == set(want)
    for k, v in want.items():
        assert isinstance(out[k], np.ndarray) and out[k].shape == v.shape, (k, out[k].shape, v.shape)
        np.testing.assert_allclose(out[k], v, rtol=1e-6, atol=1e-5, err_msg=k)


@pytest.fixture
def fakes():
    return Fakes()


@pytest.fixture
def engine(tmp_path, fakes):
    return write_engine(tmp_path, fakes)


# ======================================================================================================================
# optimization profiles
# ======================================================================================================================


def test_profiles_read_from_engine_into_input_spec(engine, fakes):
    r = load(engine, fakes)
    assert r.backend_name == "tensorrt" and r.stage == "model"
    assert [(p.batch, p.time) for p in r.input_spec.profiles] == [((1, 8), (1, 128)), ((8, 64), (1, 32))]
    assert r.input_spec.batch_range == (1, 64) and r.input_spec.time_range == (1, 128)
    assert r.metadata.class_names == CLASSES and r.input_spec.frame_size == (H, W)


def test_profile_chosen_by_shape_and_set_on_the_runner_stream(engine, fakes):
    # (B, T) -> profile: the first profile holding the shape wins (8 x 32 fits both).
    cases = [((1, 16), 0), ((8, 128), 0), ((8, 32), 0), ((9, 16), 1), ((64, 32), 1), ((20, 1), 1), ((2, 2), 0)]
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        handle = int(r.stream)
        for (b, t), want in cases:
            x = frames(b, t, seed=b * 1000 + t)
            out = r.infer(x)
            assert ctx.profile == want, (b, t)
            assert_outputs(out, x)
        # set_optimization_profile_async only when the profile changes, always on the runner's own stream.
        assert [e[1:] for e in ctx.log if e[0] == "set_profile"] == [(0, handle), (1, handle), (0, handle)]


@pytest.mark.parametrize("b,t", [(64, 33), (65, 1), (9, 64), (100, 200)])
def test_shape_outside_every_profile_names_ranges_and_the_export_command(engine, fakes, b, t):
    from export.trt_profiles import parse_profile

    r = load(engine, fakes)
    with pytest.raises(RuntimeInputError) as info:
        r.infer(frames(b, t))
    msg = str(info.value)
    assert f"batch {b} and time {t}" in msg
    assert "profile 0: batch 1..8, time 1..128" in msg and "profile 1: batch 8..64, time 1..32" in msg
    # The suggested command must run as written and cover the shape and every shape the engine took before.
    import shlex

    from export.to_trt import get_args_parser

    command = msg.split("`python -m export.to_trt ", 1)[1].split("`", 1)[0]
    args = get_args_parser().parse_args(shlex.split(command))
    assert args.out and len(args.profile) == 1
    prof = parse_profile(args.profile[0])
    assert prof["batch"][0] <= b <= prof["batch"][2] and prof["time"][0] <= t <= prof["time"][2]
    assert prof["batch"][0] <= 1 and prof["batch"][2] >= 64 and prof["time"][0] <= 1 and prof["time"][2] >= 128
    assert not r.is_active and fakes.cuda.device_allocs == 0  # refused before anything ran


def test_shape_rejected_by_the_context_is_an_error_not_garbage(engine, fakes):
    with load(engine, fakes) as r:
        fakes.trt.engines[0].contexts[0].reject_shapes = True
        with pytest.raises(RuntimeError, match="set_input_shape"):
            r.infer(frames(2, 3))


# ======================================================================================================================
# report, version and GPU checks before deserialization
# ======================================================================================================================


@pytest.mark.parametrize("overrides,pattern", [
    ({"trt": {"flavour": "tensorrt", "version": "10.12.0.36"}},
     r"built by tensorrt 10\.12\.0\.36, but tensorrt 10\.13\.0\.35 is installed.*rebuild it on this machine"),
    ({"trt": {"flavour": "tensorrt_rtx", "version": "1.7.1.116"}},
     r"built by tensorrt_rtx 1\.7\.1\.116, but this runtime has tensorrt 10\.13\.0\.35.*only load in the flavour"),
    ({"target": {"kind": "gpu", "name": "NVIDIA A10G", "compute_capability": "8.6"}},
     r"built for NVIDIA A10G \(compute capability 8\.6\), but this GPU is NVIDIA H100 80GB HBM3 \(compute "
     r"capability 9\.0\).*python -m export\.to_trt"),
])
def test_incompatible_engine_refused_before_deserialization(tmp_path, fakes, overrides, pattern):
    blob = b"FAKE-TRT-PLAN:incompatible"
    path = write_engine(tmp_path, fakes, blob=blob, report=make_report(blob, **overrides))
    with pytest.raises(RuntimeInputError, match=pattern):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0


def test_engine_for_the_default_target_is_not_refused_on_compute_capability(tmp_path, fakes):
    blob = b"FAKE-TRT-PLAN:default-target"
    report = make_report(blob, target={"kind": "compute_capability", "compute_capability": "default"})
    r = load(write_engine(tmp_path, fakes, blob=blob, report=report), fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 1 and r.input_spec.batch_range == (1, 64)


def test_report_missing_or_foreign(tmp_path, fakes):
    path = write_engine(tmp_path, fakes)
    report = tmp_path / "model.engine.json"
    report.unlink()
    with pytest.raises(RuntimeInputError, match=r"has no build report at model\.engine\.json.*export\.to_trt"):
        load(path, fakes)
    report.write_text("{not json")
    with pytest.raises(RuntimeInputError, match="not a readable JSON report"):
        load(path, fakes)
    report.write_text(json.dumps({"engine_bytes": 3}))
    with pytest.raises(RuntimeInputError, match="no 'metadata' key"):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0


def test_corrupted_engine_refused_by_size_and_sha256(tmp_path, fakes):
    path = write_engine(tmp_path, fakes)
    good = path.read_bytes()
    path.write_bytes(good[:-5])  # truncated
    with pytest.raises(RuntimeInputError, match=rf"is {len(good) - 5} bytes but its report says {len(good)}"):
        load(path, fakes)
    flipped = bytearray(good)
    flipped[20] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(flipped))
    with pytest.raises(RuntimeInputError, match="does not match the sha256 in its report"):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0


def test_damaged_engine_checked_before_tensorrt_or_cuda_is_touched(tmp_path, fakes, monkeypatch):
    # On a machine without a GPU (CudaApi fails) or TensorRT, a damaged engine is still reported as damaged.
    from runtime import cuda_mem, trt_compat

    touched = []
    monkeypatch.setattr(trt_compat, "import_trt", lambda *a, **k: touched.append("import_trt"))
    monkeypatch.setattr(cuda_mem, "CudaApi", lambda *a, **k: touched.append("CudaApi"))
    path = write_engine(tmp_path, fakes)
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(RuntimeInputError, match="is 6 bytes but its report says"):
        runtime.load(path)
    report = json.loads((tmp_path / "model.engine.json").read_text())
    for key in ("engine_bytes", "engine_sha256"):  # a report that records no digest cannot vouch for any file
        (tmp_path / "model.engine.json").write_text(json.dumps({k: v for k, v in report.items() if k != key}))
        with pytest.raises(RuntimeInputError, match="records no engine size and sha256"):
            runtime.load(path)
    assert touched == [] and fakes.trt.calls["deserialize_cuda_engine"] == 0


@pytest.mark.parametrize("raises", [False, True])
def test_plan_tensorrt_cannot_deserialize_is_a_clear_error(tmp_path, fakes, raises):
    # The report matches the file, but the bytes are no plan the (fake) TensorRT knows: it returns None or raises.
    fakes.trt.deserialize_raises = raises
    blob = b"NOT-A-PLAN" * 10
    path = write_engine(tmp_path, None, blob=blob, report=make_report(blob))
    with pytest.raises(RuntimeInputError, match=r"TensorRT 10\.13\.0\.35 could not deserialize .*model\.engine"):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 1


def test_engine_with_the_wrong_io_tensors_is_refused(tmp_path, fakes):
    path = write_engine(tmp_path, fakes, drop_tensor="lengths")
    with pytest.raises(RuntimeInputError, match=r"model engine must have inputs \['frames', 'lengths'\]"):
        load(path, fakes)


@pytest.mark.parametrize("overrides", [{"frames": "HALF"}, {"clip_logits": "HALF"}, {"lengths": "BOOL"}])
def test_engine_with_io_dtypes_the_runtime_does_not_feed_is_refused(tmp_path, fakes, overrides):
    # A HALF input would be handed float32 bytes; the runtime's contract is export.to_onnx's float32 I/O.
    path = write_engine(tmp_path, fakes, dtype_overrides=overrides)
    with pytest.raises(RuntimeInputError, match=r"engine I/O dtypes .* are not what the runtime feeds"):
        load(path, fakes)


def test_tensorrt_reason_for_a_foreign_gpu_reaches_the_error(tmp_path, fakes):
    # TensorRT logs why it cannot deserialize, then returns None; the collecting logger (an ILogger subclass, as
    # with real TensorRT) carries that reason into the message.
    fakes.trt.deserialize_log = "Target GPU does not support this compute capability (SM 9.0)"
    blob = b"RTX-PLAN" * 10
    path = write_engine(tmp_path, None, blob=blob, report=make_report(blob))
    with pytest.raises(RuntimeInputError, match=r"does not support this GPU: .*compute capability.*not on H100/H200"):
        load(path, fakes)


def test_refused_tensor_address_is_an_error_not_a_stale_pointer(engine, fakes):
    with load(engine, fakes) as r:
        r.infer(frames(1, 2))  # addresses of this call are now set in the context
        fakes.trt.engines[0].contexts[0].reject_addresses = True
        with pytest.raises(RuntimeError, match="refused the address of 'frames'.*256-byte alignment"):
            r.infer(frames(1, 3))


def test_auto_backend_imports_the_flavour_that_built_the_engine(tmp_path, fakes, monkeypatch):
    from runtime import trt_compat

    asked = []

    def fake_import(backend="auto"):  # records the request; no flavour installed here
        asked.append(backend)
        raise trt_compat.TrtNotAvailableError(f"{backend} not installed (test)")

    monkeypatch.setattr(trt_compat, "import_trt", fake_import)
    blob = b"PLAN" * 10
    for flavour, backend, want in (("tensorrt_rtx", "auto", "tensorrt_rtx"), ("tensorrt", "auto", "tensorrt"),
                                   ("tensorrt_rtx", "tensorrt", "tensorrt")):
        report = make_report(blob, trt={"flavour": flavour, "version": "1.7.1"})
        path = write_engine(tmp_path, None, blob=blob, report=report)
        with pytest.raises(trt_compat.TrtNotAvailableError):
            runtime.load(path, trt_backend=backend, cuda_api=fakes.cuda)
        assert asked[-1] == want


def test_device_must_be_cuda(engine, fakes):
    with pytest.raises(RuntimeInputError, match="device must be 'cuda', 'cuda:N' or N, got 'cpu'"):
        load(engine, fakes, device="cpu")
    load(engine, fakes, device="cuda:1")
    assert fakes.cuda.rt.device_set == 1
    for bad in (True, -1):  # True is not device 1, and no device is negative
        with pytest.raises(RuntimeInputError, match="device must be"):
            load(engine, fakes, device=bad)
    with pytest.raises(RuntimeInputError, match="cuda_graphs must be True or False"):
        load(engine, fakes, cuda_graphs="yes")


# ======================================================================================================================
# buffers, streams, addresses, outputs
# ======================================================================================================================


def test_buffers_reused_for_same_or_smaller_shapes_and_grown_for_larger(engine, fakes):
    cuda = fakes.cuda
    with load(engine, fakes) as r:
        assert cuda.device_allocs == 0  # nothing allocated before the first shape is known
        x = frames(4, 16)
        assert_outputs(r.infer(x), x)
        n_io = 4  # frames, lengths, frame_logits, clip_logits
        assert (cuda.device_allocs, cuda.host_allocs) == (n_io, n_io)
        ptrs = {n: b.ptr for n, b in r._device_bufs.items()}
        for b, t, seed in [(4, 16, 1), (2, 8, 2), (1, 1, 3), (4, 16, 4)]:
            x = frames(b, t, seed)
            assert_outputs(r.infer(x), x)  # a smaller result in a bigger buffer: sliced back exactly
        assert (cuda.device_allocs, cuda.host_allocs) == (n_io, n_io)
        assert {n: b.ptr for n, b in r._device_bufs.items()} == ptrs
        # B=64, T=32 outgrows frames, frame_logits and clip_logits; lengths (64 int32 = 256 bytes) still fits the
        # first 256-byte allocation.
        x = frames(64, 32, 5)
        assert_outputs(r.infer(x), x)
        grown = {n for n in ptrs if r._device_bufs[n].ptr != ptrs[n]}
        assert grown == {"frames", "frame_logits", "clip_logits"}
        assert cuda.device_allocs == n_io + 3 and cuda.host_allocs == n_io + 3
        assert cuda.rt.calls["cudaFree"] == 3 and cuda.rt.calls["cudaFreeHost"] == 3  # the old ones released
        for b, t, seed in [(3, 5, 6), (64, 32, 7), (8, 128, 8)]:  # all fit now
            x = frames(b, t, seed)
            assert_outputs(r.infer(x), x)
        assert cuda.device_allocs == n_io + 3 and fakes.cuda.live() == 2 * n_io


def test_numpy_inputs_go_through_pinned_host_buffers_on_the_runner_stream(engine, fakes):
    with load(engine, fakes) as r:
        handle = int(r.stream)
        x = frames(2, 3)
        out = r.infer(x)
        copies = fakes.cuda.rt.memcpys
        assert [c[0] for c in copies] == ["cudaMemcpyHostToDevice"] * 2 + ["cudaMemcpyDeviceToHost"] * 2
        assert all(c[5] for c in copies), "a host side of a copy is not pinned (cudaMallocHost) memory"
        assert all(c[4] == handle for c in copies)
        htod_srcs = {c[2] for c in copies if c[0] == "cudaMemcpyHostToDevice"}
        assert x.ctypes.data not in htod_srcs  # staged, not copied from the user's pageable array
        assert_outputs(out, x)
        # Outputs are copies: the next call must not change what the first one returned.
        before = {k: v.copy() for k, v in out.items()}
        r.infer(frames(2, 3, seed=9))
        for k in out:
            np.testing.assert_array_equal(out[k], before[k])


def test_output_shapes_read_from_context_after_input_shapes(engine, fakes):
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        x = frames(3, 7)
        out = r.infer(x, lengths=np.array([7, 2, 1]))
        assert out["frame_logits"].shape == (3, 7, C) and out["clip_logits"].shape == (3, C)
        log = [e for e in ctx.log if e[0] != "set_profile"]
        first_get = next(i for i, e in enumerate(log) if e[0] == "get_tensor_shape")
        assert {e[1]: e[2] for e in log[:first_get]} == {"frames": (3, 7, 3, H, W), "lengths": (3,)}
        assert {e[1] for e in log[first_get:]} == {"frame_logits", "clip_logits"}
        assert_outputs(out, x, [7, 2, 1])


@pytest.mark.parametrize("lengths_dtype", ["INT32", "INT64"])
def test_lengths_fed_in_the_engine_dtype_and_filled_with_t(tmp_path, fakes, lengths_dtype):
    path = write_engine(tmp_path, fakes, lengths_dtype=lengths_dtype)
    with load(path, fakes) as r:
        x = frames(3, 6)
        out = r.infer(x)  # lengths None -> every clip has T = 6 frames
        assert_outputs(out, x, [6, 6, 6])
        dev = r._device_bufs["lengths"].ptr
        itemsize = np.dtype(_FAKE_NP[lengths_dtype]).itemsize
        got = np.frombuffer(fakes.cuda.rt.read(dev, 3 * itemsize), _FAKE_NP[lengths_dtype])
        np.testing.assert_array_equal(got, [6, 6, 6])
        out = r.infer(x, lengths=[6, 3, 1])  # a list, any integer dtype: fed as the engine's dtype
        assert_outputs(out, x, [6, 3, 1])
        np.testing.assert_array_equal(np.frombuffer(fakes.cuda.rt.read(dev, 3 * itemsize), _FAKE_NP[lengths_dtype]),
                                      [6, 3, 1])
        with pytest.raises(RuntimeInputError, match="lengths must lie in 1..T=6"):
            r.infer(x, lengths=[7, 1, 1])


def test_addresses_set_for_every_tensor_and_execute_on_the_non_default_stream(engine, fakes):
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        r.infer(frames(2, 4))
        assert ctx.addresses == {n: b.ptr for n, b in r._device_bufs.items()}
        assert set(ctx.addresses) == {"frames", "lengths", "frame_logits", "clip_logits"}
        assert all(p in fakes.cuda.rt.device for p in ctx.addresses.values())
        stream_info = fakes.cuda.rt.streams[int(r.stream)]
        assert stream_info["flags"] == FakeCudart.cudaStreamNonBlocking
        # The handle TensorRT gets is the stream itself (int(cudaStream_t)), not getPtr() (the address OF it), and
        # not the legacy default stream 0.
        assert ctx.executions == [int(r.stream)] and int(r.stream) != 0
        assert fakes.cuda.rt.launched_on == [int(r.stream)]


def test_execute_failure_is_reported(engine, fakes):
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        ctx.set_tensor_address = lambda name, ptr: True  # addresses never reach the fake: enqueue returns False
        with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
            r.infer(frames(1, 2))


def test_torch_cpu_tensors_in_torch_tensors_out(engine, fakes):
    torch = pytest.importorskip("torch")
    with load(engine, fakes) as r:
        x = frames(2, 5)
        out = r.infer(torch.from_numpy(x), lengths=torch.tensor([5, 2]))
        assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in out.values())
        assert_outputs({k: v.numpy() for k, v in out.items()}, x, [5, 2])


def test_cnn_engine_has_no_lengths_input(tmp_path, fakes):
    path = write_engine(tmp_path, fakes, "cnn.engine", graph="cnn", profiles=[((1, 4, 16), (1, 8, 32))])
    with load(path, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        x = frames(2, 5)
        out = r.infer(x)
        assert_outputs(out, x, graph="cnn")
        assert set(ctx.addresses) == {"frames", "features"}
        assert not any(e[0] == "set_input_shape" and e[1] == "lengths" for e in ctx.log)
        with pytest.raises(RuntimeInputError, match="cnn stage takes no lengths"):
            r.infer(x, lengths=[5, 5])


def test_bilstm_engine_takes_features_and_lengths(tmp_path, fakes):
    path = write_engine(tmp_path, fakes, "bilstm.engine", graph="bilstm", profiles=[((1, 2, 4), (1, 8, 16))])
    with load(path, fakes) as r:
        assert r.input_spec.input_name == "features" and r.input_spec.item_shape == (FEATURE_DIM,)
        ctx = fakes.trt.engines[0].contexts[0]
        x = np.random.default_rng(0).standard_normal((3, 7, FEATURE_DIM)).astype(np.float32)
        assert_outputs(r.infer(x, lengths=[7, 4, 1]), x, [7, 4, 1])
        assert set(ctx.addresses) == {"features", "lengths", "frame_logits", "clip_logits"}
        with pytest.raises(RuntimeInputError, match="--out bilstm.engine --profile batch=1:5:5,time=1:7:16"):
            r.infer(np.zeros((5, 7, FEATURE_DIM), np.float32))


# ======================================================================================================================
# CUDA graphs
# ======================================================================================================================


def test_cuda_graph_captured_once_per_shape_and_replayed(engine, fakes):
    rt = fakes.cuda.rt
    with load(engine, fakes, cuda_graphs=True) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        for seed in range(3):  # call 1: plain run + capture; calls 2 and 3: replay with new data
            x = frames(2, 4, seed)
            assert_outputs(r.infer(x, lengths=[4, seed + 1]), x, [4, seed + 1])
        assert rt.calls["cudaStreamBeginCapture"] == 1 and rt.calls["cudaGraphLaunch"] == 2
        assert len(ctx.executions) == 2  # one plain run, one under capture; replays do not call TensorRT
        x = frames(1, 3, 7)  # another (smaller, so no buffer moves) shape: its own graph
        assert_outputs(r.infer(x), x)
        assert rt.calls["cudaStreamBeginCapture"] == 2 and len(r._graphs) == 2
        x = frames(2, 4, 8)
        assert_outputs(r.infer(x), x)
        assert rt.calls["cudaGraphLaunch"] == 3
    assert all(g.destroyed for g in rt.graphs) and all(e.destroyed for e in rt.execs)


def test_cuda_graphs_dropped_when_buffers_move(engine, fakes):
    rt = fakes.cuda.rt
    with load(engine, fakes, cuda_graphs=True) as r:
        small, big = frames(1, 2), frames(8, 64, 1)
        r.infer(small)
        first = rt.execs[0]
        assert_outputs(r.infer(small), small)  # replayed
        assert_outputs(r.infer(big), big)  # buffers grow: graphs holding the old addresses must go
        assert first.destroyed
        small = frames(1, 2, 2)
        assert_outputs(r.infer(small), small)  # re-captured with the new addresses
        assert rt.calls["cudaStreamBeginCapture"] == 3


@pytest.mark.parametrize("failure", ["begin_capture_error", "execute_raises", "execute_returns_false"])
def test_cuda_graph_capture_failure_falls_back_to_plain_enqueue(tmp_path, failure):
    fakes = Fakes(fail_begin_capture=failure == "begin_capture_error")
    path = write_engine(tmp_path, fakes)
    rt = fakes.cuda.rt
    with load(path, fakes, cuda_graphs=True) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        ctx.capture_behaviour = {"execute_raises": "raise", "execute_returns_false": "false"}.get(failure, "ok")
        for seed in range(3):
            x = frames(3, 5, seed)
            assert_outputs(r.infer(x), x)
        assert rt.calls["cudaGraphLaunch"] == 0 and rt.graphs == []
        assert r._graphs == {(0, (3, 5, 3, H, W)): None}  # remembered: no second capture attempt
        assert rt.calls["cudaStreamBeginCapture"] == 1
        assert rt.calls["cudaGetLastError"] >= 1  # the sticky capture error is cleared
        assert not rt.is_capturing(int(r.stream))  # the stream is not left capturing
        assert rt.launched_on == [int(r.stream)] * 3  # every call really ran, on the runner's stream


# ======================================================================================================================
# TensorRT for RTX: built-in CUDA graphs and the runtime (JIT kernel) cache
# ======================================================================================================================


def rtx_engine(tmp_path, fakes, name: str = "model.engine"):
    blob = b"FAKE-RTX-PLAN:" + name.encode() + bytes(range(32))
    report = make_report(blob, trt={"flavour": "tensorrt_rtx", "version": ".".join(map(str, RTX_VERSION)),
                                    "strongly_typed": True},
                         target={"kind": "gpu", "name": "current", "compute_capability": "current"})
    return write_engine(tmp_path, fakes, name, blob=blob, report=report)


def test_rtx_cuda_graphs_use_its_builtin_capture_not_a_stream_capture(tmp_path):
    fakes = Fakes("tensorrt_rtx")
    rt = fakes.cuda.rt
    with load(rtx_engine(tmp_path, fakes), fakes, cuda_graphs=True) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        assert ctx.runtime_config.cuda_graph_strategy == fakes.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        for seed in range(3):
            x = frames(2, 4, seed)
            assert_outputs(r.infer(x), x)
        # A stream capture around a JIT-compiling enqueue would be invalid: TensorRT-RTX is called every time.
        assert rt.calls["cudaStreamBeginCapture"] == 0 and len(ctx.executions) == 3 and r._graphs == {}
    fakes = Fakes("tensorrt_rtx")
    with load(rtx_engine(tmp_path, fakes, "plain.engine"), fakes) as r:
        r.infer(frames(1, 2))
        assert fakes.trt.engines[0].contexts[0].runtime_config.cuda_graph_strategy.name == "DISABLED"


def test_rtx_runtime_cache_is_saved_atomically_and_reloaded(tmp_path):
    fakes = Fakes("tensorrt_rtx")
    engine_path = rtx_engine(tmp_path, fakes)
    cache_path = tmp_path / "caches" / "model.engine.rtcache"
    with load(engine_path, fakes, runtime_cache=cache_path) as r:
        r.infer(frames(1, 2))
        r.infer(frames(2, 3))
        assert not cache_path.exists()  # written at deactivation (or save_runtime_cache), not per call
    assert cache_path.read_bytes().endswith(b"1x2x3x4x4,2x3x3x4x4")
    assert list(cache_path.parent.iterdir()) == [cache_path]  # no temporary file left behind

    with load(engine_path, fakes, runtime_cache=cache_path) as r:
        cache = fakes.trt.engines[-1].contexts[-1].runtime_config.cache
        assert cache.kernels == ["1x2x3x4x4", "2x3x3x4x4"]  # loaded at activation: nothing to recompile
        r.infer(frames(1, 5))
        assert r.save_runtime_cache() == cache_path
        assert cache_path.read_bytes().endswith(b",1x5x3x4x4")


def test_rtx_runtime_cache_from_another_gpu_is_replaced_with_a_warning(tmp_path, caplog):
    fakes = Fakes("tensorrt_rtx")
    cache_path = tmp_path / "model.engine.rtcache"
    cache_path.write_bytes(b"FAKE-RTX-CACHE:NVIDIA GeForce RTX 4090\n9x9x3x4x4")
    with caplog.at_level("WARNING", logger="runtime.backends.tensorrt"):
        with load(rtx_engine(tmp_path, fakes), fakes, runtime_cache=cache_path) as r:
            assert fakes.trt.engines[0].contexts[0].runtime_config.cache.kernels == []
            r.infer(frames(1, 2))
    assert "written for another GPU" in caplog.text
    assert cache_path.read_bytes() == b"FAKE-RTX-CACHE:" + GPU_NAME + b"\n1x2x3x4x4"


def test_runtime_cache_is_refused_for_full_tensorrt_and_for_a_directory(tmp_path, engine, fakes):
    with pytest.raises(RuntimeInputError, match="runtime_cache is a TensorRT for RTX option"):
        load(engine, fakes, runtime_cache=tmp_path / "x.rtcache")
    rtx = Fakes("tensorrt_rtx")
    (tmp_path / "rtx").mkdir()
    with pytest.raises(RuntimeInputError, match="is a directory"):
        load(rtx_engine(tmp_path / "rtx", rtx), rtx, runtime_cache=tmp_path)


def test_fake_rtx_surface_exists_in_the_real_tensorrt_rtx():
    """The names the runner calls on TensorRT for RTX (faked above) exist in the real module."""
    trt = pytest.importorskip("tensorrt_rtx")
    assert hasattr(trt.ICudaEngine, "create_runtime_config")
    assert "runtime_config" in trt.ICudaEngine.create_execution_context.__doc__
    for name in ("cuda_graph_strategy", "create_runtime_cache", "set_runtime_cache"):
        assert hasattr(trt.IRuntimeConfig, name), name
    assert isinstance(trt.IRuntimeConfig.cuda_graph_strategy, property)
    assert trt.IRuntimeConfig.cuda_graph_strategy.fset is not None
    assert {"serialize", "deserialize"} <= set(dir(trt.IRuntimeCache))
    assert set(trt.CudaGraphStrategy.__members__) >= {"DISABLED", "WHOLE_GRAPH_CAPTURE"}


# ======================================================================================================================
# deactivate, DeviceBuffer, CudaApi
# ======================================================================================================================


def test_deactivate_frees_everything_and_reactivation_works(engine, fakes):
    rt = fakes.cuda.rt
    r = load(engine, fakes, cuda_graphs=True)
    x = frames(2, 3)
    r.infer(x)  # activates on first use
    r.infer(frames(8, 50))
    assert fakes.cuda.live() == 8 and len(rt.streams) == 1
    r.deactivate()
    assert fakes.cuda.live() == 0, "device or pinned host memory leaked"
    assert rt.calls["cudaMalloc"] == rt.calls["cudaFree"] and rt.calls["cudaMallocHost"] == rt.calls["cudaFreeHost"]
    assert rt.streams == {} and r.stream is None and r.context is None
    assert all(g.destroyed for g in rt.graphs)
    r.deactivate()  # a second deactivate is a no-op
    assert_outputs(r.infer(x), x)  # reactivates: new context, stream and buffers
    assert len(fakes.trt.engines[0].contexts) == 2
    r.deactivate()
    assert fakes.cuda.live() == 0


def test_device_buffer_grows_by_at_least_half_its_capacity():
    cuda = FakeCudaApi()
    buf = DeviceBuffer(cuda)
    assert buf.ensure(1000) and buf.nbytes >= 1000 and buf.nbytes % 256 == 0
    first = buf.nbytes
    assert not buf.ensure(first) and not buf.ensure(10)
    assert buf.ensure(first + 1)
    assert buf.nbytes >= 1.5 * first  # slowly growing shapes must not reallocate on every call
    assert buf.reallocations == 2 and cuda.live() == 1
    buf.free()
    assert cuda.live() == 0 and buf.ptr == 0


def test_cuda_api_turns_errors_into_cuda_error_naming_the_call():
    cuda = FakeCudaApi(fail_malloc=True)
    with pytest.raises(CudaError, match=r"cudaMalloc\(4096\) failed: fake CUDA error cudaErrorMemoryAllocation"):
        cuda.malloc(4096)
    with pytest.raises(CudaError, match="cudaFree failed"):
        cuda.free(0xDEAD)
    stream = cuda.stream_create()
    assert cuda.stream_handle(stream) == int(stream) != stream.getPtr()
    assert cuda.device_info(0) == {"name": GPU_NAME.decode(), "compute_capability": "9.0"}


def test_stream_handle_of_a_real_cuda_python_stream_object():
    # The real cudaStream_t class (constructible without a GPU): the handle is int(stream), not getPtr().
    cudart = pytest.importorskip("cuda.bindings.runtime")
    stream = cudart.cudaStream_t(0x1234)
    assert CudaApi(cudart).stream_handle(stream) == 0x1234 != stream.getPtr()
