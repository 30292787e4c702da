"""The TensorRT runner's glue (runtime/backends/tensorrt.py, runtime/cuda_mem.py) against the labelled fakes of
tests/fakes.py (a fake ``tensorrt`` module and a fake cuda-python ``cudart`` under the real ``CudaApi``): I/O names,
profiles, shapes, buffers, streams, CUDA graphs, reports, and every refusal. The faked names are checked against the
real ``tensorrt_lean_bindings`` and ``tensorrt_rtx`` in test_trt_api_names.py; the real path runs in
tests/runtime/test_runtime_gpu.py on a GPU.
"""


from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import (  # noqa: E402  labelled fakes of TensorRT and CUDA
    _FAKE_NP,
    CLASSES,
    FEATURE_DIM,
    GPU_NAME,
    RTX_VERSION,
    C,
    FakeCudaApi,
    FakeCudart,
    Fakes,
    H,
    W,
    assert_outputs,
    frames,
    load,
    make_report,
    write_engine,
)

import runtime
from runtime.cuda_mem import CudaApi, CudaError, DeviceBuffer
from runtime.errors import RuntimeInputError


@pytest.fixture
def fakes():
    return Fakes()


@pytest.fixture
def engine(tmp_path, fakes):
    return write_engine(tmp_path, fakes)


# ======================================================================================================================
# optimization profiles
# ======================================================================================================================


def test_profiles_read_from_engine_into_input_spec(engine, fakes):
    r = load(engine, fakes)
    assert r.backend_name == "tensorrt" and r.stage == "model"
    assert [(p.batch, p.time) for p in r.input_spec.profiles] == [((1, 8), (1, 128)), ((8, 64), (1, 32))]
    assert r.input_spec.batch_range == (1, 64) and r.input_spec.time_range == (1, 128)
    assert r.metadata.class_names == CLASSES and r.input_spec.frame_size == (H, W)


def test_profile_chosen_by_shape_and_set_on_the_runner_stream(engine, fakes):
    # (B, T) -> profile: the first profile holding the shape wins (8 x 32 fits both).
    cases = [((1, 16), 0), ((8, 128), 0), ((8, 32), 0), ((9, 16), 1), ((64, 32), 1), ((20, 1), 1), ((2, 2), 0)]
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        handle = int(r.stream)
        for (b, t), want in cases:
            x = frames(b, t, seed=b * 1000 + t)
            out = r.infer(x)
            assert ctx.profile == want, (b, t)
            assert_outputs(out, x)
        # set_optimization_profile_async only when the profile changes, always on the runner's own stream.
        assert [e[1:] for e in ctx.log if e[0] == "set_profile"] == [(0, handle), (1, handle), (0, handle)]


@pytest.mark.parametrize("b,t", [(64, 33), (65, 1), (9, 64), (100, 200)])
def test_shape_outside_every_profile_names_ranges_and_the_export_command(engine, fakes, b, t):
    from export.trt_profiles import parse_profile

    r = load(engine, fakes)
    with pytest.raises(RuntimeInputError) as info:
        r.infer(frames(b, t))
    msg = str(info.value)
    assert f"batch {b} and time {t}" in msg
    assert "profile 0: batch 1..8, time 1..128" in msg and "profile 1: batch 8..64, time 1..32" in msg
    # The suggested command must run as written and cover the shape and every shape the engine took before.
    import shlex

    from export.to_trt import get_args_parser

    command = msg.split("`python -m export.to_trt ", 1)[1].split("`", 1)[0]
    args = get_args_parser().parse_args(shlex.split(command))
    assert args.out and len(args.profile) == 1
    prof = parse_profile(args.profile[0])
    assert prof["batch"][0] <= b <= prof["batch"][2] and prof["time"][0] <= t <= prof["time"][2]
    assert prof["batch"][0] <= 1 and prof["batch"][2] >= 64 and prof["time"][0] <= 1 and prof["time"][2] >= 128
    assert not r.is_active and fakes.cuda.device_allocs == 0  # refused before anything ran


def test_shape_rejected_by_the_context_is_an_error_not_garbage(engine, fakes):
    with load(engine, fakes) as r:
        fakes.trt.engines[0].contexts[0].reject_shapes = True
        with pytest.raises(RuntimeError, match="set_input_shape"):
            r.infer(frames(2, 3))


# ======================================================================================================================
# loading apart from running
# ======================================================================================================================


def test_the_loader_returns_what_runners_run_and_one_engine_feeds_several(engine, fakes):
    from runtime.backends.tensorrt import TrtRunner
    from runtime.backends.trt_engine import LoadedEngine, load_engine

    loaded = load_engine(engine, trt_module=fakes.tm, cuda_api=fakes.cuda)
    assert isinstance(loaded, LoadedEngine) and loaded.path == engine and loaded.device_index == 0
    assert loaded.metadata.class_names == CLASSES and loaded.report["precision"] == "fp16"
    assert loaded.inputs == ("frames", "lengths") and loaded.outputs == ("frame_logits", "clip_logits")
    assert [(p.batch, p.time) for p in loaded.input_spec.profiles] == [((1, 8), (1, 128)), ((8, 64), (1, 32))]
    fake_engine = fakes.trt.engines[0]
    assert fakes.trt.calls["deserialize_cuda_engine"] == 1 and fake_engine.contexts == []  # loaded, nothing runs
    # Two runners (one per thread, say) share the one deserialized engine, each with its own context.
    with TrtRunner(loaded) as a, TrtRunner(loaded, cuda_graphs=True) as b:
        x = frames(2, 5)
        assert_outputs(a.infer(x), x)
        assert_outputs(b.infer(x), x)
        assert a.engine is b.engine and len(fake_engine.contexts) == 2
    assert fakes.trt.calls["deserialize_cuda_engine"] == 1
    with pytest.raises(RuntimeInputError, match=r"model\.engine is loaded already \(on cuda:0, by TensorRT "
                                                r"10\.13\.0\.35\): device, trt_backend, trt_module and cuda_api are "
                                                "load_engine's options"):
        TrtRunner(loaded, device="cuda:1")
    r = load(engine, fakes)  # runtime.load: the loader, then the runner
    assert isinstance(r, TrtRunner) and isinstance(r.loaded, LoadedEngine) and r.loaded.path == engine


def test_the_loader_vets_before_anything_deserializes(tmp_path, fakes):
    from runtime.backends.trt_engine import load_engine

    path = write_engine(tmp_path, fakes)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(RuntimeInputError, match="bytes but its report says"):
        load_engine(path, trt_module=fakes.tm, cuda_api=fakes.cuda)
    with pytest.raises(RuntimeInputError, match="device must be 'cuda', 'cuda:N' or N"):
        load_engine(write_engine(tmp_path, fakes, "ok.engine"), "cpu", trt_module=fakes.tm, cuda_api=fakes.cuda)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0 and fakes.cuda.rt.device_set is None


# ======================================================================================================================
# report, version and GPU checks before deserialization
# ======================================================================================================================


@pytest.mark.parametrize("overrides,pattern", [
    ({"trt": {"flavour": "tensorrt", "version": "10.12.0.36"}},
     r"built by tensorrt 10\.12\.0\.36, but tensorrt 10\.13\.0\.35 is installed.*rebuild it on this machine"),
    ({"trt": {"flavour": "tensorrt_rtx", "version": "1.7.1.116"}},
     r"built by tensorrt_rtx 1\.7\.1\.116, but this runtime has tensorrt 10\.13\.0\.35.*only load in the flavour"),
    ({"target": {"kind": "gpu", "name": "NVIDIA A10G", "compute_capability": "8.6"}},
     r"built for NVIDIA A10G \(compute capability 8\.6\), but this GPU is NVIDIA H100 80GB HBM3 \(compute "
     r"capability 9\.0\).*python -m export\.to_trt"),
])
def test_incompatible_engine_refused_before_deserialization(tmp_path, fakes, overrides, pattern):
    blob = b"FAKE-TRT-PLAN:incompatible"
    path = write_engine(tmp_path, fakes, blob=blob, report=make_report(blob, **overrides))
    with pytest.raises(RuntimeInputError, match=pattern):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0


def test_engine_for_the_default_target_is_not_refused_on_compute_capability(tmp_path, fakes):
    blob = b"FAKE-TRT-PLAN:default-target"
    report = make_report(blob, target={"kind": "compute_capability", "compute_capability": "default"})
    r = load(write_engine(tmp_path, fakes, blob=blob, report=report), fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 1 and r.input_spec.batch_range == (1, 64)


def test_report_missing_or_foreign(tmp_path, fakes):
    path = write_engine(tmp_path, fakes)
    report = tmp_path / "model.engine.json"
    report.unlink()
    with pytest.raises(RuntimeInputError, match=r"has no build report at model\.engine\.json.*export\.to_trt"):
        load(path, fakes)
    report.write_text("{not json")
    with pytest.raises(RuntimeInputError, match="not a readable JSON report"):
        load(path, fakes)
    report.write_text(json.dumps({"engine_bytes": 3}))
    with pytest.raises(RuntimeInputError, match="no 'metadata' key"):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0


def test_corrupted_engine_refused_by_size_and_sha256(tmp_path, fakes):
    path = write_engine(tmp_path, fakes)
    good = path.read_bytes()
    path.write_bytes(good[:-5])  # truncated
    with pytest.raises(RuntimeInputError, match=rf"is {len(good) - 5} bytes but its report says {len(good)}"):
        load(path, fakes)
    flipped = bytearray(good)
    flipped[20] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(flipped))
    with pytest.raises(RuntimeInputError, match="does not match the sha256 in its report"):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 0


def test_damaged_engine_checked_before_tensorrt_or_cuda_is_touched(tmp_path, fakes, monkeypatch):
    # On a machine without a GPU (CudaApi fails) or TensorRT, a damaged engine is still reported as damaged.
    from runtime import cuda_mem, trt_compat

    touched = []
    monkeypatch.setattr(trt_compat, "import_trt", lambda *a, **k: touched.append("import_trt"))
    monkeypatch.setattr(cuda_mem, "CudaApi", lambda *a, **k: touched.append("CudaApi"))
    path = write_engine(tmp_path, fakes)
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(RuntimeInputError, match="is 6 bytes but its report says"):
        runtime.load(path)
    report = json.loads((tmp_path / "model.engine.json").read_text())
    for key in ("engine_bytes", "engine_sha256"):  # a report that records no digest cannot vouch for any file
        (tmp_path / "model.engine.json").write_text(json.dumps({k: v for k, v in report.items() if k != key}))
        with pytest.raises(RuntimeInputError, match="records no engine size and sha256"):
            runtime.load(path)
    assert touched == [] and fakes.trt.calls["deserialize_cuda_engine"] == 0


@pytest.mark.parametrize("raises", [False, True])
def test_plan_tensorrt_cannot_deserialize_is_a_clear_error(tmp_path, fakes, raises):
    # The report matches the file, but the bytes are no plan the (fake) TensorRT knows: it returns None or raises.
    fakes.trt.deserialize_raises = raises
    blob = b"NOT-A-PLAN" * 10
    path = write_engine(tmp_path, None, blob=blob, report=make_report(blob))
    with pytest.raises(RuntimeInputError, match=r"TensorRT 10\.13\.0\.35 could not deserialize .*model\.engine"):
        load(path, fakes)
    assert fakes.trt.calls["deserialize_cuda_engine"] == 1


def test_engine_with_the_wrong_io_tensors_is_refused(tmp_path, fakes):
    path = write_engine(tmp_path, fakes, drop_tensor="lengths")
    with pytest.raises(RuntimeInputError, match=r"model engine must have inputs \['frames', 'lengths'\]"):
        load(path, fakes)


@pytest.mark.parametrize("overrides", [{"frames": "HALF"}, {"clip_logits": "HALF"}, {"lengths": "BOOL"}])
def test_engine_with_io_dtypes_the_runtime_does_not_feed_is_refused(tmp_path, fakes, overrides):
    # A HALF input would be handed float32 bytes; the runtime's contract is export.to_onnx's float32 I/O.
    path = write_engine(tmp_path, fakes, dtype_overrides=overrides)
    with pytest.raises(RuntimeInputError, match=r"engine I/O dtypes .* are not what the runtime feeds"):
        load(path, fakes)


def test_tensorrt_reason_for_a_foreign_gpu_reaches_the_error(tmp_path, fakes):
    # TensorRT logs why it cannot deserialize, then returns None; the collecting logger (an ILogger subclass, as
    # with real TensorRT) carries that reason into the message.
    fakes.trt.deserialize_log = "Target GPU does not support this compute capability (SM 9.0)"
    blob = b"RTX-PLAN" * 10
    path = write_engine(tmp_path, None, blob=blob, report=make_report(blob))
    with pytest.raises(RuntimeInputError, match=r"does not support this GPU: .*compute capability.*not on H100/H200"):
        load(path, fakes)


def test_refused_tensor_address_is_an_error_not_a_stale_pointer(engine, fakes):
    with load(engine, fakes) as r:
        r.infer(frames(1, 2))  # addresses of this call are now set in the context
        fakes.trt.engines[0].contexts[0].reject_addresses = True
        with pytest.raises(RuntimeError, match="refused the address of 'frames'.*256-byte alignment"):
            r.infer(frames(1, 3))


def test_auto_backend_tries_the_flavours_that_can_load_the_engine(tmp_path, fakes, monkeypatch):
    from runtime import trt_compat

    asked = []

    def fake_import(backend="auto", *, order=trt_compat.FLAVOURS):  # records the request; nothing installed here
        asked.append((backend, order))
        raise trt_compat.TrtNotAvailableError(f"{backend} not installed (test)")

    monkeypatch.setattr(trt_compat, "import_trt", fake_import)
    blob = b"PLAN" * 10
    lean_or_full = ("tensorrt", "tensorrt_lean_bindings")  # full TensorRT first; the lean runtime says what it runs
    for flavour, backend, want in (("tensorrt_rtx", "auto", ("auto", ("tensorrt_rtx",))),
                                   ("tensorrt", "auto", ("auto", lean_or_full)),
                                   ("tensorrt_rtx", "tensorrt", ("tensorrt", ("tensorrt_rtx",))),
                                   (None, "auto", ("auto", trt_compat.FLAVOURS))):
        report = make_report(blob, trt={"flavour": flavour, "version": "1.7.1"})
        path = write_engine(tmp_path, None, blob=blob, report=report)
        with pytest.raises(trt_compat.TrtNotAvailableError):
            runtime.load(path, trt_backend=backend, cuda_api=fakes.cuda)
        assert asked[-1] == want


def test_device_must_be_cuda(engine, fakes):
    with pytest.raises(RuntimeInputError, match="device must be 'cuda', 'cuda:N' or N, got 'cpu'"):
        load(engine, fakes, device="cpu")
    load(engine, fakes, device="cuda:1")
    assert fakes.cuda.rt.device_set == 1
    for bad in (True, -1):  # True is not device 1, and no device is negative
        with pytest.raises(RuntimeInputError, match="device must be"):
            load(engine, fakes, device=bad)
    with pytest.raises(RuntimeInputError, match="cuda_graphs must be True or False"):
        load(engine, fakes, cuda_graphs="yes")


# ======================================================================================================================
# buffers, streams, addresses, outputs
# ======================================================================================================================


def test_buffers_reused_for_same_or_smaller_shapes_and_grown_for_larger(engine, fakes):
    cuda = fakes.cuda
    with load(engine, fakes) as r:
        assert cuda.device_allocs == 0  # nothing allocated before the first shape is known
        x = frames(4, 16)
        assert_outputs(r.infer(x), x)
        n_io = 4  # frames, lengths, frame_logits, clip_logits
        assert (cuda.device_allocs, cuda.host_allocs) == (n_io, n_io)
        ptrs = {n: b.ptr for n, b in r._device_bufs.items()}
        for b, t, seed in [(4, 16, 1), (2, 8, 2), (1, 1, 3), (4, 16, 4)]:
            x = frames(b, t, seed)
            assert_outputs(r.infer(x), x)  # a smaller result in a bigger buffer: sliced back exactly
        assert (cuda.device_allocs, cuda.host_allocs) == (n_io, n_io)
        assert {n: b.ptr for n, b in r._device_bufs.items()} == ptrs
        # B=64, T=32 outgrows frames, frame_logits and clip_logits; lengths (64 int32 = 256 bytes) still fits the
        # first 256-byte allocation.
        x = frames(64, 32, 5)
        assert_outputs(r.infer(x), x)
        grown = {n for n in ptrs if r._device_bufs[n].ptr != ptrs[n]}
        assert grown == {"frames", "frame_logits", "clip_logits"}
        assert cuda.device_allocs == n_io + 3 and cuda.host_allocs == n_io + 3
        assert cuda.rt.calls["cudaFree"] == 3 and cuda.rt.calls["cudaFreeHost"] == 3  # the old ones released
        for b, t, seed in [(3, 5, 6), (64, 32, 7), (8, 128, 8)]:  # all fit now
            x = frames(b, t, seed)
            assert_outputs(r.infer(x), x)
        assert cuda.device_allocs == n_io + 3 and fakes.cuda.live() == 2 * n_io


def test_numpy_inputs_go_through_pinned_host_buffers_on_the_runner_stream(engine, fakes):
    with load(engine, fakes) as r:
        handle = int(r.stream)
        x = frames(2, 3)
        out = r.infer(x)
        copies = fakes.cuda.rt.memcpys
        assert [c[0] for c in copies] == ["cudaMemcpyHostToDevice"] * 2 + ["cudaMemcpyDeviceToHost"] * 2
        assert all(c[5] for c in copies), "a host side of a copy is not pinned (cudaMallocHost) memory"
        assert all(c[4] == handle for c in copies)
        htod_srcs = {c[2] for c in copies if c[0] == "cudaMemcpyHostToDevice"}
        assert x.ctypes.data not in htod_srcs  # staged, not copied from the user's pageable array
        assert_outputs(out, x)
        # Outputs are copies: the next call must not change what the first one returned.
        before = {k: v.copy() for k, v in out.items()}
        r.infer(frames(2, 3, seed=9))
        for k in out:
            np.testing.assert_array_equal(out[k], before[k])


def test_output_shapes_read_from_context_after_input_shapes(engine, fakes):
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        x = frames(3, 7)
        out = r.infer(x, lengths=np.array([7, 2, 1]))
        assert out["frame_logits"].shape == (3, 7, C) and out["clip_logits"].shape == (3, C)
        log = [e for e in ctx.log if e[0] != "set_profile"]
        first_get = next(i for i, e in enumerate(log) if e[0] == "get_tensor_shape")
        assert {e[1]: e[2] for e in log[:first_get]} == {"frames": (3, 7, 3, H, W), "lengths": (3,)}
        assert {e[1] for e in log[first_get:]} == {"frame_logits", "clip_logits"}
        assert_outputs(out, x, [7, 2, 1])


@pytest.mark.parametrize("lengths_dtype", ["INT32", "INT64"])
def test_lengths_fed_in_the_engine_dtype_and_filled_with_t(tmp_path, fakes, lengths_dtype):
    path = write_engine(tmp_path, fakes, lengths_dtype=lengths_dtype)
    with load(path, fakes) as r:
        x = frames(3, 6)
        out = r.infer(x)  # lengths None -> every clip has T = 6 frames
        assert_outputs(out, x, [6, 6, 6])
        dev = r._device_bufs["lengths"].ptr
        itemsize = np.dtype(_FAKE_NP[lengths_dtype]).itemsize
        got = np.frombuffer(fakes.cuda.rt.read(dev, 3 * itemsize), _FAKE_NP[lengths_dtype])
        np.testing.assert_array_equal(got, [6, 6, 6])
        out = r.infer(x, lengths=[6, 3, 1])  # a list, any integer dtype: fed as the engine's dtype
        assert_outputs(out, x, [6, 3, 1])
        np.testing.assert_array_equal(np.frombuffer(fakes.cuda.rt.read(dev, 3 * itemsize), _FAKE_NP[lengths_dtype]),
                                      [6, 3, 1])
        with pytest.raises(RuntimeInputError, match="lengths must lie in 1..T=6"):
            r.infer(x, lengths=[7, 1, 1])


def test_addresses_set_for_every_tensor_and_execute_on_the_non_default_stream(engine, fakes):
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        r.infer(frames(2, 4))
        assert ctx.addresses == {n: b.ptr for n, b in r._device_bufs.items()}
        assert set(ctx.addresses) == {"frames", "lengths", "frame_logits", "clip_logits"}
        assert all(p in fakes.cuda.rt.device for p in ctx.addresses.values())
        stream_info = fakes.cuda.rt.streams[int(r.stream)]
        assert stream_info["flags"] == FakeCudart.cudaStreamNonBlocking
        # The handle TensorRT gets is the stream itself (int(cudaStream_t)), not getPtr() (the address OF it), and
        # not the legacy default stream 0.
        assert ctx.executions == [int(r.stream)] and int(r.stream) != 0
        assert fakes.cuda.rt.launched_on == [int(r.stream)]


def test_execute_failure_is_reported(engine, fakes):
    with load(engine, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        ctx.set_tensor_address = lambda name, ptr: True  # addresses never reach the fake: enqueue returns False
        with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
            r.infer(frames(1, 2))


def test_torch_cpu_tensors_in_torch_tensors_out(engine, fakes):
    torch = pytest.importorskip("torch")
    with load(engine, fakes) as r:
        x = frames(2, 5)
        out = r.infer(torch.from_numpy(x), lengths=torch.tensor([5, 2]))
        assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in out.values())
        assert_outputs({k: v.numpy() for k, v in out.items()}, x, [5, 2])


def test_cnn_engine_has_no_lengths_input(tmp_path, fakes):
    path = write_engine(tmp_path, fakes, "cnn.engine", graph="cnn", profiles=[((1, 4, 16), (1, 8, 32))])
    with load(path, fakes) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        x = frames(2, 5)
        out = r.infer(x)
        assert_outputs(out, x, graph="cnn")
        assert set(ctx.addresses) == {"frames", "features"}
        assert not any(e[0] == "set_input_shape" and e[1] == "lengths" for e in ctx.log)
        with pytest.raises(RuntimeInputError, match="cnn stage takes no lengths"):
            r.infer(x, lengths=[5, 5])


def test_bilstm_engine_takes_features_and_lengths(tmp_path, fakes):
    path = write_engine(tmp_path, fakes, "bilstm.engine", graph="bilstm", profiles=[((1, 2, 4), (1, 8, 16))])
    with load(path, fakes) as r:
        assert r.input_spec.input_name == "features" and r.input_spec.item_shape == (FEATURE_DIM,)
        ctx = fakes.trt.engines[0].contexts[0]
        x = np.random.default_rng(0).standard_normal((3, 7, FEATURE_DIM)).astype(np.float32)
        assert_outputs(r.infer(x, lengths=[7, 4, 1]), x, [7, 4, 1])
        assert set(ctx.addresses) == {"features", "lengths", "frame_logits", "clip_logits"}
        with pytest.raises(RuntimeInputError, match="--out bilstm.engine --profile batch=1:5:5,time=1:7:16"):
            r.infer(np.zeros((5, 7, FEATURE_DIM), np.float32))


# ======================================================================================================================
# CUDA graphs
# ======================================================================================================================


def test_cuda_graph_captured_once_per_shape_and_replayed(engine, fakes):
    rt = fakes.cuda.rt
    with load(engine, fakes, cuda_graphs=True) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        for seed in range(3):  # call 1: plain run + capture; calls 2 and 3: replay with new data
            x = frames(2, 4, seed)
            assert_outputs(r.infer(x, lengths=[4, seed + 1]), x, [4, seed + 1])
        assert rt.calls["cudaStreamBeginCapture"] == 1 and rt.calls["cudaGraphLaunch"] == 2
        assert len(ctx.executions) == 2  # one plain run, one under capture; replays do not call TensorRT
        x = frames(1, 3, 7)  # another (smaller, so no buffer moves) shape: its own graph
        assert_outputs(r.infer(x), x)
        assert rt.calls["cudaStreamBeginCapture"] == 2 and len(r._graphs) == 2
        x = frames(2, 4, 8)
        assert_outputs(r.infer(x), x)
        assert rt.calls["cudaGraphLaunch"] == 3
    assert all(g.destroyed for g in rt.graphs) and all(e.destroyed for e in rt.execs)


def test_cuda_graphs_dropped_when_buffers_move(engine, fakes):
    rt = fakes.cuda.rt
    with load(engine, fakes, cuda_graphs=True) as r:
        small, big = frames(1, 2), frames(8, 64, 1)
        r.infer(small)
        first = rt.execs[0]
        assert_outputs(r.infer(small), small)  # replayed
        assert_outputs(r.infer(big), big)  # buffers grow: graphs holding the old addresses must go
        assert first.destroyed
        small = frames(1, 2, 2)
        assert_outputs(r.infer(small), small)  # re-captured with the new addresses
        assert rt.calls["cudaStreamBeginCapture"] == 3


@pytest.mark.parametrize("failure", ["begin_capture_error", "execute_raises", "execute_returns_false"])
def test_cuda_graph_capture_failure_falls_back_to_plain_enqueue(tmp_path, failure):
    fakes = Fakes(fail_begin_capture=failure == "begin_capture_error")
    path = write_engine(tmp_path, fakes)
    rt = fakes.cuda.rt
    with load(path, fakes, cuda_graphs=True) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        ctx.capture_behaviour = {"execute_raises": "raise", "execute_returns_false": "false"}.get(failure, "ok")
        for seed in range(3):
            x = frames(3, 5, seed)
            assert_outputs(r.infer(x), x)
        assert rt.calls["cudaGraphLaunch"] == 0 and rt.graphs == []
        assert r._graphs == {(0, (3, 5, 3, H, W)): None}  # remembered: no second capture attempt
        assert rt.calls["cudaStreamBeginCapture"] == 1
        assert rt.calls["cudaGetLastError"] >= 1  # the sticky capture error is cleared
        assert not rt.is_capturing(int(r.stream))  # the stream is not left capturing
        assert rt.launched_on == [int(r.stream)] * 3  # every call really ran, on the runner's stream


# ======================================================================================================================
# TensorRT for RTX: built-in CUDA graphs and the runtime (JIT kernel) cache
# ======================================================================================================================


def rtx_engine(tmp_path, fakes, name: str = "model.engine"):
    blob = b"FAKE-RTX-PLAN:" + name.encode() + bytes(range(32))
    report = make_report(blob, trt={"flavour": "tensorrt_rtx", "version": ".".join(map(str, RTX_VERSION)),
                                    "strongly_typed": True},
                         target={"kind": "gpu", "name": "current", "compute_capability": "current"})
    return write_engine(tmp_path, fakes, name, blob=blob, report=report)


def test_rtx_cuda_graphs_use_its_builtin_capture_not_a_stream_capture(tmp_path):
    fakes = Fakes("tensorrt_rtx")
    rt = fakes.cuda.rt
    with load(rtx_engine(tmp_path, fakes), fakes, cuda_graphs=True) as r:
        ctx = fakes.trt.engines[0].contexts[0]
        assert ctx.runtime_config.cuda_graph_strategy == fakes.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        for seed in range(3):
            x = frames(2, 4, seed)
            assert_outputs(r.infer(x), x)
        # A stream capture around a JIT-compiling enqueue would be invalid: TensorRT-RTX is called every time.
        assert rt.calls["cudaStreamBeginCapture"] == 0 and len(ctx.executions) == 3 and r._graphs == {}
    fakes = Fakes("tensorrt_rtx")
    with load(rtx_engine(tmp_path, fakes, "plain.engine"), fakes) as r:
        r.infer(frames(1, 2))
        assert fakes.trt.engines[0].contexts[0].runtime_config.cuda_graph_strategy.name == "DISABLED"


def test_rtx_runtime_cache_is_saved_atomically_and_reloaded(tmp_path):
    fakes = Fakes("tensorrt_rtx")
    engine_path = rtx_engine(tmp_path, fakes)
    cache_path = tmp_path / "caches" / "model.engine.rtcache"
    with load(engine_path, fakes, runtime_cache=cache_path) as r:
        r.infer(frames(1, 2))
        r.infer(frames(2, 3))
        assert not cache_path.exists()  # written at deactivation (or save_runtime_cache), not per call
    assert cache_path.read_bytes().endswith(b"1x2x3x4x4,2x3x3x4x4")
    assert list(cache_path.parent.iterdir()) == [cache_path]  # no temporary file left behind

    with load(engine_path, fakes, runtime_cache=cache_path) as r:
        cache = fakes.trt.engines[-1].contexts[-1].runtime_config.cache
        assert cache.kernels == ["1x2x3x4x4", "2x3x3x4x4"]  # loaded at activation: nothing to recompile
        r.infer(frames(1, 5))
        assert r.save_runtime_cache() == cache_path
        assert cache_path.read_bytes().endswith(b",1x5x3x4x4")


def test_rtx_runtime_cache_from_another_gpu_is_replaced_with_a_warning(tmp_path, caplog):
    fakes = Fakes("tensorrt_rtx")
    cache_path = tmp_path / "model.engine.rtcache"
    cache_path.write_bytes(b"FAKE-RTX-CACHE:NVIDIA GeForce RTX 4090\n9x9x3x4x4")
    with caplog.at_level("WARNING", logger="runtime.backends.tensorrt"):
        with load(rtx_engine(tmp_path, fakes), fakes, runtime_cache=cache_path) as r:
            assert fakes.trt.engines[0].contexts[0].runtime_config.cache.kernels == []
            r.infer(frames(1, 2))
    assert "written for another GPU" in caplog.text
    assert cache_path.read_bytes() == b"FAKE-RTX-CACHE:" + GPU_NAME + b"\n1x2x3x4x4"


def test_runtime_cache_is_refused_for_full_tensorrt_and_for_a_directory(tmp_path, engine, fakes):
    with pytest.raises(RuntimeInputError, match="runtime_cache is a TensorRT for RTX option"):
        load(engine, fakes, runtime_cache=tmp_path / "x.rtcache")
    rtx = Fakes("tensorrt_rtx")
    (tmp_path / "rtx").mkdir()
    with pytest.raises(RuntimeInputError, match="is a directory"):
        load(rtx_engine(tmp_path / "rtx", rtx), rtx, runtime_cache=tmp_path)


# ======================================================================================================================
# deactivate, DeviceBuffer, CudaApi
# ======================================================================================================================


def test_deactivate_frees_everything_and_reactivation_works(engine, fakes):
    rt = fakes.cuda.rt
    r = load(engine, fakes, cuda_graphs=True)
    x = frames(2, 3)
    r.infer(x)  # activates on first use
    r.infer(frames(8, 50))
    assert fakes.cuda.live() == 8 and len(rt.streams) == 1
    r.deactivate()
    assert fakes.cuda.live() == 0, "device or pinned host memory leaked"
    assert rt.calls["cudaMalloc"] == rt.calls["cudaFree"] and rt.calls["cudaMallocHost"] == rt.calls["cudaFreeHost"]
    assert rt.streams == {} and r.stream is None and r.context is None
    assert all(g.destroyed for g in rt.graphs)
    r.deactivate()  # a second deactivate is a no-op
    assert_outputs(r.infer(x), x)  # reactivates: new context, stream and buffers
    assert len(fakes.trt.engines[0].contexts) == 2
    r.deactivate()
    assert fakes.cuda.live() == 0


def test_device_buffer_grows_by_at_least_half_its_capacity():
    cuda = FakeCudaApi()
    buf = DeviceBuffer(cuda)
    assert buf.ensure(1000) and buf.nbytes >= 1000 and buf.nbytes % 256 == 0
    first = buf.nbytes
    assert not buf.ensure(first) and not buf.ensure(10)
    assert buf.ensure(first + 1)
    assert buf.nbytes >= 1.5 * first  # slowly growing shapes must not reallocate on every call
    assert buf.reallocations == 2 and cuda.live() == 1
    buf.free()
    assert cuda.live() == 0 and buf.ptr == 0


def test_cuda_api_turns_errors_into_cuda_error_naming_the_call():
    cuda = FakeCudaApi(fail_malloc=True)
    with pytest.raises(CudaError, match=r"cudaMalloc\(4096\) failed: fake CUDA error cudaErrorMemoryAllocation"):
        cuda.malloc(4096)
    with pytest.raises(CudaError, match="cudaFree failed"):
        cuda.free(0xDEAD)
    stream = cuda.stream_create()
    assert cuda.stream_handle(stream) == int(stream) != stream.getPtr()
    assert cuda.device_info(0) == {"name": GPU_NAME.decode(), "compute_capability": "9.0"}


def test_stream_handle_of_a_real_cuda_python_stream_object():
    # The real cudaStream_t class (constructible without a GPU): the handle is int(stream), not getPtr().
    cudart = pytest.importorskip("cuda.bindings.runtime")
    stream = cudart.cudaStream_t(0x1234)
    assert CudaApi(cudart).stream_handle(stream) == 0x1234 != stream.getPtr()
