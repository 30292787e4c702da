"""Runtime API on CPU with the real libraries: ONNX Runtime and PyTorch runners against the eager model, every bad
input, threads, preprocessing, classification, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import torch

import runtime
from runtime.errors import RuntimeInputError
from runtime.preprocess import preprocess_frames
from runtime.streaming import StreamingClassifier

pytest.importorskip("onnxruntime")

from conftest import (  # noqa: E402
    TINY_CLASSES,
    TINY_CONFIG,
    TINY_MEAN,
    TINY_STD,
    assert_threads_agree_with_one_thread,
    modules_loaded_by,
)

H, W = TINY_CONFIG.frame_size
# (B, T, lengths): a single frame, one full clip, and padded batches whose shortest clip is 1 frame long.
SHAPES = [(1, 1, None), (2, 6, None), (3, 7, [7, 2, 1]), (4, 5, [5, 5, 3, 1])]


@pytest.fixture(scope="module")
def onnx_paths(tiny_checkpoint, tmp_path_factory):
    from export.to_onnx import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx"), precision="fp32").paths


@pytest.fixture(scope="module")
def ort_model(onnx_paths):
    with runtime.load(onnx_paths["model"], device="cpu") as r:
        yield r


@pytest.fixture(scope="module")
def torch_model(tiny_checkpoint):
    with runtime.load(tiny_checkpoint, device="cpu") as r:
        yield r


def _frames(b, t, seed=0):
    return torch.randn(b, t, 3, H, W, generator=torch.Generator().manual_seed(seed)).numpy()


def _reference(model, x, lengths):
    with torch.no_grad():
        lt = None if lengths is None else torch.tensor(lengths)
        frame, clip = model(torch.from_numpy(x), lt)
    return frame.numpy(), clip.numpy()


def _assert_close(out, ref, lengths, rel=1e-4):
    frame_ref, clip_ref = ref
    b, t = frame_ref.shape[:2]
    mask = np.ones((b, t), bool) if lengths is None else np.arange(t)[None] < np.asarray(lengths)[:, None]
    got_frame = out["frame_logits"][mask]
    assert out["frame_logits"].shape == frame_ref.shape and out["clip_logits"].shape == clip_ref.shape
    assert np.linalg.norm(got_frame - frame_ref[mask]) <= rel * np.linalg.norm(frame_ref[mask])
    assert np.linalg.norm(out["clip_logits"] - clip_ref) <= rel * np.linalg.norm(clip_ref)


# --- agreement ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,t,lengths", SHAPES)
@pytest.mark.parametrize("which", ["ort", "torch"])
def test_runner_matches_eager_model(which, b, t, lengths, request, tiny_model):
    runner = request.getfixturevalue({"ort": "ort_model", "torch": "torch_model"}[which])
    x = _frames(b, t, seed=b * 10 + t)
    out = runner.infer(x, None if lengths is None else np.asarray(lengths, np.int64))
    assert set(out) == {"frame_logits", "clip_logits"}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in out.values())
    _assert_close(out, _reference(tiny_model, x, lengths), lengths)


def test_padded_clip_equals_unpadded_clip(ort_model):
    """Padding a clip inside a batch changes nothing for its real frames (exact padded batches)."""
    x = _frames(2, 6, seed=3)
    alone = ort_model.infer(x[1:2, :3])
    batched = ort_model.infer(x, np.array([6, 3]))
    np.testing.assert_allclose(batched["clip_logits"][1], alone["clip_logits"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched["frame_logits"][1, :3], alone["frame_logits"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", ["cnn", "bilstm"])
def test_stage_runners_compose_to_the_model(stage, onnx_paths, tiny_checkpoint, tiny_model):
    x = _frames(2, 4, seed=5)
    lengths = np.array([4, 2])
    with runtime.load(onnx_paths[stage]) as ort_stage, runtime.load(tiny_checkpoint, stage=stage) as torch_stage:
        assert ort_stage.stage == torch_stage.stage == stage
        if stage == "cnn":
            with torch.no_grad():
                ref = tiny_model.extract_features(torch.from_numpy(x)).numpy()
            for r in (ort_stage, torch_stage):
                feats = r.infer(x)["features"]
                assert feats.shape == (2, 4, TINY_CONFIG.feature_dim)
                np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
        else:
            feats = torch.randn(2, 4, TINY_CONFIG.feature_dim).numpy()
            with torch.no_grad():
                ref = tiny_model.classify(torch.from_numpy(feats), torch.from_numpy(lengths))
            for r in (ort_stage, torch_stage):
                _assert_close(r.infer(feats, lengths), (ref[0].numpy(), ref[1].numpy()), lengths)


def test_torch_tensor_in_gives_torch_tensor_out(ort_model, torch_model):
    x = torch.from_numpy(_frames(2, 3, seed=7))
    for r in (ort_model, torch_model):
        out = r.infer(x, torch.tensor([3, 1]))
        assert isinstance(out["clip_logits"], torch.Tensor) and out["clip_logits"].device == x.device
    a = ort_model.infer(x)["clip_logits"].numpy()
    b = torch_model.infer(x.numpy())["clip_logits"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_runner_attributes(ort_model, torch_model, onnx_paths):
    for r, backend in ((ort_model, "onnxruntime"), (torch_model, "torch")):
        assert r.backend_name == backend and r.stage == "model"
        assert r.metadata.class_names == TINY_CLASSES
        assert r.metadata.mean == TINY_MEAN and r.metadata.std == TINY_STD
        assert r.input_spec.frame_size == (H, W) and r.input_spec.input_name == "frames"
        assert r.input_spec.batch_range == (1, None)
    assert ort_model.provider == "CPUExecutionProvider"
    with runtime.load(onnx_paths["bilstm"]) as r:
        assert r.input_spec.input_name == "features" and r.input_spec.item_shape == (TINY_CONFIG.feature_dim,)


def test_classify_returns_labels_and_probabilities(ort_model):
    x = _frames(2, 5, seed=9)
    res = ort_model.classify(x, np.array([5, 2]), top_k=2)
    logits = ort_model.infer(x, np.array([5, 2]))["clip_logits"]
    assert res.probs.shape == (2, 2) and res.indices.shape == (2, 2)
    assert np.all(res.probs[:, 0] >= res.probs[:, 1])
    assert list(res.indices[:, 0]) == list(logits.argmax(axis=1))
    assert res.labels[0][0] == TINY_CLASSES[int(logits[0].argmax())]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(res.probs[:, 0], p.max(1), rtol=1e-5)
    assert [len(f) for f in res.frame_labels] == [5, 2]
    assert res.frame_probs.shape == (2, 5, 2)
    for bad in (4, 0, True, 1.0):
        with pytest.raises(RuntimeInputError, match=r"top_k must be an integer in 1\.\.3"):
            ort_model.classify(x, top_k=bad)


def test_lifecycle_and_del_warning(tiny_checkpoint, caplog):
    r = runtime.load(tiny_checkpoint)
    assert not r.is_active
    with r:
        assert r.is_active
    assert not r.is_active
    r2 = runtime.load(tiny_checkpoint)
    r2.activate()
    with caplog.at_level("WARNING", logger="runtime.base"):
        r2.__del__()
    assert "never deactivated" in caplog.text and not r2.is_active
    caplog.clear()
    r3 = runtime.load(tiny_checkpoint, device="cpu")
    r3.infer(np.zeros((1, 1, 3, H, W), np.float32))  # activated lazily, as load() documents: no warning
    with caplog.at_level("WARNING", logger="runtime.base"):
        r3.__del__()
    assert caplog.text == "" and not r3.is_active


# --- preprocessing -----------------------------------------------------------------------------------------------


def test_preprocess_frames_normalises_and_checks_size():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(4, H, W, 3), dtype=np.uint8)
    x = preprocess_frames(clip, TINY_MEAN, TINY_STD, (H, W))
    assert x.shape == (1, 4, 3, H, W) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (clip[1, 2, 3, 0] / 255.0 - TINY_MEAN[0]) / TINY_STD[0]
    assert x[0, 1, 0, 2, 3] == pytest.approx(expected, rel=1e-6)
    batch = rng.integers(0, 256, size=(2, 3, H, W, 3), dtype=np.uint8)
    assert preprocess_frames(batch, TINY_MEAN, TINY_STD).shape == (2, 3, 3, H, W)
    big = rng.integers(0, 256, size=(2, 2 * H, 2 * W, 3), dtype=np.uint8)
    with pytest.raises(RuntimeInputError, match=f"{2 * H}x{2 * W}.*takes {H}x{W}.*resize=True"):
        preprocess_frames(big, TINY_MEAN, TINY_STD, (H, W))
    assert preprocess_frames(big, TINY_MEAN, TINY_STD, (H, W), resize=True).shape == (1, 2, 3, H, W)
    with pytest.raises(RuntimeInputError, match="uint8"):
        preprocess_frames(clip.astype(np.float32), TINY_MEAN, TINY_STD)
    with pytest.raises(RuntimeInputError, match=r"\(T, H, W, 3\)"):
        preprocess_frames(clip[0, 0], TINY_MEAN, TINY_STD)
    with pytest.raises(RuntimeInputError, match="channels last"):
        preprocess_frames(clip[..., :2], TINY_MEAN, TINY_STD)


def test_preprocess_then_infer_matches_manual_normalisation(ort_model):
    clip = np.random.default_rng(1).integers(0, 256, size=(3, H, W, 3), dtype=np.uint8)
    manual = ((clip / 255.0 - np.array(TINY_MEAN)) / np.array(TINY_STD)).transpose(0, 3, 1, 2)[None]
    a = ort_model.infer(preprocess_frames(clip, ort_model.metadata.mean, ort_model.metadata.std, (H, W)))
    b = ort_model.infer(manual.astype(np.float32))
    np.testing.assert_allclose(a["clip_logits"], b["clip_logits"], rtol=1e-5, atol=1e-6)


# --- bad input -----------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("rank", lambda: (np.zeros((2, 3, H, W), np.float32), None), r"5 dims \(B, T, 3, 16, 16\).*x\[None\]"),
    ("channels_last", lambda: (np.zeros((1, 2, H, W, 3), np.float32), None), "preprocess_frames"),
    ("frame_size", lambda: (np.zeros((1, 2, 3, 8, 8), np.float32), None), "8x8 .*takes 16x16"),
    ("dtype_float64", lambda: (np.zeros((1, 2, 3, H, W), np.float64), None), "must be float32, got float64"),
    ("dtype_uint8", lambda: (np.zeros((1, 2, 3, H, W), np.uint8), None), "uint8 .*preprocess_frames"),
    ("type_list", lambda: ([[0.0]], None), "numpy array or a torch tensor"),
    ("empty_batch", lambda: (np.zeros((0, 2, 3, H, W), np.float32), None), "at least one clip"),
    ("lengths_shape", lambda: (np.zeros((2, 3, 3, H, W), np.float32), np.array([3])), r"shape \(2,\)"),
    ("lengths_float", lambda: (np.zeros((2, 3, 3, H, W), np.float32), np.array([3.0, 1.0])), "integers"),
    ("lengths_bool", lambda: (np.zeros((2, 3, 3, H, W), np.float32), np.array([True, True])), "integers"),
    ("lengths_zero", lambda: (np.zeros((2, 3, 3, H, W), np.float32), np.array([3, 0])), r"1\.\.T=3.*min 0"),
    ("lengths_over_t", lambda: (np.zeros((2, 3, 3, H, W), np.float32), np.array([4, 1])), r"1\.\.T=3.*max 4"),
    ("lengths_empty", lambda: (np.zeros((2, 3, 3, H, W), np.float32), []), r"shape \(2,\).*empty"),
]


@pytest.mark.parametrize("which", ["ort", "torch"])
@pytest.mark.parametrize("case,make,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_one_clear_error(which, case, make, match, request):
    runner = request.getfixturevalue({"ort": "ort_model", "torch": "torch_model"}[which])
    x, lengths = make()
    with pytest.raises(RuntimeInputError, match=match) as info:
        runner.infer(x, lengths)
    assert isinstance(info.value, ValueError)


def test_nan_inf_rejected_unless_turned_off(ort_model, onnx_paths):
    x = _frames(1, 2)
    x[0, 1, 2, 3, 4] = np.nan
    with pytest.raises(RuntimeInputError, match="frames of clip 0 hold NaN or Inf at step 1"):  # checked by default
        ort_model.infer(x)
    assert ort_model.infer(x, check_finite=False)["clip_logits"].shape == (1, 3)
    with runtime.load(onnx_paths["model"], check_finite=False) as unchecked:
        x[0, 1, 2, 3, 4] = np.inf
        assert unchecked.infer(torch.from_numpy(x))["clip_logits"].shape == (1, 3)
        with pytest.raises(RuntimeInputError, match="frames of clip 0 hold NaN or Inf at step 1"):
            unchecked.infer(torch.from_numpy(x), check_finite=True)


def test_cnn_stage_rejects_lengths_and_classify(onnx_paths):
    with runtime.load(onnx_paths["cnn"]) as r:
        with pytest.raises(RuntimeInputError, match="takes no lengths"):
            r.infer(_frames(1, 2), np.array([2]))
        with pytest.raises(RuntimeInputError, match="classify needs a model or bilstm"):
            r.classify(_frames(1, 2))


def test_features_of_wrong_width_rejected(onnx_paths):
    with runtime.load(onnx_paths["bilstm"]) as r:
        with pytest.raises(RuntimeInputError, match=r"F = 512.*\(1, 2, 7\)"):
            r.infer(np.zeros((1, 2, 7), np.float32))


# --- bad files -----------------------------------------------------------------------------------------------------


def test_files_that_are_not_what_they_say(tmp_path, tiny_checkpoint, onnx_paths):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RuntimeInputError, match="not a loadable ONNX model"):
        runtime.load(noise)
    zipped = tmp_path / "archive.engine"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(RuntimeInputError, match="zip archive"):
        runtime.load(zipped)
    ckpt_as_onnx = tmp_path / "ckpt.onnx"
    ckpt_as_onnx.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(RuntimeInputError, match="zip archive .*PyTorch checkpoint"):
        runtime.load(ckpt_as_onnx)
    onnx_as_pt = tmp_path / "model.pt"
    onnx_as_pt.write_bytes(onnx_paths["model"].read_bytes())
    with pytest.raises(RuntimeInputError, match="neither a zip nor a pickle"):
        runtime.load(onnx_as_pt)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_paths["model"].read_bytes()[:5000])
    with pytest.raises(RuntimeInputError, match="not a loadable ONNX model"):
        runtime.load(truncated)
    broken_ckpt = tmp_path / "broken.pt"
    broken_ckpt.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(RuntimeInputError, match="not a readable checkpoint"):
        runtime.load(broken_ckpt)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(RuntimeInputError, match="empty"):
        runtime.load(tmp_path / "empty.onnx")


def test_files_damaged_inside_are_refused(tmp_path, tiny_checkpoint, onnx_paths):
    """A changed byte inside the weights still parses and runs: the export's sha256 (graphs) and the zip's CRC-32s
    (checkpoints) catch it, with a message that says so."""
    import json
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(onnx_paths["model"].parent, folder)
    report = json.loads((folder / "export_report.json").read_text())
    assert set(report["sha256"]) == {"model.onnx", "cnn.onnx", "bilstm.onnx"}
    with runtime.load(folder / "model.onnx") as r:  # intact: checked and loaded
        r.infer(np.zeros((1, 2, 3, H, W), np.float32))
    data = bytearray((folder / "model.onnx").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # inside an initializer: still a valid protobuf
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(RuntimeInputError, match="damaged or was replaced after export: its sha256"):
        runtime.load(folder / "model.onnx")
    alone = tmp_path / "alone" / "model.onnx"  # without its report nothing can tell: it loads (documented limit)
    alone.parent.mkdir()
    alone.write_bytes(bytes(data))
    runtime.load(alone).deactivate()

    ckpt = bytearray(tiny_checkpoint.read_bytes())
    ckpt[len(ckpt) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(ckpt))
    with pytest.raises(RuntimeInputError, match="fails its CRC-32 check"):
        runtime.load(flipped)

    import pickle

    pickled = tmp_path / "object.pt"
    pickled.write_bytes(pickle.dumps({"weights": object}))
    with pytest.raises(RuntimeInputError, match="never unpickles.*stopped at: Unsupported") as info:
        runtime.load(pickled)
    assert "weights_only=False" not in str(info.value)


def test_foreign_onnx_without_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["frames"], ["features"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(RuntimeInputError, match="lacks the 'cnn_bilstm_deploy' metadata"):
        runtime.load(path)


def test_load_argument_errors(tmp_path, tiny_checkpoint, onnx_paths):
    with pytest.raises(RuntimeInputError, match="does not exist"):
        runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(RuntimeInputError, match="is a directory"):
        runtime.load(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(RuntimeInputError, match="valid extensions: .engine, .onnx, .plan, .pt, .pth"):
        runtime.load(tmp_path / "model.bin")
    with pytest.raises(RuntimeInputError, match="backend 'torch' cannot read a .onnx"):
        runtime.load(onnx_paths["model"], backend="torch")
    with pytest.raises(RuntimeInputError, match=r"unknown options \['stages'\].*valid options:.*stage"):
        runtime.load(tiny_checkpoint, stages="cnn")
    with pytest.raises(RuntimeInputError, match="stage must be one of"):
        runtime.load(tiny_checkpoint, stage="lstm")
    with pytest.raises(RuntimeInputError, match="needs the fast path on a CUDA device"):
        runtime.load(tiny_checkpoint, device="cpu", precision="fp16")
    with pytest.raises(RuntimeInputError, match="not available"):
        runtime.load(onnx_paths["model"], providers=["NoSuchExecutionProvider"])
    for path in (tiny_checkpoint, onnx_paths["model"]):
        for device in ("gpu", "cuda:x", -1):
            with pytest.raises(RuntimeInputError, match=r"device must be 'cpu', 'cuda', 'cuda:N'.*got"):
                runtime.load(path, device=device)
    with pytest.raises(RuntimeInputError, match="contradicts providers"):
        runtime.load(onnx_paths["model"], device="cuda", providers=["CPUExecutionProvider"])
    # An int device is a CUDA index for every backend: here, with no GPU provider, that is an error, not the CPU.
    with pytest.raises(RuntimeInputError, match="device 'cuda:1' asked for, but this onnxruntime has no GPU"):
        runtime.load(onnx_paths["model"], device=1)
    with pytest.raises(RuntimeInputError, match="providers must be a list"):
        runtime.load(onnx_paths["model"], providers="CPUExecutionProvider")
    for threads in (2.7, "2", True, 0):
        with pytest.raises(RuntimeInputError, match="intra_op_threads must be an integer >= 1"):
            runtime.load(onnx_paths["model"], intra_op_threads=threads)
    with pytest.raises(RuntimeInputError, match="allow_spinning must be True or False"):
        runtime.load(onnx_paths["model"], allow_spinning="no")
    with pytest.raises(RuntimeInputError, match="device must be"):
        StreamingClassifier(tiny_checkpoint, device="gpu")


# --- threads and memory --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_fast_model(tiny_checkpoint):
    # The fast path on CPU: shared static buffers per bucket, calls serialised by the runner's lock. Two buckets
    # kept at most, so that the threads' shapes keep replacing them.
    r = runtime.load(tiny_checkpoint, device="cpu", fast=True)
    r.max_buckets = 2
    with r:
        yield r


@pytest.mark.parametrize("which", ["ort", "torch", "torch_fast"])
def test_threads_give_the_same_results_as_one_thread(which, request):
    runner = request.getfixturevalue(f"{which}_model")
    # Tiny inputs (1-2 frames) keep 8 x 200 calls quick.
    inputs = [(_frames(1 + i % 2, 1 + i % 2, seed=i), None if i % 2 == 0 else np.array([2, 1]))
              for i in range(6)]
    assert_threads_agree_with_one_thread(runner, inputs)


@pytest.mark.parametrize("which", ["ort", "torch", "torch_fast"])
def test_deactivate_while_other_threads_infer(which, tiny_checkpoint, onnx_paths):
    """deactivate() from one thread while others call infer(): it waits for the calls in flight, later calls
    activate the runner again, and every call returns the right outputs (none sees released resources)."""
    path = onnx_paths["model"] if which == "ort" else tiny_checkpoint
    options = {"fast": True} if which == "torch_fast" else {}
    runner = runtime.load(path, device="cpu", **options)
    x = _frames(2, 2, seed=5)
    expected = runner.infer(x)["clip_logits"]
    errors, results = [], []
    stop = threading.Event()

    def call():
        try:
            while not stop.is_set():
                results.append(np.array_equal(runner.infer(x)["clip_logits"], expected))
        except Exception as e:  # surfaced below
            errors.append(e)

    pool = [threading.Thread(target=call) for _ in range(3)]
    for t in pool:
        t.start()
    try:
        for _ in range(15):
            runner.deactivate()
            time.sleep(0.005)
    finally:
        stop.set()
        for t in pool:
            t.join()
        runner.deactivate()
    assert not errors, errors[:3]
    assert results and all(results)
    assert not runner.is_active and runner._in_flight == 0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ort", "torch", "stream", "openvino"])
def test_ten_thousand_calls_do_not_grow_memory(which, request, onnx_paths):
    """10,000 calls after a warm-up: Python objects (tracemalloc) and the process's resident memory (native arenas
    and allocators) stay flat. Keeping every result alive would add ~4 MB of Python objects: 60x the bound."""
    import tracemalloc

    x, lengths = _frames(2, 2, seed=1), np.array([2, 1])
    if which == "stream":
        runner = StreamingClassifier(onnx_paths["model"].parent, window=4)
        frame = x[0, 0]

        def call():
            return runner.push(frame)
    elif which == "openvino":  # two sessions per call: the CNN on OpenVINO, the BiLSTM on the CPU EP
        from runtime.backends.openvino import openvino_unavailable_reason

        if openvino_unavailable_reason():
            pytest.skip(f"OpenVINO cannot run here: {openvino_unavailable_reason()}")
        runner = runtime.load(onnx_paths["model"], providers=["OpenVINOExecutionProvider"])

        def call():
            return runner.infer(x, lengths)
    else:
        runner = request.getfixturevalue({"ort": "ort_model", "torch": "torch_model"}[which])

        def call():
            return runner.infer(x, lengths)
    try:
        for _ in range(500):  # warm up allocators and arenas
            call()
        tracemalloc.start()
        rss_start = _rss_mb()
        for i in range(10_000):
            call()
            if i == 1_999:  # the first calls may still settle caches; compare the last 8,000
                rss_mid, traced_mid = _rss_mb(), tracemalloc.get_traced_memory()[0]
        rss_end, traced_end = _rss_mb(), tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        if which == "stream":
            runner.close()
        elif which == "openvino":
            runner.deactivate()
    assert traced_end - traced_mid < 64 * 1024, f"Python objects grew by {traced_end - traced_mid} bytes"
    assert rss_end - rss_mid < 8, f"RSS grew by {rss_end - rss_mid:.1f} MiB over the last 8,000 calls"
    assert rss_end - rss_start < 20, f"RSS grew by {rss_end - rss_start:.1f} MiB over 10,000 calls"


_NO_TORCH = """
import builtins, sys
real_import = builtins.__import__
def guard(name, *args, **kwargs):
    if name.split(".")[0] in ("torch", "torchvision", "train", "export"):
        raise ImportError("blocked by the test: " + name)
    return real_import(name, *args, **kwargs)
builtins.__import__ = guard
import numpy as np
import runtime
folder = sys.argv[1]
raw = np.random.default_rng(0).integers(0, 256, (5, {h}, {w}, 3), dtype=np.uint8)
with runtime.load(folder + "/model.onnx", device="cpu") as r:
    x = runtime.preprocess_frames(raw, r.metadata.mean, r.metadata.std, r.input_spec.frame_size)
    out = r.infer(x, np.array([5]))
    top = r.classify(x, top_k=2)
    try:
        r.infer(x[0])
    except runtime.RuntimeInputError as e:
        print("bad input refused:", str(e)[:40])
with runtime.open_stream(folder, window=4) as stream:
    for frame in raw:
        res = stream.push(frame)
print(out["clip_logits"].shape, res.window_frames, sorted(m for m in sys.modules if m.split(".")[0] in
      ("torch", "torchvision", "train", "export")))
"""


def test_onnx_runtime_path_needs_no_torch_and_no_training_code(onnx_paths):
    """The ONNX Runtime path (load, preprocess, infer, classify, bad input, streaming) with torch, torchvision,
    train and export unimportable, in a fresh interpreter."""
    code = _NO_TORCH.format(h=H, w=W)
    out = subprocess.run([sys.executable, "-c", code, str(onnx_paths["model"].parent)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("bad input refused: frames must have 5 dims")
    assert lines[-1] == "(1, 3) 4 []"


def test_runtime_never_imports_training_or_export_code():
    code = ("import importlib, pkgutil, sys, runtime, runtime.backends\n"
            "for pkg in (runtime, runtime.backends):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('train', 'export', 'benchmarks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_import_runtime_is_cheap():
    heavy = ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx", "onnx")
    assert modules_loaded_by("import runtime; runtime.RuntimeInputError; runtime.preprocess_frames", heavy) == []


def test_the_runtime_facade_is_the_defining_modules_objects():
    """``runtime.NAME`` (the documented API) is the very object of the module that defines NAME, not a copy."""
    import importlib

    defined_in = {"__version__": "runtime._version", "RuntimeInputError": "runtime.errors",
                  "preprocess_frames": "runtime.preprocess", "load": "runtime.backends",
                  "open_stream": "runtime.streaming", "StreamingClassifier": "runtime.streaming",
                  "StreamResult": "runtime.stream_base", "InputSpec": "runtime.spec", "ModelMetadata": "runtime.spec",
                  "BaseRunner": "runtime.base"}
    assert sorted(runtime.__all__) == sorted(defined_in)
    for name, module in defined_in.items():
        assert getattr(runtime, name) is getattr(importlib.import_module(module), name), name
    assert set(runtime.__all__) <= set(dir(runtime))
    with pytest.raises(AttributeError, match="no attribute 'TorchRunner'"):
        runtime.TorchRunner  # noqa: B018 - backends stay behind runtime.load


def test_provider_choice_for_an_int_device_and_the_session_gpu():
    from runtime.backends.ort_providers import choose_providers, gpu_device_id

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = choose_providers(gpu, 1, None)  # device=1 is cuda:1, as for the TensorRT and PyTorch runners
    assert chosen == [("TensorrtExecutionProvider", {"device_id": 1}), ("CUDAExecutionProvider", {"device_id": 1}),
                      "CPUExecutionProvider"]
    assert gpu_device_id(chosen) == 1
    assert gpu_device_id(choose_providers(gpu, "cuda", None)) == 0
    assert gpu_device_id([("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]) == 2
    assert gpu_device_id(["CUDAExecutionProvider"]) == 0 and gpu_device_id(["CPUExecutionProvider"]) is None
    assert choose_providers(gpu, "cpu", None) == ["CPUExecutionProvider"]


def test_onnx_runtime_session_is_released_at_deactivate_and_made_again(onnx_paths, tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(onnx_paths["model"].parent, folder)
    r = runtime.load(folder / "model.onnx", device="cpu")
    x = _frames(1, 2)
    first = r.infer(x)
    r.deactivate()
    assert r.session is None  # the memory goes with the session, not with the runner
    again = r.infer(x)  # activates: a new session of the same file
    assert r.session is not None and np.array_equal(again["clip_logits"], first["clip_logits"])
    r.deactivate()
    shutil.copy(folder / "cnn.onnx", folder / "model.onnx")  # replaced on disk while deactivated
    with pytest.raises(RuntimeInputError):
        r.activate()
    assert not r.is_active and r.session is None


def test_lifecycle_edge_cases(onnx_paths, tiny_checkpoint, caplog):
    """An interrupted deactivate() leaves no later call blocked; deactivate() from inside a call of the same runner
    is refused instead of waiting for itself; a runner that never ran releases the session load() made; and only a
    runner activated by infer() itself is released at garbage collection without a warning."""
    x = _frames(1, 2)
    r = runtime.load(onnx_paths["model"], device="cpu")
    r.infer(x)

    def interrupted(predicate, timeout=None):  # Ctrl-C while deactivate() waits for the calls in flight
        raise KeyboardInterrupt

    r._calls.wait_for = interrupted
    with pytest.raises(KeyboardInterrupt):
        r.deactivate()
    del r._calls.wait_for
    assert not r._closing and not r.is_active
    done = threading.Event()
    threading.Thread(target=lambda: (r.infer(x), done.set()), daemon=True).start()
    assert done.wait(30), "a call after an interrupted deactivate() stayed blocked"

    inner_errors = []
    original = r.infer_impl

    def calls_deactivate(feed):
        try:
            r.deactivate()
        except RuntimeError as e:
            inner_errors.append(str(e))
        return original(feed)

    r.infer_impl = calls_deactivate
    r.infer(x)
    del r.infer_impl
    assert inner_errors and "from inside one of its own infer() calls" in inner_errors[0]
    assert r._in_flight == 0 and r.is_active
    r.deactivate()

    idle = runtime.load(onnx_paths["model"], device="cpu")
    assert idle.session is not None  # made by load(), so that file errors surface there
    idle.deactivate()
    assert idle.session is None

    for activate in ("warmup", "activate_then_infer"):
        explicit = runtime.load(tiny_checkpoint, device="cpu", fast=True)
        if activate == "warmup":
            explicit.warmup([(1, 2)])
        else:
            explicit.activate()
            explicit.infer(x)
        caplog.clear()
        with caplog.at_level("WARNING", logger="runtime.base"):
            explicit.__del__()
        assert "never deactivated" in caplog.text, activate


def test_feature_width_comes_from_the_network():
    """ModelConfig.feature_dim is what the backbone's network really returns (measured on the meta device, here
    checked against a real forward pass), for every backbone; metadata written before feature_dim was recorded reads
    the ResNets' widths, and refuses a backbone of later days without one."""
    from runtime.model import BACKBONES, ModelConfig, build_backbone
    from runtime.spec import ModelMetadata

    old = {"graph": "model", "class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3, "frame_size": [16, 16]}
    for backbone in BACKBONES:
        config = ModelConfig(backbone=backbone, frame_size=(16, 16))
        torch.manual_seed(0)
        with torch.no_grad():
            real = build_backbone(config).eval()(torch.randn(1, 3, 16, 16))
        assert config.feature_dim == real.shape[1], backbone
        recorded = ModelMetadata.from_dict({**old, "model_config": {"backbone": backbone}, "feature_dim": 7})
        assert recorded.feature_dim == 7
        if backbone.startswith("resnet"):
            assert ModelMetadata.from_dict({**old, "model_config": {"backbone": backbone}}).feature_dim == real.shape[1]
        else:
            with pytest.raises(RuntimeInputError, match=f"no feature_dim for backbone '{backbone}'"):
                ModelMetadata.from_dict({**old, "model_config": {"backbone": backbone}})
    assert [ModelConfig(backbone=b).feature_dim for b in BACKBONES] == [512, 512, 2048, 576, 960, 1280]


def test_io_names_are_checked_in_one_place():
    """ONNX graphs and engines check their input and output names with InputSpec.check_io_names."""
    from runtime.spec import InputSpec, ModelMetadata

    meta = ModelMetadata.from_dict({"graph": "bilstm", "class_names": TINY_CLASSES, "mean": TINY_MEAN, "std": TINY_STD,
                                    "frame_size": list(TINY_CONFIG.frame_size), "feature_dim": 512})
    spec = InputSpec.for_graph("bilstm", meta)
    spec.check_io_names(["lengths", "features"], ["clip_logits", "frame_logits"], "x.onnx")  # any order
    with pytest.raises(RuntimeInputError, match=r"x.engine: a bilstm engine must have inputs \['features', "
                                                r"'lengths'\] and outputs"):
        spec.check_io_names(["features"], ["clip_logits", "frame_logits"], "x.engine", kind="engine")
    with pytest.raises(RuntimeInputError, match="x.onnx: a bilstm graph must have"):
        spec.check_io_names(["features", "lengths"], ["clip_logits"], "x.onnx")


def test_a_backbone_trained_from_scratch_keeps_batchnorm_statistics_with_momentum_0_1():
    """MobileNetV3's own momentum (0.01) would leave a short from-scratch run's statistics near their initial values;
    pretrained weights keep torchvision's value, tuned with them."""
    from runtime.model import BACKBONES, ModelConfig, build_backbone

    def momenta(config):
        return {m.momentum for m in build_backbone(config).modules() if isinstance(m, torch.nn.BatchNorm2d)}

    for backbone in BACKBONES:
        assert momenta(ModelConfig(backbone=backbone)) == {0.1}, backbone
    pretrained = ModelConfig(backbone="mobilenet_v3_small", stem="imagenet",
                             pretrained="imagenet:MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    assert momenta(pretrained) == {0.01}
