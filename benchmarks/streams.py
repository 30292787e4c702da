"""The streaming workload: one new frame per call, the BiLSTM over the last ``window`` frames.

Two forms: :class:`EagerStream` (the eager baseline) and :func:`runtime_stream` (``runtime.StreamingClassifier``
over a cnn + bilstm runner pair of any backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from benchmarks.context import BenchContext, Prepared
from benchmarks.environment import Unavailable


@dataclass(frozen=True)
class StreamKey:
    """The cache key of a streaming contender's runners in :meth:`BenchContext.runner`."""

    contender: str
    part: str  # "streamer", "cnn" or "bilstm"


class EagerStream:
    """The eager baseline of one streaming step: CNN on the new frame, ring buffer of features, BiLSTM on the window."""

    def __init__(self, model, window: int, batch: int, feature_dim: int, device: str, half: bool) -> None:
        import torch

        self.model, self.window, self.half = model, window, half
        self.buffer = torch.zeros(batch, window, feature_dim, device=device,
                                  dtype=torch.float16 if half else torch.float32)
        self.count = 0

    def reset(self) -> None:
        self.buffer.zero_()
        self.count = 0

    def push(self, frame) -> dict:
        import torch

        with torch.inference_mode():
            x = frame.half() if self.half else frame
            feature = self.model.extract_features(x.unsqueeze(1))  # (B, 1, F)
            self.buffer = torch.cat([self.buffer[:, 1:], feature], dim=1)
            self.count += 1
            filled = min(self.count, self.window)
            frame_logits, clip_logits = self.model.classify(self.buffer[:, self.window - filled:])
            return {"frame_logits": frame_logits[:, -1].float(), "clip_logits": clip_logits.float()}


def _batch1(value):
    """Give a streaming output of one stream a batch axis, (C,) -> (1, C), to compare with the eager reference."""
    shape = tuple(value.shape)
    return value.reshape(1, *shape) if len(shape) == 1 else value


def runtime_stream(ctx: BenchContext, name: str, batch: int, *, loader: Callable, precision: str,
                   numpy_inputs: bool = False, info: Optional[dict] = None) -> Prepared:
    """``runtime.StreamingClassifier`` over the cnn + bilstm runners from ``loader(stage)``.

    Raises:
        Unavailable: ``batch`` > 1 (the classifier is one stream).
    """
    from runtime.streaming import StreamingClassifier

    if batch != 1:
        raise Unavailable("runtime.StreamingClassifier is one stream (B=1); batched streams are not benchmarked")

    def build():
        cnn, bilstm = loader("cnn"), loader("bilstm")
        # Runners handed over as a pair stay ours to deactivate: BenchContext.close walks them.
        ctx.runner(StreamKey(name, "cnn"), lambda: cnn)
        ctx.runner(StreamKey(name, "bilstm"), lambda: bilstm)
        return StreamingClassifier((cnn, bilstm), window=ctx.window)

    streamer = ctx.runner(StreamKey(name, "streamer"), build)
    if numpy_inputs:
        pool = [x[0] for x in ctx.host_pool("stream", batch, 1)]
        seq = [x[0] for x in ctx.stream_sequence(batch)]
    else:
        import torch

        pool = [t[0] for t in ctx.torch_pool("stream", batch, 1)]
        seq = [torch.from_numpy(x[0]).to(ctx.device) for x in ctx.stream_sequence(batch)]

    def push(frame) -> dict:
        result = streamer.push(frame)
        return {"frame_logits": result.frame_logits, "clip_logits": result.clip_logits}

    def probe() -> dict:
        streamer.reset()
        out = {}
        for f in seq:
            out = push(f)
        return {k: _batch1(v) for k, v in out.items()}

    return Prepared(fn=push, inputs=pool, timer="perf-counter", precision=precision, probe=probe, sync=ctx.sync(),
                    info=dict(info or {}, note=f"StreamingClassifier(window={ctx.window})"))
