"""One benchmark session's shared state: the checkpoint and its models, the input pools, the eager references, the
runners the contenders built, and the exports and engines (:mod:`benchmarks.artifacts`); and what a contender is
once built for one shape (:class:`Prepared`), which :mod:`benchmarks.contenders` makes."""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks.accuracy import to_numpy
from benchmarks.artifacts import Artifacts
from benchmarks.environment import usable_cpus
from benchmarks.timing import Task
from benchmarks.workloads import STREAM_WINDOW

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Prepared(Task):
    """One contender ready for one (workload, B, T): a :class:`benchmarks.timing.Task` (``fn``, ``inputs``,
    ``timer``, ``sync``) with what the checks and the tables need.

    Attributes:
        precision (str): key of :data:`benchmarks.accuracy.TOLERANCES`.
        probe (callable): returns outputs comparable with the eager reference (see :meth:`BenchContext.reference`).
        info (dict): extra facts for ``extra_info`` (provider, threads, notes).
    """

    precision: str
    probe: Callable[[], dict]
    info: dict = field(default_factory=dict)


def eager_call(model, workload: str, x) -> dict:
    """The eager model's outputs for one workload, by output name."""
    if workload == "model":
        frame_logits, clip_logits = model(x)
    elif workload == "cnn":
        return {"features": model.extract_features(x)}
    else:
        frame_logits, clip_logits = model.classify(x)
    return {"frame_logits": frame_logits, "clip_logits": clip_logits}


@dataclass(frozen=True)
class Shape:
    """One input shape of a workload: its pools and eager reference are cached under it."""

    workload: str
    batch: int
    time_steps: int


class BenchContext:
    """Everything one benchmark session shares: checkpoint, device, exported graphs, models, inputs, references.

    Args:
        checkpoint (Path): the ``.pt`` checkpoint under test.
        device (str): ``cpu`` or ``cuda[:i]``.
        workdir (Path): where ONNX exports go (one folder per precision).
        pool_size (int): distinct random inputs cycled per shape. Defaults to 4.
        ort_threads (int, optional): ONNX Runtime intra-op threads. Defaults to None (:func:`usable_cpus`).
        window (int): streaming window. Defaults to :data:`STREAM_WINDOW`.
        compile_mode (str): ``torch.compile`` mode for the optional contender. Defaults to "reduce-overhead".
        onnx_dir (Path, optional): already exported fp32 graphs to use instead of exporting. Defaults to None.
        int8_dir (Path, optional): an ``export.quantize`` folder of the checkpoint (calibrated on real data) to use
            instead of quantizing on N(0,1) frames. Defaults to None.
    """

    def __init__(self, checkpoint: Path, device: str, workdir: Path, *, pool_size: int = 4,
                 ort_threads: Optional[int] = None, window: int = STREAM_WINDOW,
                 compile_mode: str = "reduce-overhead", onnx_dir: Optional[Path] = None,
                 int8_dir: Optional[Path] = None) -> None:
        from runtime.checkpoint import load_checkpoint
        from runtime.inputs import check_count

        self.checkpoint = Path(checkpoint)
        self.device = device
        self.workdir = Path(workdir)
        for name, value in (("pool_size", pool_size), ("window", window)):
            check_count(value, name)
        check_count(ort_threads, "ort_threads", allow_none=True)  # 0 is an error, not "the default"
        self.pool_size = int(pool_size)
        self.ort_threads = usable_cpus() if ort_threads is None else int(ort_threads)
        self.window = int(window)
        self.compile_mode = compile_mode
        if self.is_cuda:
            import torch

            # As in the measured baselines: let cuDNN pick its fastest kernels for every contender alike (the runtime's
            # fast path turns this on anyway, which would otherwise favour whatever runs after it).
            torch.backends.cudnn.benchmark = True
        ckpt = load_checkpoint(self.checkpoint, map_location=device)
        self.config = ckpt.config
        self.model = ckpt.model  # eager fp32 baseline, eval mode, on device
        self.artifacts = Artifacts(self.checkpoint, self.workdir, self.config.frame_size,
                                   onnx_dir=Path(onnx_dir) if onnx_dir else None,
                                   int8_dir=Path(int8_dir) if int8_dir else None)
        self._host_pools: dict[Shape, list] = {}
        self._device_pools: dict[Shape, list] = {}
        self._references: dict[Shape, dict] = {}
        self._runners: dict[Any, Any] = {}  # keyed by each contender kind's frozen dataclass (benchmarks.contenders)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @functools.cached_property
    def model_fp16(self):
        """A channels-last fp16 copy of the eager model (the eager-fp16 contender)."""
        import copy

        import torch

        return copy.deepcopy(self.model).half().to(memory_format=torch.channels_last)

    @functools.cached_property
    def model_cpu(self):
        """The eager fp32 model on the CPU (the exact reference for small shapes)."""
        from runtime.checkpoint import load_checkpoint

        return self.model if not self.is_cuda else load_checkpoint(self.checkpoint).model

    def runner(self, key: Any, build: Callable[[], Any]) -> Any:
        """The runner (or compiled model) cached under ``key``, built by ``build()`` on first use; :meth:`close`
        deactivates it."""
        if key not in self._runners:
            self._runners[key] = build()
        return self._runners[key]

    def sync(self) -> Optional[Callable[[], None]]:
        """The device sync for the "perf-counter" timer: ``torch.cuda.synchronize`` on CUDA, else None."""
        if not self.is_cuda:
            return None
        import torch

        return torch.cuda.synchronize

    # -- inputs --------------------------------------------------------------------------------------------------
    def host_pool(self, workload: str, batch: int, time_steps: int) -> list:
        """``pool_size`` random float32 numpy inputs for one shape (cached); frames ~N(0,1), features U(0.01, 2)."""
        import numpy as np

        shape = Shape(workload, batch, time_steps)
        if shape not in self._host_pools:
            # Seeded by the shape, so every run feeds the same inputs.
            rng = np.random.default_rng(zlib.crc32(repr(("host", workload, batch, time_steps)).encode()))
            h, w = self.config.frame_size
            pool = []
            for _ in range(self.pool_size):
                if workload == "bilstm":
                    x = rng.uniform(0.01, 2.0, (batch, time_steps, self.config.feature_dim))
                elif workload == "stream":
                    x = rng.standard_normal((batch, 3, h, w))
                else:
                    x = rng.standard_normal((batch, time_steps, 3, h, w))
                pool.append(np.ascontiguousarray(x, dtype=np.float32))
            self._host_pools[shape] = pool
        return self._host_pools[shape]

    def torch_pool(self, workload: str, batch: int, time_steps: int) -> list:
        """The host pool as torch tensors on the benchmark device (cached; shares memory on CPU)."""
        import torch

        shape = Shape(workload, batch, time_steps)
        if shape not in self._device_pools:
            self._device_pools[shape] = [torch.from_numpy(x).to(self.device)
                                         for x in self.host_pool(workload, batch, time_steps)]
        return self._device_pools[shape]

    def stream_sequence(self, batch: int) -> list:
        """The ``window`` frames pushed before the streaming check: the pool cycled."""
        pool = self.host_pool("stream", batch, 1)
        return [pool[i % len(pool)] for i in range(self.window)]

    # -- the reference ------------------------------------------------------------------------------------------
    def reference(self, workload: str, batch: int, time_steps: int) -> dict:
        """Eager fp32 outputs (TF32 off) on the first pool input, float64 numpy; for ``stream``, the model on the window.

        For ``stream`` the reference is {"frame_logits": the newest frame's (B, C), "clip_logits": the window's}.
        """
        import numpy as np
        import torch

        shape = Shape(workload, batch, time_steps)
        if shape in self._references:
            return self._references[shape]
        # Small shapes: exact fp32 on the CPU (no TF32, no Winograd/FFT picked by cudnn.benchmark). Large shapes on
        # a GPU: the benchmark device with TF32 and autotuning off (the CPU would take minutes).
        frames = batch * (self.window if workload == "stream" else time_steps)
        on_cpu = not self.is_cuda or frames <= 64 or (workload == "bilstm" and frames <= 1024)
        model, device = (self.model_cpu, "cpu") if on_cpu else (self.model, self.device)
        flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        try:
            with torch.inference_mode():
                if workload == "stream":
                    clip = np.stack(self.stream_sequence(batch), axis=1)  # (B, W, 3, H, W)
                    frame_logits, clip_logits = model(torch.from_numpy(clip).to(device))
                    out = {"frame_logits": frame_logits[:, -1], "clip_logits": clip_logits}
                else:
                    x = torch.from_numpy(self.host_pool(workload, batch, time_steps)[0]).to(device)
                    out = eager_call(model, workload, x)
        finally:
            (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark) = flags
        self._references[shape] = {k: to_numpy(v).astype(np.float64) for k, v in out.items()}
        return self._references[shape]

    def close(self) -> None:
        """Deactivate every runner this context activated."""
        for value in self._runners.values():
            for attr in ("deactivate", "close"):
                method = getattr(value, attr, None)
                if callable(method):
                    try:
                        method()
                    except Exception as e:  # a failing teardown must not hide the results
                        logger.warning("closing %r failed: %s", value, e)
                    break
