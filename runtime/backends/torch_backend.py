"""PyTorch backend: the eager fp32 reference, and a fast GPU path for the same checkpoint.

Eager (``fast=False``, the default on CPU): the checkpoint's model as trained, packed sequences for padded batches.

Fast (``fast=True``, the default on CUDA):

* CNN: a deep copy in float16 and channels_last, in one of three exact forms (``cnn_form``):
  - ``"folded"``: every conv-BN pair folded into the conv (``fuse_conv_bn_eval``); PyTorch still adds the bias and
    applies the ReLU as separate kernels;
  - ``"fused"``: folded, and each conv + bias + ReLU (with the residual add where a block ends) one cuDNN call
    (``torch.cudnn_convolution_add_relu``; see :class:`ConvReLU` for the convs that stay unfused): far fewer kernels
    at batch 1, where a graph is launch-bound, and fewer element-wise passes over the activations at large batches;
  - ``"unfolded"``: BatchNorm kept as its own op (a probe on an H100 found it faster than folding at B=64);
  - ``"auto"`` (the default on CUDA): every bucket builds the three, drops any that fails or leaves fp16 tolerance
    of "folded", times the rest and keeps the fastest, like ``cudnn.benchmark`` one level up;
    :attr:`TorchRunner.bucket_forms` says which form each bucket uses. Building a bucket costs three captures.
* BiLSTM, two exact forms, float32 by default (``precision="fp16-all"`` runs it and the heads in float16):
  - every clip of the call is T frames long (no ``lengths``, or all equal to T) and T is one of the time buckets:
    cuDNN's fused bidirectional LSTM, the fastest form. Batch rows added to reach a bucket are independent of the
    real rows, so this is exact (the time axis is not padded in this form);
  - clips of mixed lengths, or a T between buckets: :class:`ExactBiLSTM`, the bidirectional weights split into two
    unidirectional cuDNN
    LSTMs per layer. The reverse direction runs on per-clip reversed inputs (index ``len_b - 1 - t`` for
    ``t < len_b``), so padding never enters either direction: padding time up to a bucket is exact, and unlike
    packed sequences it can be captured in a CUDA graph. It costs more than the fused kernel (two sequential chains).
* CUDA graphs, one per bucket, captured on first use with static input/output buffers: an input is copied into the
  smallest bucket that holds it (padded clips get length 1, padded steps are masked) and the outputs are sliced back
  to the input's shape. A shape beyond the largest bucket runs the same fast modules eagerly (exact, just without
  the graph's launch savings) and logs that once. So the buckets a runner can build are bounded (two per (batch,
  time) bucket pair), and at most ``max_buckets`` are kept: the least recently used one is dropped (with its graph
  and buffers) to make room, and rebuilt if its shape comes back.

On CPU, ``fast=True`` gives the folded float32 CNN (another ``cnn_form`` on request) and :class:`ExactBiLSTM`
without graphs (for testing the padding logic). ``fast`` sets ``torch.backends.cudnn.benchmark = True``
(process-wide) on CUDA.

Threading: the eager path runs calls concurrently; the fast path owns static buffers and graphs, so its calls are
serialised by the runner's lock.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..base import BaseRunner, Feed, check_count, check_device, check_flag
from ..errors import RuntimeInputError
from ..spec import InputSpec, ModelMetadata, metadata_from_checkpoint

logger = logging.getLogger(__name__)

STAGES = ("model", "cnn", "bilstm")
PRECISIONS = ("fp32", "fp16", "fp16-all")
CNN_FORMS = ("folded", "fused", "unfolded")
AUTO_TOLERANCE = 2e-2  # "auto": max |a - b| / max |b| allowed between a form's outputs and the folded form's
AUTO_ROUNDS = 7  # "auto": timed runs per form (interleaved, median)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_TIME_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


# --- model transforms ------------------------------------------------------------------------------------------------


def fold_conv_bn(module):
    """Fold every eval-mode BatchNorm2d into the Conv2d before it (torchvision ResNet naming); returns a new module.

    Handles ``convN``/``bnN`` attribute pairs (stem, BasicBlock, Bottleneck) and ``Sequential(Conv2d, BatchNorm2d)``
    (downsample branches). The caller's module is never modified: this works on a deep copy.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = copy.deepcopy(module).eval()
    for m in list(module.modules()):
        for suffix in ("", "1", "2", "3"):
            conv, bn = getattr(m, f"conv{suffix}", None), getattr(m, f"bn{suffix}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(m, f"conv{suffix}", fuse_conv_bn_eval(conv, bn))
                setattr(m, f"bn{suffix}", nn.Identity())
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i] = fuse_conv_bn_eval(m[i], m[i + 1])
                    m[i + 1] = nn.Identity()
    return module


class ConvReLU(nn.Module):
    """``relu(conv(x) + bias [+ residual])``: one cuDNN call on CUDA where that is safe, the same ops in sequence
    elsewhere.

    Built from a Conv2d with BatchNorm already folded into it. The residual, when given, has the output's shape.
    On CUDA, with input and output channels multiples of 8 (cuDNN's fused fp16 NHWC kernels want aligned channels; the
    RGB stem runs unfused, so that it cannot cost the whole fused form under "auto"):

    * with a residual: ``torch.cudnn_convolution_add_relu(x, w, residual, 1, bias)``;
    * without one, when the conv keeps the shape (stride 1, as many output as input channels, "same" padding):
      the same call with ``z = x`` and ``alpha = 0``. Not ``torch.cudnn_convolution_relu``: that passes its own
      uninitialised output as ``z`` (times 0), and NaN or Inf left in reused memory by an earlier call (NaN
      padding, say) would become NaN in real outputs if cuDNN reads it. ``x`` is this frame's own input: wherever
      it is not finite, the conv's output is not finite either, so ``0 * x`` changes nothing;
    * other convs (stride 2, a change of width): conv, then bias + ReLU as PyTorch does them.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"ConvReLU needs zero padding given as numbers, got {conv.padding!r} "
                             f"({conv.padding_mode})")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.fused = conv.in_channels % 8 == 0 and conv.out_channels % 8 == 0
        self.keeps_shape = (conv.in_channels == conv.out_channels and all(s == 1 for s in conv.stride) and all(
            2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True)))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if x.is_cuda and self.fused:
            if residual is not None:
                return torch.cudnn_convolution_add_relu(x, self.weight, residual, 1.0, self.bias, *args)
            if self.keeps_shape:
                return torch.cudnn_convolution_add_relu(x, self.weight, x, 0.0, self.bias, *args)
        y = nn.functional.conv2d(x, self.weight, self.bias, *args)
        return torch.relu(y if residual is None else y + residual)


class _FusedBlock(nn.Module):
    """A torchvision BasicBlock or Bottleneck (BatchNorm folded) whose convs end in their ReLU (and residual add)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        convs = [getattr(block, f"conv{i}") for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
        self.convs = nn.ModuleList(ConvReLU(c) for c in convs)
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=identity)


class FusedResNet(nn.Module):
    """A folded torchvision ResNet (classifier removed) with conv + bias (+ residual) + ReLU fused per conv."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck

        if not isinstance(getattr(net, "bn1", None), nn.Identity):
            raise ValueError("FusedResNet needs a ResNet with BatchNorm folded (fold_conv_bn first)")
        self.stem = ConvReLU(net.conv1)
        self.maxpool = net.maxpool
        layers = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(net, name):
                if not isinstance(block, (BasicBlock, Bottleneck)) or not isinstance(block.bn1, nn.Identity):
                    raise ValueError(f"FusedResNet needs folded BasicBlock/Bottleneck blocks, got {type(block)}")
                layers.append(_FusedBlock(block))
        self.blocks = nn.Sequential(*layers)
        self.avgpool = net.avgpool
        self.fc = net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.maxpool(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_cnn_form(cnn: nn.Module, form: str) -> nn.Module:
    """A new eval-mode CNN in one of :data:`CNN_FORMS` ("folded", "fused", "unfolded"); ``cnn`` is left as it is."""
    if form == "unfolded":
        return copy.deepcopy(cnn).eval()
    folded = fold_conv_bn(cnn)
    if form == "folded":
        return folded
    if form == "fused":
        return FusedResNet(folded).eval()
    raise ValueError(f"cnn form must be one of {CNN_FORMS}, got {form!r}")


class ExactBiLSTM(nn.Module):
    """A bidirectional LSTM as two unidirectional cuDNN LSTMs per layer, exact on right-padded batches.

    ``forward(x (B, T, D), lengths (B,) integer tensor) -> (B, T, 2H)``, zero at padded steps. Equal to the packed
    bidirectional LSTM at every real step whatever the padding holds, and graph-capturable (no host-side lengths,
    no packing). Build it with :meth:`from_lstm`.
    """

    def __init__(self, forward_layers, reverse_layers):
        super().__init__()
        self.fwd = nn.ModuleList(forward_layers)
        self.rev = nn.ModuleList(reverse_layers)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "ExactBiLSTM":
        """Copy the weights of a batch_first bidirectional ``nn.LSTM`` (``weight_ih_l{k}[_reverse]`` etc.).

        Raises:
            ValueError: not bidirectional, not batch_first, or with projections.
        """
        if not (lstm.bidirectional and lstm.batch_first) or getattr(lstm, "proj_size", 0):
            raise ValueError("ExactBiLSTM needs a batch_first bidirectional nn.LSTM without projections")
        ref = lstm.weight_ih_l0
        fwd, rev = [], []
        for k in range(lstm.num_layers):
            in_size = lstm.input_size if k == 0 else 2 * lstm.hidden_size
            for suffix, dest in (("", fwd), ("_reverse", rev)):
                m = nn.LSTM(in_size, lstm.hidden_size, num_layers=1, bias=lstm.bias, batch_first=True)
                m = m.to(device=ref.device, dtype=ref.dtype)
                names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
                with torch.no_grad():
                    for name in names:
                        getattr(m, f"{name}_l0").copy_(getattr(lstm, f"{name}_l{k}{suffix}"))
                dest.append(m.eval())
        return cls(fwd, rev).eval()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        steps = torch.arange(t, device=x.device).unsqueeze(0)
        lengths = lengths.to(device=x.device, dtype=torch.int64).unsqueeze(1)
        valid = steps < lengths  # (B, T)
        # Self-inverse permutation: reverses the real steps of each clip, leaves padded steps in place.
        idx = torch.where(valid, lengths - 1 - steps, steps).unsqueeze(-1)
        h = x
        side = self._side_stream(x)
        for f, r in zip(self.fwd, self.rev, strict=True):
            if side is None:
                out_f = f(h)[0]  # causal: real steps never see the padding after them
                out_r = r(h.gather(1, idx.expand(-1, -1, h.shape[-1])))[0]
            else:
                # The directions are independent: run the reverse one on a second stream, as cuDNN's bidirectional
                # kernel overlaps them (this also works under CUDA-graph capture: the streams fork and rejoin).
                main = torch.cuda.current_stream(x.device)
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    out_r = r(h.gather(1, idx.expand(-1, -1, h.shape[-1])))[0]
                out_f = f(h)[0]
                main.wait_stream(side)
            out_r = out_r.gather(1, idx.expand(-1, -1, out_r.shape[-1]))
            h = torch.cat([out_f, out_r], dim=-1)
        return h.masked_fill(~valid.unsqueeze(-1), 0.0)  # a select: NaN/Inf in the padding cannot leak through

    def _side_stream(self, x: torch.Tensor):
        if not x.is_cuda:
            return None
        streams = self.__dict__.setdefault("_streams", {})
        if x.device not in streams:
            streams[x.device] = torch.cuda.Stream(device=x.device)
        return streams[x.device]

    def flatten(self) -> "ExactBiLSTM":
        """``flatten_parameters`` on every cuDNN LSTM (contiguous weights after a move)."""
        for m in list(self.fwd) + list(self.rev):
            m.flatten_parameters()
        return self


def exact_bilstm(lstm: nn.LSTM) -> ExactBiLSTM:
    """:class:`ExactBiLSTM` with the weights of a bidirectional, batch_first ``nn.LSTM`` (copied, not shared)."""
    return ExactBiLSTM.from_lstm(lstm)


class _FastModel:
    """The fast path's modules and its two stages on padded inputs (shapes (Bb, Tb, ...), lengths on device).

    ``cnn_forms``: the CNN forms to build (:data:`CNN_FORMS`); a call names the one it runs. The first is required;
    the others are candidates ("auto"), skipped with a warning when they cannot be built for this CNN.
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


class _Bucket:
    """Static buffers and the CUDA graph of one (batch, time) bucket, running one CNN form."""

    def __init__(self, fast: _FastModel, shape: tuple, device, use_graph: bool, full_length: bool = False,
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
            # Warm up on a side stream (cuDNN autotuning, lazy init), then capture: the pattern of shared/probes.
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


def _time_buckets(buckets: dict, rounds: int) -> dict:
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


def _max_rel_diff(out: dict, ref: dict) -> float:
    """max |out - ref| / max |ref| over every output (inf when non-finite)."""
    worst = 0.0
    for key, r in ref.items():
        o = out[key].float()
        if not torch.isfinite(o).all():
            return float("inf")
        scale = max(float(r.float().abs().max()), 1e-12)
        worst = max(worst, float((o - r.float()).abs().max()) / scale)
    return worst


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
            the three that agree with "folded"; see the module docstring). None means "auto" on CUDA and "folded" on
            CPU (where the forms compute the same ops and timing them is pointless). Ignored by the bilstm stage.
            Defaults to None.
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
        from ..checkpoint import CheckpointError, load_checkpoint

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
            cnn_form = "auto" if (self.fast and on_cuda) else "folded"
        if cnn_form not in CNN_FORMS + ("auto",):
            raise RuntimeInputError(f"cnn_form must be one of {CNN_FORMS + ('auto',)}, got {cnn_form!r}")
        if cnn_form != "folded" and not self.fast:
            raise RuntimeInputError(f"cnn_form={cnn_form!r} applies to the fast path (fast=True); the eager path runs "
                                    "the checkpoint's modules as they are")
        self.cnn_form = cnn_form
        self.cuda_graphs = bool(cuda_graphs) and on_cuda and self.fast
        self.channels_last = bool(channels_last)
        bb, tb = buckets if buckets is not None else (DEFAULT_BATCH_BUCKETS, DEFAULT_TIME_BUCKETS)
        self.batch_buckets, self.time_buckets = _check_buckets(bb, "batch"), _check_buckets(tb, "time")
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
        bidirectional kernel); the others pad time to a bucket (see the module docstring).
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
        self._fast_model = _FastModel(self.checkpoint.model, self.stage, self.device, cnn_dtype, lstm_dtype,
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

    def _bucket_for(self, b: int, t: int, full_length: bool = False) -> Optional[_Bucket]:
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
                self._buckets[key] = self._fastest_bucket(shape, full_length)
            else:
                self._buckets[key] = _Bucket(self._fast_model, shape, self.device, self.cuda_graphs, full_length,
                                             self._large_form)
        return self._buckets[key]

    def _fastest_bucket(self, shape: tuple, full_length: bool) -> _Bucket:
        """Build the bucket in every CNN form, drop forms whose outputs leave fp16 tolerance of "folded", keep the
        fastest (timed interleaved on random frames)."""
        gen = torch.Generator().manual_seed(0)
        frames = torch.randn(shape, generator=gen)
        candidates, outputs = {}, {}
        for form in self._fast_model.cnns:  # "folded" first: it must work, the others may fail to run or capture
            try:
                bucket = _Bucket(self._fast_model, shape, self.device, self.cuda_graphs, full_length, form)
                bucket.x.copy_(frames)
                bucket.lengths.fill_(shape[1])  # every step real: the comparison covers every frame
                outputs[form] = {k: v.clone() for k, v in bucket.run().items()}
            except (RuntimeError, ValueError) as e:
                if form == "folded":
                    raise
                logger.warning("%s: CNN form %r failed at %s (%s); not used", self.name, form, shape[:2], e)
                continue
            candidates[form] = bucket
        for form in [f for f in candidates if f != "folded"]:
            diff = _max_rel_diff(outputs[form], outputs["folded"])
            if not diff <= AUTO_TOLERANCE:
                logger.warning("%s: CNN form %r differs from 'folded' by %.2g (> %g) at %s; not used", self.name,
                               form, diff, AUTO_TOLERANCE, shape[:2])
                del candidates[form]
        seconds = _time_buckets(candidates, AUTO_ROUNDS)
        best = min(seconds, key=seconds.get)
        logger.info("%s: bucket %s uses CNN form %r (%s)", self.name, shape[:2], best,
                    ", ".join(f"{f} {1e3 * t:.3f} ms" for f, t in seconds.items()))
        chosen = candidates[best]
        chosen.x.zero_()
        chosen.lengths.fill_(1)  # host_lengths is None: the next call copies its own
        return chosen

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


def _check_buckets(values: Any, what: str) -> tuple:
    try:
        vals = tuple(int(v) for v in values)
    except (TypeError, ValueError) as e:
        raise RuntimeInputError(f"{what} buckets must be a sequence of positive integers, got {values!r}") from e
    if not vals or min(vals) < 1 or list(vals) != sorted(set(vals)):
        raise RuntimeInputError(f"{what} buckets must be strictly increasing positive integers, got {values!r}")
    return vals
