"""GPU checks of the runtime (auto-skipped without CUDA): the fast PyTorch path against the eager fp32 model,
padded-batch exactness across buckets, CUDA tensors in/out, streaming on the GPU, cuda-python buffers, and the real
TensorRT path (skipped unless TensorRT is installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG  # noqa: E402

import runtime
from runtime.streaming import StreamingClassifier

pytestmark = pytest.mark.gpu
H, W = TINY_CONFIG.frame_size
# (B, T, lengths): bucket-sized, padded in B and T, beyond T=32, and a shape past the largest default bucket.
SHAPES = [(1, 16, None), (3, 5, [5, 2, 1]), (8, 16, None), (2, 33, [33, 17]), (65, 2, None)]
TOL = {"fp16": 2e-3, "fp32": 1e-3, "fp16-all": 1e-2}  # fp32 allows TF32 convolutions (cuDNN's default)


def _rel(a, b):
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def _reference(model, x, lengths):
    with torch.no_grad():
        return model(x, None if lengths is None else torch.tensor(lengths))


@pytest.mark.parametrize("precision", ["fp16", "fp32", "fp16-all"])
def test_fast_path_matches_eager_fp32(tiny_checkpoint, tiny_model, precision):
    with runtime.load(tiny_checkpoint, device="cuda", precision=precision) as r:
        assert r.fast and r.cuda_graphs
        for b, t, lengths in SHAPES:
            x = torch.randn(b, t, 3, H, W, generator=torch.Generator().manual_seed(b + t))
            ref_frame, ref_clip = _reference(tiny_model, x, lengths)
            out = r.infer(x.cuda(), None if lengths is None else torch.tensor(lengths))
            frame, clip = out["frame_logits"].cpu(), out["clip_logits"].cpu()
            mask = torch.ones(b, t, dtype=torch.bool) if lengths is None else (
                torch.arange(t)[None] < torch.tensor(lengths)[:, None])
            assert frame.shape == (b, t, 3) and clip.shape == (b, 3)
            assert _rel(frame[mask], ref_frame[mask]) <= TOL[precision], (b, t)
            assert _rel(clip, ref_clip) <= TOL[precision], (b, t)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"])
def test_fast_path_folds_every_backbone(tmp_path, backbone):
    """MobileNetV3 and EfficientNet on the fast path: conv-BN folded fp16 channels_last CNN in CUDA graphs, within
    the fp16 tolerance of eager fp32 (Conv2dNormActivation folds as the ResNets' pairs do)."""
    from runtime.checkpoint import save_checkpoint
    from runtime.model import ModelConfig, build_random_model

    config = ModelConfig(num_classes=3, backbone=backbone, frame_size=(H, W), hidden_size=16, num_layers=1)
    model = build_random_model(config)
    save_checkpoint(tmp_path / "m.pt", model, class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)
    with runtime.load(tmp_path / "m.pt", device="cuda") as r:
        assert r.fast and r.cuda_graphs and r.precision == "fp16"
        for b, t, lengths in SHAPES[:4]:
            x = torch.randn(b, t, 3, H, W, generator=torch.Generator().manual_seed(b + t))
            ref_frame, ref_clip = _reference(model, x, lengths)
            out = r.infer(x.cuda(), None if lengths is None else torch.tensor(lengths))
            # The export's fp16 bound (1e-2): deeper, narrower networks than the tiny ResNet (not yet run on a GPU).
            assert _rel(out["clip_logits"].cpu(), ref_clip) <= 1e-2, (backbone, b, t)


def test_graphs_are_captured_per_bucket(tiny_checkpoint):
    rng = np.random.default_rng(0)
    with runtime.load(tiny_checkpoint, device="cuda") as r:
        # Full-length clips whose T is a time bucket use the fused cuDNN BiLSTM's bucket; mixed lengths, and a
        # full-length T between buckets, pad T to its bucket.
        r.infer(rng.standard_normal((3, 5, 3, H, W), dtype=np.float32))
        r.infer(rng.standard_normal((1, 16, 3, H, W), dtype=np.float32))
        r.infer(rng.standard_normal((3, 5, 3, H, W), dtype=np.float32), np.array([5, 2, 1]))
        assert set(r._buckets) == {(4, 8, False), (1, 16, True)}
        assert all(bk.graph is not None for bk in r._buckets.values())


def test_non_finite_padding_never_reaches_later_calls(tiny_checkpoint, tiny_model):
    """NaN frames in the padding of one call leave NaN activations in the graph's reused memory; no later call may
    read them."""
    x = torch.randn(4, 6, 3, H, W, generator=torch.Generator().manual_seed(11))
    lengths = [6, 6, 6, 5]  # mixed lengths: time padded to the (4, 8) bucket, the same bucket as the poisoned call
    ref_frame, ref_clip = _reference(tiny_model, x, lengths)
    with runtime.load(tiny_checkpoint, device="cuda") as r:
        poisoned = x.clone()
        poisoned[2:, 3:] = float("nan")
        first = r.infer(poisoned.cuda(), torch.tensor([6, 6, 3, 3]))
        assert torch.isfinite(first["clip_logits"]).all()
        for _ in range(3):
            out = r.infer(x.cuda(), torch.tensor(lengths))
            assert set(r._buckets) == {(4, 8, False)}
            assert torch.isfinite(out["clip_logits"]).all()
            assert _rel(out["clip_logits"].cpu(), ref_clip) <= TOL["fp16"]


def test_padded_batch_matches_single_clips(tiny_checkpoint):
    torch.manual_seed(0)
    x = torch.randn(3, 12, 3, H, W, device="cuda")
    lengths = [12, 7, 1]
    with runtime.load(tiny_checkpoint, device="cuda", precision="fp32") as r:
        batched = r.infer(x, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            alone = r.infer(x[i:i + 1, :n].contiguous())
            assert _rel(batched["clip_logits"][i], alone["clip_logits"][0]) <= 1e-3
            assert _rel(batched["frame_logits"][i, :n], alone["frame_logits"][0]) <= 1e-3


def test_cuda_in_cuda_out_numpy_in_numpy_out(tiny_checkpoint):
    with runtime.load(tiny_checkpoint) as r:  # device=None picks CUDA, fast=None turns the fast path on
        assert r.device.type == "cuda" and r.fast
        x = torch.randn(2, 4, 3, H, W, device="cuda")
        out = r.infer(x)
        assert out["clip_logits"].is_cuda and out["clip_logits"].dtype == torch.float32
        out_np = r.infer(x.cpu().numpy())
        assert isinstance(out_np["clip_logits"], np.ndarray)
        np.testing.assert_allclose(out_np["clip_logits"], out["clip_logits"].cpu().numpy(), rtol=1e-5, atol=1e-6)
        first = out["clip_logits"].clone()
        r.infer(torch.randn(2, 4, 3, H, W, device="cuda"))
        assert torch.equal(first, out["clip_logits"])  # returned tensors are not the static graph buffers


def test_streaming_on_gpu_matches_full_model(tiny_checkpoint, tiny_model):
    window = 8
    frames = torch.randn(11, 3, H, W, generator=torch.Generator().manual_seed(3))
    with StreamingClassifier(tiny_checkpoint, window=window, device="cuda") as stream:
        for n in range(1, len(frames) + 1):
            res = stream.push(frames[n - 1].cuda())
            k = min(n, window)
            ref_frame, ref_clip = _reference(tiny_model, frames[None, n - k:n], None)
            assert _rel(torch.from_numpy(res.clip_logits), ref_clip[0]) <= TOL["fp16"]
            assert _rel(torch.from_numpy(res.frame_logits), ref_frame[0, -1]) <= 5 * TOL["fp16"]


def test_cuda_python_buffers_round_trip():
    pytest.importorskip("cuda.bindings")
    from runtime.cuda_mem import CudaApi, DeviceBuffer

    cuda = CudaApi()
    info = cuda.device_info(0)
    major, minor = torch.cuda.get_device_capability(0)
    assert info["compute_capability"] == f"{major}.{minor}"
    stream = cuda.stream_create()
    dev, host = DeviceBuffer(cuda), DeviceBuffer(cuda, pinned_host=True)
    try:
        data = np.arange(1000, dtype=np.float32)
        assert dev.ensure(data.nbytes) and host.ensure(data.nbytes)
        assert not dev.ensure(data.nbytes // 2)  # reused, not reallocated
        host.view(data.nbytes)[:] = data.view(np.uint8)
        cuda.memcpy_htod_async(dev.ptr, host.ptr, data.nbytes, stream)
        host.view(data.nbytes)[:] = 0
        cuda.memcpy_dtoh_async(host.ptr, dev.ptr, data.nbytes, stream)
        cuda.stream_synchronize(stream)
        np.testing.assert_array_equal(host.view(data.nbytes).view(np.float32), data)
    finally:
        dev.free()
        host.free()
        cuda.stream_destroy(stream)


def _fp16_engine(checkpoint, tmp_path, profiles):
    """An fp16 model engine of ``checkpoint`` built with full TensorRT (skips without TensorRT and cuda-python)."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda.bindings")
    from export.to_onnx import export_onnx
    from export.to_trt import build_engine

    onnx_path = export_onnx(checkpoint, tmp_path / "onnx", precision="fp16").paths["model"]
    return build_engine(onnx_path, tmp_path / "model.engine", profiles=profiles).engine_path


@pytest.mark.trt
def test_tensorrt_engine_matches_eager(tiny_checkpoint, tiny_model, tmp_path):
    engine = _fp16_engine(tiny_checkpoint, tmp_path, ["batch=1:2:4,time=1:8:16"])
    for graphs in (False, True):
        with runtime.load(engine, cuda_graphs=graphs) as r:
            assert r.input_spec.batch_range == (1, 4) and r.input_spec.time_range == (1, 16)
            x = torch.randn(3, 6, 3, H, W)
            lengths = [6, 4, 1]
            ref_frame, ref_clip = _reference(tiny_model, x, lengths)
            for inp in (x.numpy(), x.cuda()):
                out = r.infer(inp, np.array(lengths))
                clip = out["clip_logits"] if isinstance(out["clip_logits"], np.ndarray) else out[
                    "clip_logits"].cpu().numpy()
                assert _rel(torch.from_numpy(clip), ref_clip) <= 1e-2
            with pytest.raises(runtime.RuntimeInputError, match="batch=1:5:5"):
                r.infer(np.zeros((5, 2, 3, H, W), np.float32))


@pytest.mark.trt
def test_tensorrt_graphs_replay_correctly_when_shapes_alternate(tiny_checkpoint, tiny_model, tmp_path):
    # One context keeps one CUDA graph per (profile, shape); replaying shape A after shape B ran must still give
    # shape A's answer (profile, shapes and addresses are set again before each replay).
    engine = _fp16_engine(tiny_checkpoint, tmp_path, ["batch=1:1:2,time=1:8:16", "batch=3:4:8,time=1:8:16"])
    shapes = [(1, 5, None), (4, 8, [8, 2, 5, 1]), (2, 3, [3, 1]), (1, 5, None), (4, 8, [8, 2, 5, 1])]
    with runtime.load(engine, cuda_graphs=True) as r:
        for i, (b, t, lengths) in enumerate(shapes * 2):
            x = torch.randn(b, t, 3, H, W, generator=torch.Generator().manual_seed(i % len(shapes)))
            _, ref_clip = _reference(tiny_model, x, lengths)
            out = r.infer(x.numpy(), None if lengths is None else np.array(lengths))
            assert _rel(torch.from_numpy(out["clip_logits"]), ref_clip) <= 1e-2, (i, b, t)


@pytest.mark.trt
def test_tensorrt_torch_cuda_path_on_the_default_stream_and_at_an_offset(tiny_checkpoint, tiny_model, tmp_path):
    # The torch path: a view at an offset (not 256-byte aligned) is copied, and the legacy default stream is swapped
    # for the runner's own stream; results must match either way.
    engine = _fp16_engine(tiny_checkpoint, tmp_path, ["batch=1:2:4,time=1:8:16"])
    big = torch.randn(4 * 6 * 3 * H * W + 7).cuda()
    x = big[7:].view(4, 6, 3, H, W)  # 28 bytes past an aligned allocation
    assert x.data_ptr() % 256
    _, ref_clip = _reference(tiny_model, x.cpu(), None)
    with runtime.load(engine) as r:
        assert torch.cuda.current_stream().cuda_stream == 0
        out = r.infer(x)
        assert r._torch_stream is not None  # the engine ran on the runner's own stream, not stream 0
        assert _rel(out["clip_logits"].cpu(), ref_clip) <= 1e-2
        with torch.cuda.stream(torch.cuda.Stream()):
            assert torch.cuda.current_stream().cuda_stream != 0
            out = r.infer(x)
        assert _rel(out["clip_logits"].cpu(), ref_clip) <= 1e-2
