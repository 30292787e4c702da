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


def small_buckets(runner, batch=(1, 2, 4), time=(2, 4, 8), keep=None):
    """``runner`` with small buckets (set before its first call), so that padding happens in both axes and the
    largest bucket is easy to exceed on a CPU; ``keep`` lowers how many buckets it keeps."""
    runner.batch_buckets, runner.time_buckets = batch, time
    if keep is not None:
        runner.max_buckets = keep
    return runner


@pytest.fixture(scope="module")
def fast_cpu(tiny_checkpoint):
    with small_buckets(runtime.load(tiny_checkpoint, device="cpu", fast=True)) as r:
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
    with small_buckets(runtime.load(tiny_checkpoint, device="cpu", fast=True), keep=3) as r:
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


def test_default_buckets_pad_and_slice_exactly(tiny_checkpoint, tiny_model):
    """The fixed buckets every runner uses: (3, 5) pads to (4, 8); a batch of 65 exceeds them and runs without one."""
    gen = torch.Generator().manual_seed(4)
    calls = [(torch.randn(3, 5, 3, H, W, generator=gen), torch.tensor([5, 3, 1])),
             (torch.randn(65, 2, 3, H, W, generator=gen), torch.tensor([2, 1] * 32 + [2]))]
    with runtime.load(tiny_checkpoint, device="cpu", fast=True) as r:
        for x, lengths in calls:
            with torch.no_grad():
                ref_frame, ref_clip = tiny_model(x, lengths)
            out = r.infer(x, lengths)
            mask = torch.arange(x.shape[1])[None] < lengths[:, None]
            assert _rel(out["clip_logits"], ref_clip) < 1e-5
            assert _rel(out["frame_logits"][mask], ref_frame[mask]) < 1e-5
            assert set(r._buckets) == {(4, 8, False)}


def test_removed_fast_path_options_are_refused(tiny_checkpoint):
    """The CNN forms other than folded, and the bucket options, are gone: asking for them is one clear error."""
    for option, value in (("cnn_form", "fused"), ("buckets", ((1,), (1,))), ("max_buckets", 4)):
        with pytest.raises(RuntimeInputError, match=rf"unknown options \['{option}'\] for the torch backend"):
            runtime.load(tiny_checkpoint, device="cpu", fast=True, **{option: value})


@pytest.mark.parametrize(("option", "value"), [("fast", "no"), ("cuda_graphs", 1), ("channels_last", "False")])
def test_flags_must_be_booleans(tiny_checkpoint, option, value):
    with pytest.raises(RuntimeInputError, match=f"{option} must be True"):
        runtime.load(tiny_checkpoint, device="cpu", **{option: value})


@pytest.mark.parametrize("stage", ["cnn", "bilstm"])
def test_fast_path_stages(tiny_checkpoint, tiny_model, stage):
    with small_buckets(runtime.load(tiny_checkpoint, device="cpu", fast=True, stage=stage), (2,), (4,)) as r:
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
