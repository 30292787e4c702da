"""TensorRT backend (full ``tensorrt`` 10.x/11.x, ``tensorrt_rtx`` or the lean runtime ``tensorrt_lean_bindings``,
through :mod:`runtime.trt_compat`).

Before the engine is deserialized, its JSON report (``ENGINE + ".json"``, written by ``python -m export.to_trt``) is
checked against this machine by :mod:`.engine_report`: the engine file's size and sha256, a TensorRT flavour and
version that can load it (the lean runtime loads only version-compatible plans of full TensorRT), then, through
cuda-python, that there is a CUDA device at all (before TensorRT starts: without a GPU it logs CUDA errors and may
crash), and its compute capability. A mismatch is a :class:`~runtime.errors.RuntimeInputError` that says what to
rebuild, instead of TensorRT's opaque deserialization failure; no GPU is one
:class:`~runtime.cuda_mem.NoCudaDeviceError` line.

Execution: device memory, pinned host memory and a non-blocking stream through cuda-python
(:mod:`runtime.cuda_mem`, no PyTorch needed); buffers are reused and grown on demand; the optimization profile is
chosen by shape (``set_optimization_profile_async``), output shapes are read from the context after
``set_input_shape``, addresses set with ``set_tensor_address``, and ``execute_async_v3`` enqueues. With
``cuda_graphs=True`` each (profile, shape) is captured once into a CUDA graph and replayed; when capture fails (an
engine TensorRT cannot capture, e.g. some loop layers) that shape falls back to a plain enqueue.

TensorRT for RTX compiles shape-specialised kernels just in time, so a stream capture around its enqueue is only
valid for engines built with ``kREQUIRE_USER_ALLOCATION``; there ``cuda_graphs=True`` turns on its own CUDA graphs
instead (``IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE``: captured per shape once that shape's kernels
are compiled), and ``runtime_cache=PATH`` keeps the JIT-compiled kernels in a file across runs (loaded when the
runner activates if it was written for this GPU, driver and TensorRT-RTX version; saved atomically when it
deactivates, and by :meth:`TrtRunner.save_runtime_cache`).

torch CUDA tensors are read in place (``data_ptr``, no copy; a view not on TensorRT's 256-byte alignment is copied
first) and the outputs are written into new torch CUDA tensors. The engine runs on the torch current stream, or on a
private stream that waits for it when the current one is the legacy default stream (TensorRT syncs the device around
work on stream 0); the call waits for the engine before it returns, since one execution context must not run on two
streams at once. Graphs are used on the numpy path only, whose inputs live in the runner's own buffers.

Threading: one execution context per runner, so calls are serialised by the runner's lock. For parallel
inference make one runner per thread (each gets its own context, stream and buffers; note that contexts used at the
same time should use different optimization profiles on older TensorRT).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..base import BaseRunner
from ..errors import RuntimeInputError
from ..inputs import Feed, check_device, check_flag
from ..spec import InputSpec, ModelMetadata, Profile
from .engine_report import (
    check_engine_file,
    check_engine_gpu,
    check_engine_runtime,
    plan_holds_host_code,
    read_report,
    report_path_for,
    runtime_flavours,
)

logger = logging.getLogger(__name__)


class TrtRunner(BaseRunner):
    """Runs a serialized TensorRT engine built by ``python -m export.to_trt``.

    Args:
        path (str | PathLike): ``.engine``/``.plan`` with its report at ``path + ".json"``.
        device (str | int | None): "cuda", "cuda:N" or N; None means GPU 0. Defaults to None.
        cuda_graphs (bool): capture one CUDA graph per (profile, shape) on the numpy path, falling back to plain
            enqueue when capture fails; on TensorRT for RTX, its built-in CUDA graphs (every path). Defaults to False.
        runtime_cache (str | PathLike | None): TensorRT for RTX only: a file for its JIT-compiled kernels, read at
            activation (ignored with a warning when written elsewhere) and written at deactivation. Defaults to None.
        trt_backend (str): "auto" (the first importable flavour that can load this engine:
            :func:`.engine_report.runtime_flavours`), "tensorrt", "tensorrt_rtx" or "tensorrt_lean_bindings" (see
            :func:`runtime.trt_compat.import_trt`). Defaults to "auto".
        check_finite (bool): refuse NaN/Inf at the real steps of every call (padding may hold anything;
            see :meth:`runtime.base.BaseRunner.check_input`); False skips the check. Defaults to True.
        trt_module (runtime.trt_compat.TrtModule | None): an imported flavour to use instead of importing one
            (embedding, tests). Defaults to None.
        cuda_api (runtime.cuda_mem.CudaApi | None): the CUDA calls to use (tests pass a fake). Defaults to None.

    Raises:
        RuntimeInputError: missing/foreign report, an engine of another TensorRT version or GPU, a damaged engine,
            an engine that is not version-compatible on the lean runtime, a device that is not CUDA,
            ``runtime_cache`` with full TensorRT or naming a directory.
        runtime.trt_compat.TrtNotAvailableError: no TensorRT flavour installed.
        runtime.cuda_mem.NoCudaDeviceError: no CUDA device here (checked before TensorRT starts).
        ImportError: cuda-python missing.
    """

    backend_name = "tensorrt"

    def __init__(self, path, device=None, *, cuda_graphs: bool = False, trt_backend: str = "auto",
                 runtime_cache: Any = None, check_finite: bool = True, trt_module: Any = None,
                 cuda_api: Any = None) -> None:
        check_device(device)
        check_flag(cuda_graphs, "cuda_graphs")
        check_flag(check_finite, "check_finite")
        self.path = Path(path)
        self.device_index = _device_index(device)
        report = read_report(self.path)
        check_engine_file(self.path, report)  # first: a damaged engine is reported as damaged, GPU or not
        metadata = ModelMetadata.from_dict(report["metadata"], str(report_path_for(self.path)))
        if trt_module is None:
            from ..trt_compat import import_trt

            # Importing starts nothing on the GPU; "auto" tries only the flavours that can load this engine.
            trt_module = import_trt(trt_backend, order=runtime_flavours(report))
        check_engine_runtime(report, trt_module.flavour, trt_module.version_string)
        self.tm, self.report = trt_module, report
        self.runtime_cache_path = _check_runtime_cache(runtime_cache, trt_module)
        if cuda_api is None:
            from ..cuda_mem import CudaApi

            cuda_api = CudaApi()
        self.cuda = cuda_api
        self.cuda.require_device(("the " if trt_module.is_lean else "") + trt_module.product)
        self.cuda.set_device(self.device_index)
        self.device_info = self.cuda.device_info(self.device_index)
        check_engine_gpu(report, self.device_info)
        self.engine = self._deserialize()
        self._io_names(metadata)
        profiles = self._profiles()
        super().__init__(metadata, InputSpec.for_graph(metadata.graph, metadata, profiles), check_finite=check_finite)
        self.cuda_graphs = bool(cuda_graphs)
        self._serialize = True  # one execution context: one call at a time
        self.context = None
        self.stream = None
        self._device_bufs: dict = {}
        self._host_bufs: dict = {}
        self._graphs: dict = {}
        self._profile = None
        self._torch_stream = None  # made on first use, for callers on the legacy default stream
        self._runtime_config = None  # TensorRT for RTX: the context's runtime config and kernel cache
        self._runtime_cache = None

    # --- loading -----------------------------------------------------------------------------------------------------
    def _deserialize(self):
        from ..trt_compat import make_logger

        trt = self.tm.trt
        # A collecting logger keeps TensorRT's own reason (e.g. "does not support this compute capability") for the
        # error message; modules without ILogger (stripped builds, test fakes) get the plain logger.
        collect = hasattr(trt, "ILogger")
        self._logger = make_logger(self.tm, "warning", collect=collect)
        self._runtime = trt.Runtime(self._logger)
        if plan_holds_host_code(self.report):
            # A version-compatible plan carries its own lean runtime, which TensorRT runs only when allowed to.
            self._runtime.engine_host_code_allowed = True
        try:
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            why = "damaged, or not a TensorRT plan although the report matched"
        except Exception as e:  # some versions raise instead of returning None
            engine, why = None, f"{type(e).__name__}: {e}"
        if engine is None:
            said = "; ".join(self._logger.errors())[:500] if collect else ""
            if "compute capability" in said.lower():
                raise RuntimeInputError(f"{self.tm.describe()} does not support this GPU: {said}. TensorRT for RTX "
                                        "runs on RTX-class GPUs (compute capability 8.6/8.9/12.0), not on H100/H200; "
                                        "use full TensorRT (pip install '.[trt]') there")
            raise RuntimeInputError(f"{self.tm.describe()} could not deserialize {self.path} ({why}"
                                    f"{'; TensorRT said: ' + said if said else ''}); rebuild it with "
                                    "`python -m export.to_trt`")
        return engine

    def _io_names(self, metadata: ModelMetadata) -> None:
        trt, e = self.tm.trt, self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        self.inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if e.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        spec = InputSpec.for_graph(metadata.graph, metadata)
        spec.check_io_names(self.inputs, self.outputs, str(self.path), kind="engine")
        self.input_name = spec.input_name
        self._dtypes = {n: _np_dtype(trt, e.get_tensor_dtype(n)) for n in names}
        # The runner feeds float32 frames/features and reads float32 logits (export.to_onnx's I/O contract);
        # a HALF input would be handed float32 bytes.
        wrong = {n: np.dtype(d).name for n, d in self._dtypes.items()
                 if (d not in (np.int32, np.int64) if n == "lengths" else d is not np.float32)}
        if wrong:
            raise RuntimeInputError(f"{self.path}: engine I/O dtypes {wrong} are not what the runtime feeds and reads "
                                    "(float32 frames/features and outputs, int32/int64 lengths); build the engine "
                                    "from a graph of `python -m export.to_onnx`")

    def _profiles(self) -> list:
        e = self.engine
        out = []
        for p in range(e.num_optimization_profiles):
            lo, _opt, hi = (tuple(s) for s in e.get_tensor_profile_shape(self.input_name, p))
            out.append(Profile((int(lo[0]), int(hi[0])), (int(lo[1]), int(hi[1]))))
        return out

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        from ..cuda_mem import DeviceBuffer

        self.cuda.set_device(self.device_index)
        self.context = self._create_context()
        if self.context is None:
            raise RuntimeError(f"{self.tm.describe()} could not create an execution context for {self.path} "
                               "(out of device memory?)")
        self.stream = self.cuda.stream_create()
        self._device_bufs = {n: DeviceBuffer(self.cuda) for n in self.inputs + self.outputs}
        self._host_bufs = {n: DeviceBuffer(self.cuda, pinned_host=True) for n in self.inputs + self.outputs}
        self._graphs = {}
        self._profile = None

    def _create_context(self):
        if not self.tm.is_rtx:
            return self.engine.create_execution_context()
        trt = self.tm.trt
        config = self.engine.create_runtime_config()
        if self.cuda_graphs:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if self.runtime_cache_path is not None:
            cache = config.create_runtime_cache()
            path = self.runtime_cache_path
            if path.is_file() and not cache.deserialize(path.read_bytes()):
                logger.warning("%s: runtime cache %s was written for another GPU, driver or TensorRT-RTX version (or "
                               "is damaged); starting an empty one, which replaces it at deactivation", self.name, path)
            if not config.set_runtime_cache(cache):
                raise RuntimeError(f"{self.tm.describe()} refused the runtime cache {path}")
            self._runtime_cache = cache
        self._runtime_config = config  # kept alive with the context that reads it
        return self.engine.create_execution_context(runtime_config=config)

    def save_runtime_cache(self) -> Optional[Path]:
        """Write TensorRT for RTX's JIT-compiled kernels to ``runtime_cache`` now (atomically).

        Returns:
            Path | None: the file written; None without a runtime cache or before activation.
        """
        if self._runtime_cache is None:
            return None
        from .._io import atomic_write_bytes

        return atomic_write_bytes(self.runtime_cache_path, bytes(self._runtime_cache.serialize()))

    def deactivate_impl(self) -> None:
        if self._runtime_cache is not None:
            try:
                self.save_runtime_cache()
            except (OSError, RuntimeError) as e:  # the kernels are only a cache: losing them costs a recompile
                logger.warning("%s: could not save the runtime cache to %s: %s", self.name, self.runtime_cache_path,
                               e)
        self._drop_graphs()
        for buf in list(self._device_bufs.values()) + list(self._host_bufs.values()):
            buf.free()
        self._device_bufs, self._host_bufs = {}, {}
        if self.stream is not None:
            self.cuda.stream_destroy(self.stream)
            self.stream = None
        self.context = None
        # Only now: the context reads its runtime config and cache for as long as it lives.
        self._runtime_config = self._runtime_cache = None

    def _drop_graphs(self) -> None:
        for g in self._graphs.values():
            if g is not None:
                self.cuda.graph_destroy(*g)
        self._graphs = {}

    # --- inference -----------------------------------------------------------------------------------------------
    def _set_shapes(self, feed: Feed, stream_handle: int) -> dict:
        """Select the profile, set input shapes, and read the output shapes back from the context."""
        if self._profile != feed.profile:
            if not self.context.set_optimization_profile_async(feed.profile, stream_handle):
                raise RuntimeError(f"{self.tm.describe()} refused optimization profile {feed.profile} of {self.path}")
            self._profile = feed.profile
        shapes = {self.input_name: tuple(feed.x.shape)}
        if "lengths" in self.inputs:
            shapes["lengths"] = (feed.batch,)
        for n, shape in shapes.items():
            # False here would leave unresolved (-1) output shapes and a failed enqueue: say so instead.
            if not self.context.set_input_shape(n, shape):
                raise RuntimeError(f"{self.tm.describe()} set_input_shape({n!r}, {shape}) failed in profile "
                                   f"{feed.profile} of {self.path}; see the TensorRT log")
        return {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self.outputs}

    def infer_impl(self, feed: Feed) -> dict:
        self.cuda.set_device(self.device_index)  # the current device is per thread; calls may come from any thread
        if feed.is_torch and feed.x.is_cuda:
            return self._infer_torch_cuda(feed)
        x = feed.x.detach().cpu().numpy() if feed.is_torch else feed.x
        stream = self.cuda.stream_handle(self.stream)
        out_shapes = self._set_shapes(feed, stream)
        host_in = {self.input_name: x}
        if "lengths" in self.inputs:
            host_in["lengths"] = feed.lengths_or_full().astype(self._dtypes["lengths"], copy=False)
        moved = False
        sizes = {n: a.nbytes for n, a in host_in.items()}
        sizes.update({n: int(np.prod(s)) * np.dtype(self._dtypes[n]).itemsize for n, s in out_shapes.items()})
        for n, nbytes in sizes.items():
            moved |= self._device_bufs[n].ensure(max(nbytes, 1))
            self._host_bufs[n].ensure(max(nbytes, 1))
        if moved:
            self._drop_graphs()  # graphs hold the old addresses
        for n, a in host_in.items():
            self._host_bufs[n].view(a.nbytes)[:] = a.reshape(-1).view(np.uint8)
            self.cuda.memcpy_htod_async(self._device_bufs[n].ptr, self._host_bufs[n].ptr, a.nbytes, self.stream)
        for n in self.inputs + self.outputs:
            self._bind(n, self._device_bufs[n].ptr)
        self._enqueue(feed, tuple(x.shape), stream)
        for n in self.outputs:
            self.cuda.memcpy_dtoh_async(self._host_bufs[n].ptr, self._device_bufs[n].ptr, sizes[n], self.stream)
        self.cuda.stream_synchronize(self.stream)
        return {n: self._host_bufs[n].view(sizes[n]).view(self._dtypes[n]).reshape(out_shapes[n]).copy()
                for n in self.outputs}

    def _enqueue(self, feed: Feed, shape: tuple, stream: int) -> None:
        if not self.cuda_graphs or self.tm.is_rtx:  # TensorRT for RTX captures its own graphs (see _create_context)
            return self._execute(stream)
        key = (feed.profile, shape)
        if key not in self._graphs:
            self._execute(stream)  # first run flushes lazy initialisation (trtexec does the same before capture)
            from ..cuda_mem import graph_capture

            self._graphs[key] = graph_capture(self.cuda, self.stream, lambda: self.context.execute_async_v3(stream))
            if self._graphs[key] is None:
                logger.info("%s: shape %s runs without a CUDA graph (capture failed)", self.name, shape)
            return None
        graph = self._graphs[key]
        if graph is None:
            return self._execute(stream)
        self.cuda.graph_launch(graph[1], self.stream)
        return None

    def _bind(self, name: str, ptr: int) -> None:
        # False keeps the previous call's address, which may point at freed memory: never run on after it.
        if not self.context.set_tensor_address(name, ptr):
            raise RuntimeError(f"{self.tm.describe()} refused the address of {name!r} ({ptr:#x}; TensorRT needs "
                               f"256-byte alignment) for {self.path}; see the TensorRT log")

    def _execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"{self.tm.describe()} execute_async_v3 failed for {self.path}; see the TensorRT log")

    def _infer_torch_cuda(self, feed: Feed) -> dict:
        import torch

        x = feed.x
        if x.device.index is not None and x.device.index != self.device_index:
            raise RuntimeInputError(f"the input is on {x.device}, but this engine runs on cuda:{self.device_index}; "
                                    f"move it there (x.to('cuda:{self.device_index}'))")
        torch_stream = torch.cuda.current_stream(x.device)
        if torch_stream.cuda_stream == 0:  # the legacy default stream: TensorRT would sync the device around it
            if self._torch_stream is None:
                self._torch_stream = torch.cuda.Stream(x.device)
            self._torch_stream.wait_stream(torch_stream)  # x is written by work queued on the current stream
            torch_stream = self._torch_stream
        stream = torch_stream.cuda_stream
        with torch.cuda.stream(torch_stream):
            out_shapes = self._set_shapes(feed, stream)
            if x.data_ptr() % 256:  # a view at an offset: TensorRT needs 256-byte aligned addresses
                x = x.clone()
            tensors = {self.input_name: x}
            if "lengths" in self.inputs:
                lengths = feed.lengths_or_full().astype(self._dtypes["lengths"], copy=False)
                tensors["lengths"] = torch.from_numpy(lengths).to(x.device, non_blocking=False)
            outs = {n: torch.empty(s, dtype=torch.float32, device=x.device) for n, s in out_shapes.items()}
            tensors.update(outs)
            for n, t in tensors.items():
                self._bind(n, t.data_ptr())
            self._execute(stream)
        # One execution context must not run on two streams at once, and the next call may come on another stream
        # (a numpy call on the runner's stream, or another thread's current stream): finish before the lock opens.
        torch_stream.synchronize()
        return outs


def _check_runtime_cache(runtime_cache, tm) -> Optional[Path]:
    if runtime_cache is None:
        return None
    if not tm.is_rtx:
        raise RuntimeInputError(f"runtime_cache is a TensorRT for RTX option (a file of its JIT-compiled kernels), but "
                                f"this engine runs on {tm.describe()}, whose engines hold their kernels already; "
                                "drop runtime_cache")
    path = Path(runtime_cache)
    if path.is_dir():
        raise RuntimeInputError(f"runtime_cache {path} is a directory; pass a file path (e.g. model.engine.rtcache)")
    return path


def _device_index(device) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    text = str(device)
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise RuntimeInputError(f"TensorRT engines run on CUDA devices: device must be 'cuda', 'cuda:N' or N, got "
                            f"{device!r}")


def _np_dtype(trt, dtype) -> type:
    dt = trt.DataType
    table = {dt.FLOAT: np.float32, dt.HALF: np.float16, dt.INT32: np.int32, dt.INT64: np.int64, dt.BOOL: np.bool_,
             dt.INT8: np.int8, dt.UINT8: np.uint8}
    if dtype not in table:
        from ..trt_compat import dtype_name

        raise RuntimeInputError(f"engine tensor dtype {dtype_name(dtype)} is not supported by the runtime")
    return table[dtype]
