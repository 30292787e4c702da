"""LABELLED FAKES of TensorRT and CUDA, for tests of the glue around them (and nothing else).

No TensorRT can execute an engine on the CPU-only machines the tests run on (TensorRT-RTX builds engines without a
GPU but cannot run them; full TensorRT does not install without one). The tests therefore drive the real
:class:`runtime.backends.tensorrt.TrtRunner`, the real :class:`runtime.cuda_mem.CudaApi` and the real
``export.trt_build`` / ``runtime.trt_compat`` glue through these stand-ins for the libraries underneath:

* ``FakeTensorRT`` (with ``FakeRuntime``, ``FakeEngine``, ``FakeExecutionContext``, ``FakeRuntimeConfig``,
  ``FakeRuntimeCache``): a fake ``tensorrt`` module. It fakes only the glue surface (I/O tensor names, modes and
  dtypes, optimization profiles, ``set_input_shape`` / ``get_tensor_shape``, tensor addresses, ``execute_async_v3``
  on a stream). There is NO engine math: "inference" is a fixed toy function of the inputs (:func:`fake_model`) so
  the tests can see that data went in and came back through the right buffers, shapes, dtypes and streams.
* ``FakeCudart`` (a fake cuda-python ``cudart`` module: fake device memory, real pinned host memory, streams whose
  work runs only at synchronize, stream capture and CUDA graphs) under the real ``CudaApi``; ``FakeCudaApi`` is that
  pair, with counters for allocations and frees.
* :func:`make_fake_tensorrt`: a module with just the enums and network flags of TensorRT 10.x or 11.x, for the
  version glue.

Each fake TensorRT class names the real class it stands in for (``REAL``). tests/runtime/test_trt_api_names.py
collects every TensorRT name the runtime's TensorRT backend and the seam use and checks them against the real
``tensorrt_lean_bindings`` (TensorRT 11's runtime API) and ``tensorrt_rtx``; the fakes may fake only names it finds
there. The real path (a real engine, real cuda-python, compared with eager PyTorch) is covered by the GPU-marked
tests in tests/runtime/test_runtime_gpu.py.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import types
from collections import Counter

import numpy as np

import runtime
from runtime.cuda_mem import CudaApi
from runtime.trt_compat import TrtModule

H, W = 4, 4
CLASSES = ["a", "b", "c"]
C = len(CLASSES)
FEATURE_DIM = 8
TRT_VERSION = (10, 13, 0, 35)
GPU_NAME, GPU_CC = b"NVIDIA H100 80GB HBM3", (9, 0)
# The profiles of the fake engine (the same two as tests/export/test_to_triton_trt.py): (batch (min, opt, max), time (min, opt, max)).
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
                 fail_malloc: bool = False, devices: int = 1) -> None:
        self.cc, self.gpu_name, self.devices = cc, name, devices
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

    def cudaGetDeviceCount(self):  # noqa: N802
        self.calls["cudaGetDeviceCount"] += 1
        return OK, self.devices

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

    REAL = ""  # the module itself (each nested class stands in for the real class of its name)

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
        UINT8 = 5
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
        self.runtimes: list = []

    def Runtime(self, logger):  # noqa: N802 (trt.Runtime)
        self.calls["Runtime"] += 1
        self.runtimes.append(FakeRuntime(self, logger))
        return self.runtimes[-1]


class FakeRuntime:
    REAL = "Runtime"
    engine_host_code_allowed = False  # the runner sets it for a plan that embeds a lean runtime

    def __init__(self, trt: FakeTensorRT, logger) -> None:
        self.trt, self.logger = trt, logger

    def deserialize_cuda_engine(self, blob: bytes):
        self.trt.calls["deserialize_cuda_engine"] += 1
        options = self.trt.plans.get(bytes(blob))
        if options is not None and options.get("host_code") and not self.engine_host_code_allowed:
            if hasattr(self.logger, "log"):  # TensorRT refuses a plan with a lean runtime inside unless allowed
                self.logger.log(1, "fake TensorRT: engine contains host code, but engine_host_code_allowed is false")
            return None
        if options is None:
            if self.trt.deserialize_raises:
                raise RuntimeError("fake TensorRT: Serialization assertion failed (magic tag mismatch)")
            if self.trt.deserialize_log and hasattr(self.logger, "log"):
                self.logger.log(1, self.trt.deserialize_log)  # severity ERROR, as TensorRT logs before giving up
            return None  # what TensorRT does for a plan it cannot read (after logging an error)
        engine = FakeEngine(self.trt, **{k: v for k, v in options.items() if k != "host_code"})
        self.trt.engines.append(engine)
        return engine


class FakeEngine:
    """FAKE ICudaEngine of one of the three graphs, with optimization profiles over (batch, time)."""

    REAL = "ICudaEngine"

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

    REAL = "IRuntimeConfig"

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

    REAL = "IRuntimeCache"

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

    REAL = "IExecutionContext"

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
LEAN_VERSION = (11, 4, 0, 106)


class Fakes:
    def __init__(self, flavour: str = "tensorrt", version: tuple | None = None, **cuda_options) -> None:
        self.cuda = FakeCudaApi(**cuda_options)
        self.trt = FakeTensorRT(self.cuda.rt)
        default = {"tensorrt_rtx": RTX_VERSION, "tensorrt_lean_bindings": LEAN_VERSION}.get(flavour, TRT_VERSION)
        self.tm = TrtModule(trt=self.trt, flavour=flavour, version=version or default)


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


def lean_engine(folder, version: str):
    """A report of a version-compatible plan of full TensorRT ``version`` beside stand-in plan bytes, for the real
    lean runtime on a machine without a GPU (nothing can build or run a real plan there; the runner stops at the
    GPU check, before it reads the bytes)."""
    blob = b"stand-in plan bytes: never deserialized without a GPU" * 4
    return write_engine(folder, None, blob=blob, report=make_report(
        blob, trt={"flavour": "tensorrt", "version": version, "strongly_typed": True, "version_compatible": True,
                   "exclude_lean_runtime": False}))


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


def make_fake_tensorrt(version: str, *, strongly_typed_flag: bool = True, fp16_flag: bool = True):
    """A FakeTensorRT module: just the enums, network flag handling and builder config flags the build glue touches.

    Major version 11 follows the real 11.0: EXPLICIT_BATCH removed, STRONGLY_TYPED kept at 0 (deprecated, ignored:
    every network is strongly typed), plus the plugin flags. 10.x: EXPLICIT_BATCH 0 (deprecated) and STRONGLY_TYPED 1.
    """
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    v11 = int(version.split(".")[0]) >= 11
    if v11:
        members = {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2}
    else:
        members = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    if not strongly_typed_flag:
        members.pop("STRONGLY_TYPED")
        members = members or {"EXPLICIT_BATCH": 0}
    fake.NetworkDefinitionCreationFlag = enum.IntEnum("FakeNetworkDefinitionCreationFlag", members)
    flags = {"TF32": 1, "VERSION_COMPATIBLE": 2, "EXCLUDE_LEAN_RUNTIME": 3}
    fake.BuilderFlag = enum.IntEnum("FakeBuilderFlag", {"FP16": 0, **flags} if fp16_flag else flags)

    class FakeNetwork:
        def __init__(self, flags):
            self.flags = flags

        def get_flag(self, flag):
            if v11 and int(flag) == members.get("STRONGLY_TYPED"):
                return True  # 11.x: strongly typed whatever the flags
            return bool(self.flags & (1 << int(flag)))

    fake.ProfilingVerbosity = enum.IntEnum("FakeProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "DETAILED": 1})

    class FakeBuilderConfig:
        def __init__(self):
            self.flags_set: list = []  # in call order: TensorRT takes EXCLUDE_LEAN_RUNTIME only after VERSION_COMPATIBLE
            self.profiling_verbosity = fake.ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_flag(self, flag):
            self.flags_set.append(flag)

    class FakeBuilder:
        def create_network(self, flags):
            return FakeNetwork(flags)

        def create_builder_config(self):
            return FakeBuilderConfig()

    fake.Builder = FakeBuilder
    return fake


# --- runtime half: runtime.trt_compat -----------------------------------------------------------------------------


# ======================================================================================================================
# FAKE triton_python_backend_utils (the module Triton's python backend stub provides inside the server only)
# ======================================================================================================================
# For the glue of runtime.triton.python_model in-process: requests in, responses and error codes out. The models'
# math is real (ONNX Runtime on the tiny model's export); the real server runs them in the real-server tests.


class FakeTritonError(Exception):
    """Stands in for ``pb_utils.TritonError(message, code)``."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self._msg, self._code = msg, code

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code


class FakePbTensor:
    """Stands in for ``pb_utils.Tensor(name, numpy array)``."""

    def __init__(self, name: str, array) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self):
        return self._array


class FakeInferenceRequest:
    """A request as the backend hands it to ``execute``: named input tensors (batch dimension included)."""

    def __init__(self, **inputs) -> None:
        self.inputs = {k: FakePbTensor(k, v) for k, v in inputs.items()}


class FakeInferenceResponse:
    """Stands in for ``pb_utils.InferenceResponse(output_tensors=[...], error=None)``."""

    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error

    def has_error(self) -> bool:
        return self.error is not None


def make_fake_pb_utils() -> types.ModuleType:
    """A fake ``triton_python_backend_utils`` module (install it in ``sys.modules`` with monkeypatch)."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError = FakeTritonError
    fake.Tensor = FakePbTensor
    fake.InferenceResponse = FakeInferenceResponse
    fake.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    return fake
