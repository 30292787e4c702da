"""TensorRT backend (full ``tensorrt`` 10.x/11.x, ``tensorrt_rtx`` or the lean runtime ``tensorrt_lean_bindings``,
through :mod:`runtime.trt_compat`).

Loading is apart from running (Polygraphy's loader/runner split): :func:`.trt_engine.load_engine` vets the engine
file against its report and this machine and deserializes it; :class:`TrtRunner` runs the
:class:`.trt_engine.LoadedEngine` it returns (given a path, it calls the loader first, as ``runtime.load`` does).

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
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..base import BaseRunner
from ..errors import RuntimeInputError
from ..inputs import Feed, check_flag
from .trt_engine import LoadedEngine, load_engine

if TYPE_CHECKING:  # the flavour is imported at run time (runtime.trt_compat); its classes bear these names
    from tensorrt import ICudaEngine

logger = logging.getLogger(__name__)


class TrtRunner(BaseRunner):
    """Runs a TensorRT engine built by ``python -m export.to_trt``.

    Args:
        engine (LoadedEngine | str | PathLike): what :func:`.trt_engine.load_engine` returned, or the ``.engine`` /
            ``.plan`` path to load with it (its report at ``path + ".json"``).
        device, trt_backend, trt_module, cuda_api: for a path, passed to :func:`.trt_engine.load_engine` (``device``
            "cuda", "cuda:N" or N, None meaning GPU 0; ``trt_backend`` "auto" or a flavour; an imported flavour and
            the CUDA calls, for embedding and tests). A loaded engine has them already: leave them out.
        cuda_graphs (bool): capture one CUDA graph per (profile, shape) on the numpy path, falling back to plain
            enqueue when capture fails; on TensorRT for RTX, its built-in CUDA graphs (every path). Defaults to False.
        runtime_cache (str | PathLike | None): TensorRT for RTX only: a file for its JIT-compiled kernels, read at
            activation (ignored with a warning when written elsewhere) and written at deactivation. Defaults to None.
        check_finite (bool): refuse NaN/Inf at the real steps of every call (padding may hold anything;
            see :meth:`runtime.base.BaseRunner.check_input`); False skips the check. Defaults to True.

    Raises:
        RuntimeInputError: what :func:`.trt_engine.load_engine` refuses; loader options beside a loaded engine;
            ``runtime_cache`` with full TensorRT or naming a directory.
        runtime.trt_compat.TrtNotAvailableError, runtime.cuda_mem.NoCudaDeviceError, ImportError: see
            :func:`.trt_engine.load_engine`.
    """

    backend_name = "tensorrt"

    def __init__(self, engine, device=None, *, cuda_graphs: bool = False, trt_backend: str = "auto",
                 runtime_cache: Any = None, check_finite: bool = True, trt_module: Any = None,
                 cuda_api: Any = None) -> None:
        check_flag(cuda_graphs, "cuda_graphs")
        check_flag(check_finite, "check_finite")
        if not isinstance(engine, LoadedEngine):
            engine = load_engine(engine, device, trt_backend=trt_backend, trt_module=trt_module, cuda_api=cuda_api)
        elif (device, trt_backend, trt_module, cuda_api) != (None, "auto", None, None):
            raise RuntimeInputError(f"{engine.path} is loaded already (on cuda:{engine.device_index}, by "
                                    f"{engine.tm.describe()}): device, trt_backend, trt_module and cuda_api are "
                                    "load_engine's options; leave them out here")
        self.loaded = engine
        self.path, self.tm, self.cuda, self.report = engine.path, engine.tm, engine.cuda, engine.report
        self.device_index, self.device_info = engine.device_index, engine.device_info
        self.engine: ICudaEngine = engine.engine
        self.inputs, self.outputs = list(engine.inputs), list(engine.outputs)
        self.input_name, self._dtypes = engine.input_name, engine.dtypes
        self.runtime_cache_path = _check_runtime_cache(runtime_cache, engine.tm)
        super().__init__(engine.metadata, engine.input_spec, check_finite=check_finite)
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
