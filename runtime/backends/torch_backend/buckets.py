"""The fast path's modules on padded inputs, and its buckets: static buffers and a CUDA graph per (batch, time)."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from ...errors import RuntimeInputError
from .bilstm import exact_bilstm
from .fold import build_cnn_form

logger = logging.getLogger(__name__)

AUTO_TOLERANCE = 2e-2  # "auto": max |a - b| / max |b| allowed between a form's outputs and the folded form's
AUTO_ROUNDS = 7  # "auto": timed runs per form (interleaved, median)


class FastModel:
    """The fast path's modules and its two stages on padded inputs (shapes (Bb, Tb, ...), lengths on device).

    ``cnn_forms``: the CNN forms to build (:data:`CNN_FORMS`); a call names the one it runs. The first is required;
    the others are candidates (``"auto"``), skipped with a warning when they cannot be built for this CNN.
    """

    def __init__(self, model, stage: str, device, cnn_dtype, lstm_dtype, channels_last: bool,
                 cnn_forms: Sequence[str] = ("folded",)):
        self.stage, self.cnn_dtype, self.lstm_dtype, self.channels_last = stage, cnn_dtype, lstm_dtype, channels_last
        self.cnns: dict = {}
        self.lstm = None
        if stage in ("model", "cnn"):
            for form in cnn_forms:
                try:
                    cnn = build_cnn_form(model.cnn, form).to(device=device, dtype=cnn_dtype)
                except ValueError as e:
                    if form == cnn_forms[0]:
                        raise
                    logger.warning("CNN form %r cannot be built for this model (%s); not used", form, e)
                    continue
                self.cnns[form] = cnn.to(memory_format=torch.channels_last) if channels_last else cnn
        if stage in ("model", "bilstm"):
            lstm = copy.deepcopy(model.lstm).to(device=device, dtype=lstm_dtype).eval()
            lstm.flatten_parameters()
            self.native_lstm = lstm  # fused bidirectional cuDNN kernel: for calls whose clips are all T frames long
            self.lstm = exact_bilstm(lstm).flatten()
            self.frame_head = copy.deepcopy(model.frame_head).to(device=device, dtype=lstm_dtype).eval()
            self.clip_head = copy.deepcopy(model.clip_head).to(device=device, dtype=lstm_dtype).eval()

    def features(self, frames, form: str):
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:])
        # One copy kernel for the cast and the layout (inside a graph at batch 1, kernels cost more than bytes).
        x = x.to(dtype=self.cnn_dtype, memory_format=torch.channels_last if self.channels_last else
                 torch.preserve_format)
        return self.cnns[form](x).float().reshape(b, t, -1)

    def bilstm(self, features, lengths, full_length: bool = False):
        if full_length:  # every real clip spans the whole time axis: the fused kernel is exact
            out = self.native_lstm(features.to(self.lstm_dtype))[0]
            pooled = out.mean(dim=1)
        else:
            out = self.lstm(features.to(self.lstm_dtype), lengths)  # zero at padded steps
            pooled = out.sum(dim=1) / lengths.to(out.dtype).unsqueeze(1)
        return self.frame_head(out).float(), self.clip_head(pooled).float()

    def __call__(self, x, lengths, full_length: bool = False, form: str = "folded"):
        """-> dict of float32 outputs for padded ``x`` (``full_length``: no real clip is shorter than x's T)."""
        if self.stage == "cnn":
            return {"features": self.features(x, form)}
        feats = self.features(x, form) if self.stage == "model" else x
        frame, clip = self.bilstm(feats, lengths, full_length)
        return {"frame_logits": frame, "clip_logits": clip}


class Bucket:
    """Static buffers and the CUDA graph of one (batch, time) bucket, running one CNN form."""

    def __init__(self, fast: FastModel, shape: tuple, device, use_graph: bool, full_length: bool = False,
                 form: str = "folded"):
        self.shape = shape
        self.full_length = full_length
        self.form = form
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
        return self.fast(self.x, self.lengths, self.full_length, self.form)

    def run(self):
        if self.graph is not None:
            self.graph.replay()
            return self.out
        with torch.inference_mode():
            return self._forward()


def time_buckets(buckets: dict, rounds: int) -> dict:
    """Median seconds of one ``run()`` per bucket, the buckets interleaved round by round (same drift for all)."""
    samples: dict = {name: [] for name in buckets}
    cuda = next(iter(buckets.values())).x.is_cuda
    for _ in range(rounds):
        for name, bucket in buckets.items():
            if cuda:
                torch.cuda.synchronize(bucket.x.device)
            t0 = time.perf_counter()
            bucket.run()
            if cuda:
                torch.cuda.synchronize(bucket.x.device)
            samples[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in samples.items()}


def max_rel_diff(out: dict, ref: dict) -> float:
    """max |out - ref| / max |ref| over every output (inf when non-finite)."""
    worst = 0.0
    for key, r in ref.items():
        o = out[key].float()
        if not torch.isfinite(o).all():
            return float("inf")
        scale = max(float(r.float().abs().max()), 1e-12)
        worst = max(worst, float((o - r.float()).abs().max()) / scale)
    return worst


def check_buckets(values: Any, what: str) -> tuple:
    try:
        vals = tuple(int(v) for v in values)
    except (TypeError, ValueError) as e:
        raise RuntimeInputError(f"{what} buckets must be a sequence of positive integers, got {values!r}") from e
    if not vals or min(vals) < 1 or list(vals) != sorted(set(vals)):
        raise RuntimeInputError(f"{what} buckets must be strictly increasing positive integers, got {values!r}")
    return vals


def fastest_bucket(fast: FastModel, shape: tuple, device, use_graph: bool, full_length: bool, name: str) -> Bucket:
    """The bucket for ``shape`` in the fastest CNN form of ``fast.cnns`` whose outputs stay within fp16 tolerance of
    "folded" (timed interleaved on random frames); a form that fails to build, run or capture is skipped. ``name``
    prefixes the log lines."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(shape, generator=gen)
    candidates, outputs = {}, {}
    for form in fast.cnns:  # "folded" first: it must work, the others may fail to run or capture
        try:
            bucket = Bucket(fast, shape, device, use_graph, full_length, form)
            bucket.x.copy_(frames)
            bucket.lengths.fill_(shape[1])  # every step real: the comparison covers every frame
            outputs[form] = {k: v.clone() for k, v in bucket.run().items()}
        except (RuntimeError, ValueError) as e:
            if form == "folded":
                raise
            logger.warning("%s: CNN form %r failed at %s (%s); not used", name, form, shape[:2], e)
            continue
        candidates[form] = bucket
    for form in [f for f in candidates if f != "folded"]:
        diff = max_rel_diff(outputs[form], outputs["folded"])
        if not diff <= AUTO_TOLERANCE:
            logger.warning("%s: CNN form %r differs from 'folded' by %.2g (> %g) at %s; not used", name, form, diff,
                           AUTO_TOLERANCE, shape[:2])
            del candidates[form]
    seconds = time_buckets(candidates, AUTO_ROUNDS)
    best = min(seconds, key=seconds.get)
    logger.info("%s: bucket %s uses CNN form %r (%s)", name, shape[:2], best,
                ", ".join(f"{f} {1e3 * t:.3f} ms" for f, t in seconds.items()))
    chosen = candidates[best]
    chosen.x.zero_()
    chosen.lengths.fill_(1)  # host_lengths is None: the next call copies its own
    return chosen
