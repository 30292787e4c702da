"""StreamingClassifier: after N pushes its output equals the full model on the same window of frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, TINY_MEAN, TINY_STD  # noqa: E402

import runtime
from runtime.errors import RuntimeInputError
from runtime.streaming import StreamingClassifier

H, W = TINY_CONFIG.frame_size
WINDOW = 4


def _full_model(model, frames):
    with torch.no_grad():
        frame, clip = model(torch.from_numpy(frames[None]))
    return frame[0, -1].numpy(), clip[0].numpy()


def _check_stream(stream, model, n_frames=7, window=WINDOW):
    frames = np.random.default_rng(0).standard_normal((n_frames, 3, H, W)).astype(np.float32)
    for n in range(1, n_frames + 1):
        res = stream.push(frames[n - 1])
        k = min(n, window)
        ref_frame, ref_clip = _full_model(model, frames[n - k:n])
        assert res.frames_seen == n and res.window_frames == k
        np.testing.assert_allclose(res.frame_logits, ref_frame, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.clip_logits, ref_clip, rtol=1e-4, atol=1e-5)
        assert res.clip_label == stream.metadata.class_names[int(ref_clip.argmax())]
    return frames


def test_stream_from_checkpoint_matches_full_model(tiny_checkpoint, tiny_model):
    with StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as stream:
        _check_stream(stream, tiny_model)
        stream.reset()
        assert stream.frames_seen == 0
        _check_stream(stream, tiny_model, n_frames=3)  # after reset the window starts empty again


def test_stream_from_onnx_export_dir_and_runner_pair(tiny_checkpoint, tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from export.to_onnx import export_onnx

    paths = export_onnx(tiny_checkpoint, tmp_path / "export", precision="fp32").paths
    with StreamingClassifier(tmp_path / "export", window=WINDOW) as stream:
        assert stream.cnn.backend_name == stream.bilstm.backend_name == "onnxruntime"
        # The two alternating sessions must not busy-wait for each other's cores.
        for r in (stream.cnn, stream.bilstm):
            assert r._options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        _check_stream(stream, tiny_model)
    with runtime.load(paths["model"]) as single:  # one session alone keeps ONNX Runtime's low-latency default
        assert single._options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with runtime.load(paths["cnn"]) as cnn, runtime.load(tiny_checkpoint, stage="bilstm", device="cpu") as bilstm:
        with StreamingClassifier((cnn, bilstm), window=WINDOW) as stream:
            _check_stream(stream, tiny_model, n_frames=5)
        assert cnn.is_active  # runners passed in belong to the caller
    # What streaming cannot run, each refused with the call that would work.
    folder = str(tmp_path / "export")
    with pytest.raises(RuntimeInputError, match=f"pass the folder that holds them: StreamingClassifier\\('{folder}'"):
        StreamingClassifier(paths["model"])
    with runtime.load(paths["model"]) as single:
        with pytest.raises(RuntimeInputError, match=f"got one model runner; pass StreamingClassifier\\('{folder}'"):
            StreamingClassifier(single)
    with pytest.raises(RuntimeInputError, match="the torch backend runs a .pt checkpoint"):
        StreamingClassifier(folder, backend="torch")


def test_cnn_runs_once_per_frame(tiny_checkpoint, tiny_model):
    with StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as stream:
        seen = []
        orig = stream.cnn.infer
        stream.cnn.infer = lambda x, *a, **k: (seen.append(tuple(x.shape)), orig(x, *a, **k))[1]
        for _ in range(6):
            stream.push(np.zeros((3, H, W), np.float32))
        assert seen == [(1, 1, 3, H, W)] * 6


def test_raw_uint8_frames_are_preprocessed(tiny_checkpoint, tiny_model):
    raw = np.random.default_rng(2).integers(0, 256, size=(3, H, W, 3), dtype=np.uint8)
    norm = runtime.preprocess_frames(raw, TINY_MEAN, TINY_STD, (H, W))[0]
    with StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as a, \
            StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as b:
        for i in range(3):
            ra, rb = a.push(raw[i]), b.push(torch.from_numpy(norm[i]))
            np.testing.assert_allclose(ra.clip_logits, rb.clip_logits, rtol=1e-5, atol=1e-6)


def test_stream_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(RuntimeInputError, match="window must be an integer >= 1"):
        StreamingClassifier(tiny_checkpoint, window=0)
    with pytest.raises(RuntimeInputError, match="neither cnn.onnx"):
        StreamingClassifier(tmp_path)
    with pytest.raises(RuntimeInputError, match="runtime_cache names one file, but streaming runs two engines"):
        StreamingClassifier(tmp_path, runtime_cache=tmp_path / "kernels.rtcache")
    with pytest.raises(RuntimeInputError, match=r"unknown options \['bogus'\] for the torch backend"):
        StreamingClassifier(tiny_checkpoint, bogus=1)
    with runtime.load(tiny_checkpoint, device="cpu") as model_runner:
        with pytest.raises(RuntimeInputError, match="separate cnn and bilstm runners"):
            StreamingClassifier(model_runner)
        with pytest.raises(RuntimeInputError, match=r"stages \('model', 'model'\)"):
            StreamingClassifier((model_runner, model_runner))
    with StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as stream:
        with pytest.raises(RuntimeInputError, match=rf"\(3, {H}, {W}\).*\({H}, {W}, 3\)"):
            stream.push(np.zeros((3, H + 1, W), np.float32))
        with pytest.raises(RuntimeInputError, match=f"takes {H}x{W}.*open the stream with resize=True"):
            stream.push(np.zeros((H * 2, W * 2, 3), np.uint8))
        with pytest.raises(RuntimeInputError, match=rf"uint8 \({H}, {W}, 3\)"):
            stream.push(np.zeros((H, W, 4), np.uint8))
        assert stream.frames_seen == 0  # nothing rejected was counted
        with pytest.raises(RuntimeInputError, match="numpy array or torch tensor"):
            stream.push([[0.0]])


def test_frames_of_mixed_kinds_share_one_window(tiny_checkpoint, tiny_model):
    """numpy, torch and raw uint8 frames (which preprocess to numpy) may alternate: the window keeps every one."""
    raw = np.random.default_rng(3).integers(0, 256, size=(6, H, W, 3), dtype=np.uint8)
    norm = runtime.preprocess_frames(raw, TINY_MEAN, TINY_STD, (H, W))[0]
    kinds = [lambda i: norm[i], lambda i: torch.from_numpy(norm[i]), lambda i: raw[i]]
    with StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as stream:
        for i in range(6):
            res = stream.push(kinds[i % 3](i))
            k = min(i + 1, WINDOW)
            assert res.frames_seen == i + 1 and res.window_frames == k
            ref_frame, ref_clip = _full_model(tiny_model, norm[i + 1 - k:i + 1])
            np.testing.assert_allclose(res.clip_logits, ref_clip, rtol=1e-4, atol=1e-5)
        stream.reset()  # a new stream may start with another kind
        res = stream.push(torch.from_numpy(norm[0]))
        assert res.frames_seen == 1 and res.window_frames == 1


def test_resize_option_resizes_raw_frames(tiny_checkpoint):
    big = np.random.default_rng(4).integers(0, 256, size=(H * 2, W * 2, 3), dtype=np.uint8)
    small = runtime.preprocess_frames(big, TINY_MEAN, TINY_STD, (H, W), resize=True)[0, 0]
    with StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu", resize=True) as a, \
            StreamingClassifier(tiny_checkpoint, window=WINDOW, device="cpu") as b:
        np.testing.assert_allclose(a.push(big).clip_logits, b.push(small).clip_logits, rtol=1e-5, atol=1e-6)


def test_runner_pair_from_different_checkpoints_is_refused(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import TINY_CLASSES, _tiny_model

    from export.to_onnx import export_onnx
    from runtime.checkpoint import save_checkpoint

    ours = export_onnx(tiny_checkpoint, tmp_path / "ours", precision="fp32").paths
    other_ckpt = save_checkpoint(tmp_path / "other.pt", _tiny_model(seed=5), class_names=TINY_CLASSES, mean=TINY_MEAN,
                                 std=TINY_STD)
    other = export_onnx(other_ckpt, tmp_path / "other", precision="fp32").paths
    with runtime.load(ours["cnn"]) as cnn, runtime.load(other["bilstm"]) as bilstm:
        with pytest.raises(RuntimeInputError, match="exported from different checkpoints"):
            StreamingClassifier((cnn, bilstm), window=WINDOW)
    renamed = save_checkpoint(tmp_path / "renamed.pt", _tiny_model(), class_names=["a", "b", "c"], mean=TINY_MEAN,
                              std=TINY_STD)
    with runtime.load(ours["cnn"]) as cnn, runtime.load(renamed, stage="bilstm", device="cpu") as bilstm:
        with pytest.raises(RuntimeInputError, match="come from different models"):
            StreamingClassifier((cnn, bilstm), window=WINDOW)


def test_open_stream_makes_a_local_stream_and_the_constructor_refuses_urls(tiny_checkpoint, tiny_model):
    with runtime.open_stream(tiny_checkpoint, window=WINDOW, device="cpu") as stream:
        assert type(stream) is StreamingClassifier and stream.window == WINDOW
        _check_stream(stream, tiny_model, n_frames=5)
    with runtime.open_stream(tiny_checkpoint, device="cpu") as stream:
        assert stream.window == 16  # the in-process default
    url = "grpc://127.0.0.1:1/cnn_bilstm_stream"  # refused before anything connects
    with pytest.raises(RuntimeInputError, match=r"served by Triton.*runtime\.open_stream\('grpc://127\.0\.0\.1:1/"):
        StreamingClassifier(url, window=WINDOW)


def test_push_and_feed_after_close_are_refused(tiny_checkpoint):
    frame = np.zeros((3, H, W), np.float32)
    refused = r"this stream is closed: push and feed are refused after close\(\); open a new stream"
    stream = runtime.open_stream(tiny_checkpoint, window=WINDOW, device="cpu")
    stream.push(frame)
    stream.close()
    assert stream.closed and not stream.cnn.is_active  # what it opened is released
    for call in (lambda: stream.push(frame), lambda: stream.feed([frame]), lambda: stream.push_feature(np.zeros(8))):
        with pytest.raises(RuntimeInputError, match=refused):
            call()
    assert not stream.cnn.is_active and not stream.bilstm.is_active  # nothing was opened again
    stream.close()  # closing again does nothing
    with runtime.load(tiny_checkpoint, stage="cnn", device="cpu") as cnn, \
            runtime.load(tiny_checkpoint, stage="bilstm", device="cpu") as bilstm:
        with StreamingClassifier((cnn, bilstm), window=WINDOW) as stream:
            stream.push(frame)
        with pytest.raises(RuntimeInputError, match=refused):
            stream.push(frame)
        assert cnn.is_active  # runners passed in stay the caller's


def test_feed_checks_its_arguments_when_called(tiny_checkpoint):
    with runtime.open_stream(tiny_checkpoint, window=WINDOW, device="cpu") as stream:
        with pytest.raises(RuntimeInputError, match="stride must be an integer >= 1"):
            stream.feed([], stride=0)  # at the call, not at the first next()
