"""The PyTorch runner: the eager fp32 reference, or the fast path of :mod:`.buckets` for the same checkpoint."""

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
from ...inputs import Feed, check_count, check_device, check_flag
from ...spec import InputSpec, ModelMetadata, metadata_from_checkpoint
from .buckets import Bucket, FastModel, check_buckets, fastest_bucket
from .fold import CNN_FORMS

logger = logging.getLogger(__name__)

STAGES = ("model", "cnn", "bilstm")
PRECISIONS = ("fp32", "fp16", "fp16-all")
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_TIME_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class TorchRunner(BaseRunner):
    """Runs a checkpoint (or one stage of it) with PyTorch.

    Args:
        checkpoint (str | PathLike | runtime.checkpoint.Checkpoint): a ``.pt`` checkpoint path or a loaded one.
        device (str | torch.device | None): "cpu", "cuda", "cuda:1", ...; None picks CUDA when available. Defaults
            to None.
        stage (str): "model", "cnn" or "bilstm". Defaults to "model".
        fast (bool | None): the fast path (fp16 CNN in ``cnn_form``, cuDNN BiLSTM, CUDA graphs); None means True on
            CUDA and False on CPU. Defaults to None.
        precision (str | None): fast path precision: "fp16" (fp16 CNN, fp32 BiLSTM and heads), "fp16-all" or "fp32";
            None means "fp16" on CUDA and "fp32" on CPU (fp16 needs CUDA). Defaults to None.
        cuda_graphs (bool): capture a CUDA graph per bucket on the fast CUDA path. Defaults to True.
        cnn_form (str | None): the fast path's CNN: "folded", "fused", "unfolded" or "auto" (per bucket, the fastest of
            the three that agree with "folded"; see the package docstring). None means "folded", the form measured
            on a GPU. Ignored by the bilstm stage. Defaults to None.
        buckets (tuple[Sequence[int], Sequence[int]] | None): (batch buckets, time buckets) the fast path pads up to;
            None means (1, 2, 4, ..., 64) and (1, 2, 4, ..., 128). Larger inputs run the fast modules without a graph.
            Defaults to None.
        channels_last (bool): channels_last CNN on the fast path. Defaults to True.
        max_buckets (int): buckets (each with its static buffers and CUDA graph) kept at once; the least recently
            used is dropped beyond it. Defaults to 32.
        check_finite (bool): refuse NaN/Inf at the real steps of every call (padding may hold anything;
            see :meth:`runtime.base.BaseRunner.check_input`); False skips the check. Defaults to True.

    Raises:
        RuntimeInputError: unreadable checkpoint, unknown stage, precision or CNN form, fp16 on CPU, a CNN form
            without the fast path, bad buckets or max_buckets, a flag that is not True/False.
    """

    backend_name = "torch"

    def __init__(self, checkpoint, device=None, *, stage: str = "model", fast: Optional[bool] = None,
                 precision: Optional[str] = None, cuda_graphs: bool = True, cnn_form: Optional[str] = None,
                 buckets: Optional[tuple] = None, channels_last: bool = True, max_buckets: int = 32,
                 check_finite: bool = True) -> None:
        from ...checkpoint import CheckpointError, load_checkpoint

        if stage not in STAGES:
            raise RuntimeInputError(f"stage must be one of {STAGES}, got {stage!r}")
        check_device(device)
        check_flag(fast, "fast", allow_none=True)
        for name, flag in (("cuda_graphs", cuda_graphs), ("channels_last", channels_last),
                           ("check_finite", check_finite)):
            check_flag(flag, name)
        check_count(max_buckets, "max_buckets")
        self.max_buckets = int(max_buckets)
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
        if cnn_form is None:
            cnn_form = "folded"  # the form measured on a GPU; "auto" and the others are opt-in
        if cnn_form not in CNN_FORMS + ("auto",):
            raise RuntimeInputError(f"cnn_form must be one of {CNN_FORMS + ('auto',)}, got {cnn_form!r}")
        if cnn_form != "folded" and not self.fast:
            raise RuntimeInputError(f"cnn_form={cnn_form!r} applies to the fast path (fast=True); the eager path runs "
                                    "the checkpoint's modules as they are")
        self.cnn_form = cnn_form
        self.cuda_graphs = bool(cuda_graphs) and on_cuda and self.fast
        self.channels_last = bool(channels_last)
        bb, tb = buckets if buckets is not None else (DEFAULT_BATCH_BUCKETS, DEFAULT_TIME_BUCKETS)
        self.batch_buckets, self.time_buckets = check_buckets(bb, "batch"), check_buckets(tb, "time")
        metadata = metadata_from_checkpoint(checkpoint, stage)
        metadata = ModelMetadata(**{**metadata.__dict__, "precision": precision})
        super().__init__(metadata, InputSpec.for_graph(stage, metadata), check_finite=check_finite)
        self._serialize = self.fast  # static buffers and graphs are shared state
        self._model = None
        self._fast_model = None
        self._buckets: OrderedDict = OrderedDict()  # least recently used first
        self._warned_large = False
        # The CNN form for shapes beyond the largest bucket; under "auto" "folded" (no form was timed at such shapes).
        self._large_form = None

    @property
    def buckets(self) -> tuple:
        """(batch buckets, time buckets) of the fast path."""
        return self.batch_buckets, self.time_buckets

    @property
    def bucket_forms(self) -> dict:
        """{(batch, time, full_length): CNN form} of every bucket built so far; empty for the bilstm stage.

        ``full_length`` buckets serve calls whose clips are all T frames long with T a time bucket (the fused
        bidirectional kernel); the others pad time to a bucket (see the package docstring).
        """
        if self.stage == "bilstm":
            return {}
        with self._lock:  # calls reorder the table (least recently used first)
            return {key: bucket.form for key, bucket in self._buckets.items()}

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
        forms = CNN_FORMS if self.cnn_form == "auto" else (self.cnn_form,)
        self._fast_model = FastModel(self.checkpoint.model, self.stage, self.device, cnn_dtype, lstm_dtype,
                                      self.channels_last and self.device.type == "cuda", forms)
        self._large_form = "folded" if self.cnn_form == "auto" else self.cnn_form

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
                logger.info("%s: dropped bucket %s, the least recently used, to keep max_buckets=%d; raise it to "
                            "keep more shapes captured", self.name, old, self.max_buckets)
            item = tuple(self.input_spec.item_shape)
            logger.debug("%s: building bucket %s (graph=%s)", self.name, key, self.cuda_graphs)
            shape = key[:2] + item
            if self.cnn_form == "auto" and self.stage != "bilstm":
                self._buckets[key] = fastest_bucket(self._fast_model, shape, self.device, self.cuda_graphs,
                                                    full_length, self.name)
            else:
                self._buckets[key] = Bucket(self._fast_model, shape, self.device, self.cuda_graphs, full_length,
                                             self._large_form)
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
                out = self._fast_model(x.to(self.device), lengths, full_length, self._large_form)
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
