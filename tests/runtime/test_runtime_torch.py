"""PyTorch backend internals on CPU: the exact-padding BiLSTM against packed sequences, conv-BN folding, the fast
path's buckets (padding in, exact slices out) and its eager fallback beyond the largest bucket."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG  # noqa: E402

import runtime
from runtime.backends.torch_backend.bilstm import ExactBiLSTM
from runtime.backends.torch_backend.fold import fold_conv_bn
from runtime.errors import RuntimeInputError

H, W = TINY_CONFIG.frame_size


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("pad_b,pad_t", [(0, 0), (3, 5), (1, 9)])
def test_exact_bilstm_matches_packed_lstm_on_padded_buckets(tiny_model, pad_b, pad_t):
    torch.manual_seed(0)
    b, t = 4, 6
    lengths = torch.tensor([6, 3, 1, 5])
    x = torch.randn(b, t, TINY_CONFIG.feature_dim)
    with torch.no_grad():
        ref = tiny_model.run_bilstm(x, lengths)  # packed sequences: the model's definition of exact
        exact = ExactBiLSTM.from_lstm(tiny_model.lstm)
        # Pad into a bigger bucket with garbage (not zeros): real steps must not depend on it.
        xb = torch.randn(b + pad_b, t + pad_t, x.shape[2]) * 100
        xb[:b, :t] = x
        lb = torch.ones(b + pad_b, dtype=torch.long)
        lb[:b] = lengths
        got = exact(xb, lb)[:b, :t]
    mask = (torch.arange(t)[None] < lengths[:, None]).unsqueeze(-1)
    assert torch.allclose(got * mask, ref * mask, atol=1e-5, rtol=1e-5)
    assert torch.all(got[~mask.expand_as(got)] == 0)  # padded steps are exactly zero


def test_exact_bilstm_without_padding_equals_plain_bilstm(tiny_model):
    x = torch.randn(2, 5, TINY_CONFIG.feature_dim)
    with torch.no_grad():
        ref = tiny_model.lstm(x)[0]
        got = ExactBiLSTM.from_lstm(tiny_model.lstm)(x, torch.tensor([5, 5]))
    assert torch.allclose(got, ref, atol=1e-5)


def test_exact_bilstm_rejects_unidirectional():
    with pytest.raises(ValueError, match="bidirectional"):
        ExactBiLSTM.from_lstm(torch.nn.LSTM(4, 3, batch_first=True))


def test_fold_conv_bn_is_exact_and_leaves_the_model_alone(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    folded = fold_conv_bn(tiny_model.cnn)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_model.cnn.modules())
    x = torch.randn(3, 3, H, W)
    with torch.no_grad():
        ref, got = tiny_model.cnn(x), folded(x)
    assert _rel(got, ref) < 1e-5
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def fast_cpu(tiny_checkpoint):
    # Small buckets so that padding happens in both axes and the largest bucket is easy to exceed.
    with runtime.load(tiny_checkpoint, device="cpu", fast=True, buckets=((1, 2, 4), (2, 4, 8))) as r:
        yield r


@pytest.mark.parametrize("b,t,lengths", [(1, 1, None), (3, 3, [3, 1, 2]), (2, 8, [8, 5]), (4, 7, None),
                                         (5, 3, [3, 3, 1, 2, 3]), (2, 11, [11, 4])])
def test_fast_path_buckets_are_exact(fast_cpu, tiny_model, b, t, lengths):
    """Padded up to a bucket (or beyond the largest: no bucket), the outputs are sliced back exactly."""
    x = torch.randn(b, t, 3, H, W, generator=torch.Generator().manual_seed(b * t))
    lt = None if lengths is None else torch.tensor(lengths)
    with torch.no_grad():
        ref_frame, ref_clip = tiny_model(x, lt)
    out = fast_cpu.infer(x, lt)
    assert out["frame_logits"].shape == (b, t, 3) and out["clip_logits"].shape == (b, 3)
    mask = torch.ones(b, t, dtype=torch.bool) if lt is None else torch.arange(t)[None] < lt[:, None]
    assert _rel(out["frame_logits"][mask], ref_frame[mask]) < 1e-5
    assert _rel(out["clip_logits"], ref_clip) < 1e-5


def test_fast_path_reuses_buckets(fast_cpu):
    # Mixed lengths: time is padded to its bucket, so (3, 3) and (4, 4) share the (4, 4) ExactBiLSTM bucket.
    fast_cpu.infer(torch.randn(3, 3, 3, H, W), torch.tensor([3, 1, 2]))
    n = len(fast_cpu._buckets)
    fast_cpu.infer(torch.randn(4, 4, 3, H, W), torch.tensor([4, 2, 1, 3]))
    assert len(fast_cpu._buckets) == n and (4, 4, False) in fast_cpu._buckets
    # Full-length clips whose T fills a time bucket get the fused bidirectional kernel's bucket; a full-length T
    # between buckets pads time like mixed lengths do, so buckets stay bounded whatever T the calls bring.
    fast_cpu.infer(torch.randn(3, 3, 3, H, W))
    fast_cpu.infer(torch.randn(4, 3, 3, H, W), torch.tensor([3, 3, 3, 3]))
    assert len(fast_cpu._buckets) == n
    fast_cpu.infer(torch.randn(3, 4, 3, H, W))
    assert (4, 4, True) in fast_cpu._buckets and len(fast_cpu._buckets) == n + 1


def test_fast_path_keeps_at_most_max_buckets(tiny_checkpoint, tiny_model):
    """Every (B, T) a long-running app may bring: the buckets stay bounded, the least recently used goes first, and
    the outputs stay exact whether a bucket is new, kept or rebuilt."""
    with runtime.load(tiny_checkpoint, device="cpu", fast=True, buckets=((1, 2, 4), (2, 4, 8)), max_buckets=3) as r:
        gen = torch.Generator().manual_seed(3)
        for b, t in [(1, 2), (2, 4), (1, 2), (4, 8), (3, 7), (1, 1), (2, 3), (4, 5), (1, 2)]:
            x = torch.randn(b, t, 3, H, W, generator=gen)
            with torch.no_grad():
                ref_frame, ref_clip = tiny_model(x)
            out = r.infer(x)
            assert _rel(out["frame_logits"], ref_frame) < 1e-5 and _rel(out["clip_logits"], ref_clip) < 1e-5
            assert len(r._buckets) <= 3
        # The last calls, newest last: (2, 3) -> (2, 4) padded, (4, 5) -> (4, 8) padded, (1, 2) full length.
        assert list(r._buckets) == [(2, 4, False), (4, 8, False), (1, 2, True)]
    with pytest.raises(RuntimeInputError, match="max_buckets must be an integer >= 1"):
        runtime.load(tiny_checkpoint, device="cpu", fast=True, max_buckets=0)


@pytest.mark.parametrize(("option", "value"), [("fast", "no"), ("cuda_graphs", 1), ("channels_last", "False")])
def test_flags_must_be_booleans(tiny_checkpoint, option, value):
    with pytest.raises(RuntimeInputError, match=f"{option} must be True"):
        runtime.load(tiny_checkpoint, device="cpu", **{option: value})


@pytest.mark.parametrize("stage", ["cnn", "bilstm"])
def test_fast_path_stages(tiny_checkpoint, tiny_model, stage):
    with runtime.load(tiny_checkpoint, device="cpu", fast=True, stage=stage, buckets=((2,), (4,))) as r:
        if stage == "cnn":
            x = torch.randn(1, 3, 3, H, W)
            with torch.no_grad():
                ref = tiny_model.extract_features(x)
            assert _rel(r.infer(x)["features"], ref) < 1e-5
        else:
            f = torch.randn(2, 3, TINY_CONFIG.feature_dim)
            lengths = torch.tensor([3, 2])
            with torch.no_grad():
                ref = tiny_model.classify(f, lengths)
            out = r.infer(f, lengths)
            assert _rel(out["clip_logits"], ref[1]) < 1e-5
            assert r.bucket_forms == {}  # no CNN in this stage


def test_bad_buckets_rejected(tiny_checkpoint):
    for buckets in (((4, 2), (1,)), ((0, 1), (1,)), (("a",), (1,))):
        with pytest.raises(runtime.RuntimeInputError, match="buckets"):
            runtime.load(tiny_checkpoint, device="cpu", fast=True, buckets=buckets)


def test_runner_does_not_modify_a_shared_checkpoint(tiny_checkpoint):
    from runtime.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    before = copy.deepcopy(ckpt.model.state_dict())
    from runtime.backends.torch_backend.runner import TorchRunner

    with TorchRunner(ckpt, device="cpu", fast=True) as r:
        r.infer(np.zeros((1, 2, 3, H, W), np.float32))
    assert all(torch.equal(before[k], v) for k, v in ckpt.model.state_dict().items())


def test_non_finite_padding_never_reaches_real_outputs(fast_cpu, tiny_model):
    """NaN/Inf in padded steps (np.empty padding, or a bad earlier call left in a bucket) must not leak: padded steps
    are zeroed by a select, not a product (NaN * 0 is NaN)."""
    x = torch.randn(2, 6, 3, H, W, generator=torch.Generator().manual_seed(7))
    lengths = torch.tensor([6, 3])
    with torch.no_grad():
        ref_frame, ref_clip = tiny_model(x, lengths)
    poisoned = x.clone()
    poisoned[1, 3:] = float("nan")
    for run in (lambda: fast_cpu.infer(poisoned, lengths), lambda: tiny_model(poisoned, lengths)):
        with torch.no_grad():
            out = run()
        frame, clip = (out["frame_logits"], out["clip_logits"]) if isinstance(out, dict) else out
        assert torch.isfinite(clip).all()
        assert _rel(clip, ref_clip) < 1e-5
        assert _rel(frame[1, :3], ref_frame[1, :3]) < 1e-5


# --- CNN forms of the fast path (folded / fused / unfolded / auto) ----------------------------------------------------


@pytest.mark.parametrize("backbone,stem", [("resnet18", "cifar"), ("resnet50", "imagenet")])
def test_cnn_forms_compute_the_same_features(backbone, stem):
    """Every form is the same function: on CPU the fused form runs conv + bias (+ residual) + ReLU in sequence."""
    from runtime.backends.torch_backend.fold import CNN_FORMS, FusedResNet, build_cnn_form
    from runtime.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, stem=stem, frame_size=(32, 32), hidden_size=8)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.cnn(x)
        for form in CNN_FORMS:
            cnn = build_cnn_form(model.cnn, form)
            assert _rel(cnn(x), ref) < 1e-5, form
    fused = build_cnn_form(model.cnn, "fused")
    assert isinstance(fused, FusedResNet)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.ReLU)) for m in fused.modules())
    with pytest.raises(ValueError, match="cnn form"):
        build_cnn_form(model.cnn, "winograd")


def test_fused_resnet_needs_folded_batchnorm(tiny_model):
    from runtime.backends.torch_backend.fold import FusedResNet

    with pytest.raises(ValueError, match="fold_conv_bn"):
        FusedResNet(copy.deepcopy(tiny_model.cnn))


def test_conv_relu_adds_the_residual_before_the_relu():
    from runtime.backends.torch_backend.fold import ConvReLU

    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=True)
    x, residual = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        fused = ConvReLU(conv)
        assert torch.equal(fused(x), torch.relu(conv(x)))
        assert torch.equal(fused(x, residual), torch.relu(conv(x) + residual))
    with pytest.raises(ValueError, match="zero padding"):
        ConvReLU(torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    # The RGB stem stays unfused on CUDA (cuDNN's fused NHWC kernels want channels in multiples of 8).
    assert not ConvReLU(torch.nn.Conv2d(3, 64, 3)).fused and ConvReLU(torch.nn.Conv2d(64, 64, 3)).fused
    # Without a residual only shape-keeping convs fuse (z = x, alpha 0): never uninitialised memory as z.
    assert ConvReLU(torch.nn.Conv2d(64, 64, 3, padding=1)).keeps_shape
    assert ConvReLU(torch.nn.Conv2d(64, 64, 3, padding=2, dilation=2)).keeps_shape
    assert not ConvReLU(torch.nn.Conv2d(64, 64, 3, stride=2, padding=1)).keeps_shape
    assert not ConvReLU(torch.nn.Conv2d(64, 128, 3, padding=1)).keeps_shape
    assert not ConvReLU(torch.nn.Conv2d(64, 64, 3, padding=0)).keeps_shape


@pytest.mark.parametrize("form", ["fused", "unfolded", "auto"])
def test_every_cnn_form_is_exact_on_padded_buckets(tiny_checkpoint, tiny_model, form):
    x = torch.randn(3, 5, 3, H, W, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([5, 2, 4])
    with torch.no_grad():
        ref_frame, ref_clip = tiny_model(x, lengths)
    with runtime.load(tiny_checkpoint, device="cpu", fast=True, cnn_form=form, buckets=((4,), (8,))) as r:
        out = r.infer(x, lengths)
        (bucket, chosen), = r.bucket_forms.items()
        assert bucket == (4, 8, False)
        assert chosen == form or (form == "auto" and chosen in ("folded", "fused", "unfolded"))
    mask = torch.arange(5)[None] < lengths[:, None]
    assert _rel(out["frame_logits"][mask], ref_frame[mask]) < 1e-5
    assert _rel(out["clip_logits"], ref_clip) < 1e-5


def test_auto_keeps_the_fastest_form_that_agrees(tiny_checkpoint, tiny_model, caplog):
    """"auto" times the forms per bucket and never keeps one whose outputs disagree with the folded form."""
    import logging
    import time

    class Slow(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            time.sleep(0.25)  # far above the timing noise of a loaded 2-core machine
            return self.inner(x)

    class Wrong(Slow):
        def forward(self, x):
            return self.inner(x) * 1.5  # fastest of all, but a different answer

    with runtime.load(tiny_checkpoint, device="cpu", fast=True, cnn_form="auto", buckets=((1, 2), (4,))) as r:
        r.activate()
        cnns = r._fast_model.cnns
        assert set(cnns) == {"folded", "fused", "unfolded"}
        cnns["folded"], cnns["fused"] = Slow(cnns["folded"]), Wrong(cnns["fused"])
        x = torch.randn(2, 3, 3, H, W, generator=torch.Generator().manual_seed(5))
        with caplog.at_level(logging.INFO, logger="runtime.backends.torch_backend"):
            out = r.infer(x, torch.tensor([3, 2]))
        assert r.bucket_forms == {(2, 4, False): "unfolded"}
        assert "'fused' differs from 'folded'" in caplog.text and "uses CNN form 'unfolded'" in caplog.text
        # Beyond the largest bucket: "folded" (never timed there), without a graph.
        big = r.infer(torch.randn(3, 5, 3, H, W))
        assert big["clip_logits"].shape == (3, 3) and r._large_form == "folded"
    with torch.no_grad():
        ref_frame, ref_clip = tiny_model(x, torch.tensor([3, 2]))
    assert _rel(out["clip_logits"], ref_clip) < 1e-5


def test_auto_skips_a_form_that_fails(tiny_checkpoint, caplog):
    import logging

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED (a fake failure)")

    with runtime.load(tiny_checkpoint, device="cpu", fast=True, cnn_form="auto", buckets=((1,), (2,))) as r:
        r.activate()
        r._fast_model.cnns["fused"] = Broken()
        with caplog.at_level(logging.WARNING, logger="runtime.backends.torch_backend"):
            out = r.infer(np.zeros((1, 2, 3, H, W), np.float32))
        assert out["clip_logits"].shape == (1, 3)
        assert r.bucket_forms[(1, 2, True)] in ("folded", "unfolded")
        assert "CNN form 'fused' failed" in caplog.text and "CUDNN_STATUS_NOT_SUPPORTED" in caplog.text


def test_cnn_form_is_checked(tiny_checkpoint):
    # The default: "folded", on CPU and on CUDA (tests/runtime/test_runtime_gpu.py), the form measured on a GPU.
    assert runtime.load(tiny_checkpoint, device="cpu", fast=True).cnn_form == "folded"
    with pytest.raises(runtime.RuntimeInputError, match="cnn_form must be one of"):
        runtime.load(tiny_checkpoint, device="cpu", fast=True, cnn_form="winograd")
    with pytest.raises(runtime.RuntimeInputError, match="fast path"):
        runtime.load(tiny_checkpoint, device="cpu", fast=False, cnn_form="fused")
