"""The PyTorch runner: the eager fp32 reference, or the fast path for the same checkpoint (see the package docstring):
its modules on padded inputs (:class:`FastModel`) and a CUDA graph per (batch, time) bucket (:class:`Bucket`)."""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ...base import BaseRunner
from ...errors import RuntimeInputError
from ...inputs import Feed, check_device, check_flag
from ...spec import InputSpec, ModelMetadata, metadata_from_checkpoint
from .bilstm import exact_bilstm
from .fold import fold_conv_bn

logger = logging.getLogger(__name__)

STAGES = ("model", "cnn", "bilstm")
PRECISIONS = ("fp32", "fp16", "fp16-all")
# The fast path pads every call up to the smallest (batch, time) bucket that holds it, so a bounded set of CUDA graphs
# serves every shape; larger calls run the same modules without a graph. At most MAX_BUCKETS are kept (least
# recently used dropped first): each holds static buffers and a graph.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
TIME_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_BUCKETS = 32


class FastModel:
    """The fast path's modules and its two stages on padded inputs (shapes (Bb, Tb, ...), lengths on device): the
    conv-BN folded CNN, and the BiLSTM in its two exact forms."""

    def __init__(self, model, stage: str, device, cnn_dtype, lstm_dtype, channels_last: bool):
        self.stage, self.cnn_dtype, self.lstm_dtype, self.channels_last = stage, cnn_dtype, lstm_dtype, channels_last
        self.cnn = None
        self.lstm = None
        if stage in ("model", "cnn"):
            cnn = fold_conv_bn(model.cnn).to(device=device, dtype=cnn_dtype)
            self.cnn = cnn.to(memory_format=torch.channels_last) if channels_last else cnn
        if stage in ("model", "bilstm"):
            lstm = copy.deepcopy(model.lstm).to(device=device, dtype=lstm_dtype).eval()
            lstm.flatten_parameters()
            self.native_lstm = lstm  # fused bidirectional cuDNN kernel: for calls whose clips are all T frames long
            self.lstm = exact_bilstm(lstm).flatten()
            self.frame_head = copy.deepcopy(model.frame_head).to(device=device, dtype=lstm_dtype).eval()
            self.clip_head = copy.deepcopy(model.clip_head).to(device=device, dtype=lstm_dtype).eval()

    def features(self, frames):
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:])
        # One copy kernel for the cast and the layout (inside a graph at batch 1, kernels cost more than bytes).
        x = x.to(dtype=self.cnn_dtype, memory_format=torch.channels_last if self.channels_last else
                 torch.preserve_format)
        return self.cnn(x).float().reshape(b, t, -1)

    def bilstm(self, features, lengths, full_length: bool = False):
        if full_length:  # every real clip spans the whole time axis: the fused kernel is exact
            out = self.native_lstm(features.to(self.lstm_dtype))[0]
            pooled = out.mean(dim=1)
        else:
            out = self.lstm(features.to(self.lstm_dtype), lengths)  # zero at padded steps
            pooled = out.sum(dim=1) / lengths.to(out.dtype).unsqueeze(1)
        return self.frame_head(out).float(), self.clip_head(pooled).float()

    def __call__(self, x, lengths, full_length: bool = False):
        """-> dict of float32 outputs for padded ``x`` (``full_length``: no real clip is shorter than x's T)."""
        if self.stage == "cnn":
            return {"features": self.features(x)}
        feats = self.features(x) if self.stage == "model" else x
        frame, clip = self.bilstm(feats, lengths, full_length)
        return {"frame_logits": frame, "clip_logits": clip}


class Bucket:
    """Static buffers and the CUDA graph of one (batch, time) bucket."""

    def __init__(self, fast: FastModel, shape: tuple, device, use_graph: bool, full_length: bool = False):
        self.shape = shape
        self.full_length = full_length
        self.x = torch.zeros(shape, device=device, dtype=torch.float32)
        self.lengths = torch.ones(shape[0], device=device, dtype=torch.int64)
        self.host_lengths = None  # what self.lengths holds, to skip redundant copies
        self.graph = None
        self.fast = fast
        if use_graph:
            # Warm up on a side stream (cuDNN autotuning, lazy init) so that none of it is captured, then capture.
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):
                    self._forward()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            caller = torch.cuda.current_stream(device)
            try:
                with torch.cuda.graph(self.graph), torch.inference_mode():
                    self.out = self._forward()
            except Exception:
                # When ending a capture fails, torch.cuda.graph does not switch back from its capture stream: do it
                # here, or every later call of this thread would run on that stream.
                torch.cuda.set_stream(caller)
                self.graph = None
                raise

    def _forward(self):
        return self.fast(self.x, self.lengths, self.full_length)

    def run(self):
        if self.graph is not None:
            self.graph.replay()
            return self.out
        with torch.inference_mode():
            return self._forward()


class TorchRunner(BaseRunner):
    """Runs a checkpoint (or one stage of it) with PyTorch.

    Args:
        checkpoint (str | PathLike | runtime.checkpoint.Checkpoint): a ``.pt`` checkpoint path or a loaded one.
        device (str | torch.device | None): "cpu", "cuda", "cuda:1", ...; None picks CUDA when available. Defaults
            to None.
        stage (str): "model", "cnn" or "bilstm". Defaults to "model".
        fast (bool | None): the fast path (conv-BN folded fp16 CNN, cuDNN BiLSTM, CUDA graphs); None means True on
            CUDA and False on CPU. Defaults to None.
        precision (str | None): fast path precision: "fp16" (fp16 CNN, fp32 BiLSTM and heads), "fp16-all" or "fp32";
            None means "fp16" on CUDA and "fp32" on CPU (fp16 needs CUDA). Defaults to None.
        cuda_graphs (bool): capture a CUDA graph per bucket on the fast CUDA path. Defaults to True.
        channels_last (bool): channels_last CNN on the fast path. Defaults to True.
        check_finite (bool): refuse NaN/Inf at the real steps of every call (padding may hold anything;
            see :meth:`runtime.base.BaseRunner.check_input`); False skips the check. Defaults to True.

    Raises:
        RuntimeInputError: unreadable checkpoint, unknown stage or precision, fp16 on CPU, a flag that is not
            True/False.
    """

    backend_name = "torch"

    def __init__(self, checkpoint, device=None, *, stage: str = "model", fast: Optional[bool] = None,
                 precision: Optional[str] = None, cuda_graphs: bool = True, channels_last: bool = True,
                 check_finite: bool = True) -> None:
        from ...checkpoint import CheckpointError, load_checkpoint

        if stage not in STAGES:
            raise RuntimeInputError(f"stage must be one of {STAGES}, got {stage!r}")
        check_device(device)
        check_flag(fast, "fast", allow_none=True)
        for name, flag in (("cuda_graphs", cuda_graphs), ("channels_last", channels_last),
                           ("check_finite", check_finite)):
            check_flag(flag, name)
        if isinstance(checkpoint, (str, os.PathLike)):
            try:
                checkpoint = load_checkpoint(Path(checkpoint), map_location="cpu")
            except CheckpointError as e:
                raise RuntimeInputError(str(e)) from e
        self.checkpoint = checkpoint
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeInputError(f"device {self.device} asked for, but torch sees no CUDA GPU; use device='cpu'")
        on_cuda = self.device.type == "cuda"
        self.fast = on_cuda if fast is None else bool(fast)
        if precision is None:
            precision = "fp16" if (self.fast and on_cuda) else "fp32"
        if precision not in PRECISIONS:
            raise RuntimeInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "fp32" and not (self.fast and on_cuda):
            raise RuntimeInputError(f"precision={precision!r} needs the fast path on a CUDA device (fast=True, "
                                    f"device='cuda'); the {'eager' if not self.fast else 'CPU'} path is fp32")
        self.precision = precision
        self.cuda_graphs = bool(cuda_graphs) and on_cuda and self.fast
        self.channels_last = bool(channels_last)
        self.batch_buckets, self.time_buckets, self.max_buckets = BATCH_BUCKETS, TIME_BUCKETS, MAX_BUCKETS
        metadata = metadata_from_checkpoint(checkpoint, stage)
        metadata = ModelMetadata(**{**metadata.__dict__, "precision": precision})
        super().__init__(metadata, InputSpec.for_graph(stage, metadata), check_finite=check_finite)
        self._serialize = self.fast  # static buffers and graphs are shared state
        self._model = None
        self._fast_model = None
        self._buckets: OrderedDict = OrderedDict()  # least recently used first
        self._warned_large = False

    def activate_impl(self) -> None:
        if not self.fast:
            self._model = self.checkpoint.model if self.device.type == "cpu" else copy.deepcopy(
                self.checkpoint.model).to(self.device)
            self._model.eval()
            return
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        half = torch.float16
        cnn_dtype = half if self.precision in ("fp16", "fp16-all") else torch.float32
        lstm_dtype = half if self.precision == "fp16-all" else torch.float32
        self._fast_model = FastModel(self.checkpoint.model, self.stage, self.device, cnn_dtype, lstm_dtype,
                                      self.channels_last and self.device.type == "cuda")

    def deactivate_impl(self) -> None:
        self._model = None
        self._fast_model = None
        self._buckets.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warmup(self, shapes: Sequence[tuple]) -> None:
        """Capture the graphs of the buckets that hold each (batch, time) in ``shapes`` now, not on first use."""
        self.activate()  # explicitly: the caller owns its deactivation
        if not self.fast:
            return
        self._begin_call()  # counts as a call: a deactivate() waits for it
        try:
            for b, t in shapes:
                with self._lock:
                    self._bucket_for(int(b), int(t), full_length=True)
        finally:
            self._end_call()

    def _bucket_size(self, value: int, buckets: tuple) -> Optional[int]:
        for v in buckets:
            if v >= value:
                return v
        return None

    def _bucket_for(self, b: int, t: int, full_length: bool = False) -> Optional[Bucket]:
        """The bucket for a (b, t) call, built on first use; ``full_length``: no clip is shorter than t."""
        bb, tb = self._bucket_size(b, self.batch_buckets), self._bucket_size(t, self.time_buckets)
        if bb is None or tb is None:
            return None
        # The fused kernel needs every step real, so only a t that fills its time bucket can use it; the CNN has no
        # time coupling and always pads. Keying by bucket, not by t, bounds how many buckets can ever be built.
        full_length = full_length and self.stage != "cnn" and t == tb
        key = (bb, tb, full_length)
        if key in self._buckets:
            self._buckets.move_to_end(key)
        else:
            if len(self._buckets) >= self.max_buckets:
                old, _ = self._buckets.popitem(last=False)
                logger.info("%s: dropped bucket %s, the least recently used, to keep at most %d", self.name, old,
                            self.max_buckets)
            item = tuple(self.input_spec.item_shape)
            logger.debug("%s: building bucket %s (graph=%s)", self.name, key, self.cuda_graphs)
            self._buckets[key] = Bucket(self._fast_model, key[:2] + item, self.device, self.cuda_graphs, full_length)
        return self._buckets[key]

    def infer_impl(self, feed: Feed) -> dict:
        x = feed.x if feed.is_torch else torch.from_numpy(feed.x)
        if not self.fast:
            x = x.to(self.device)
            lengths = None if feed.lengths is None else torch.from_numpy(feed.lengths).to(self.device)
            with torch.inference_mode():
                m = self._model
                if self.stage == "cnn":
                    return {"features": m.extract_features(x)}
                frame, clip = (m.classify(x, lengths) if self.stage == "bilstm" else m(x, lengths))
            return {"frame_logits": frame, "clip_logits": clip}
        b, t = feed.batch, feed.time
        lengths_np = feed.lengths_or_full()
        full_length = bool((lengths_np == t).all())
        bucket = self._bucket_for(b, t, full_length)
        if bucket is None:
            if not self._warned_large:
                logger.info("%s: batch %d / time %d exceed the largest bucket (%d, %d); running without a CUDA "
                            "graph", self.name, b, t, self.batch_buckets[-1], self.time_buckets[-1])
                self._warned_large = True
            with torch.inference_mode():
                lengths = torch.from_numpy(lengths_np.astype(np.int64)).to(self.device)
                out = self._fast_model(x.to(self.device), lengths, full_length)
            return {k: v for k, v in out.items()}
        bb = bucket.shape[0]
        bucket.x[:b, :t].copy_(x, non_blocking=False)
        full = np.ones(bb, dtype=np.int64)
        full[:b] = lengths_np
        if bucket.host_lengths is None or not np.array_equal(full, bucket.host_lengths):
            # A pageable host->device copy synchronises the host; skip it when the lengths did not change.
            bucket.lengths.copy_(torch.from_numpy(full))
            bucket.host_lengths = full
        out = bucket.run()
        # Clone the slices: the static buffers are overwritten by the next call.
        if self.stage == "cnn":
            return {"features": out["features"][:b, :t].clone()}
        return {"frame_logits": out["frame_logits"][:b, :t].clone(), "clip_logits": out["clip_logits"][:b].clone()}
