"""The remote runner, remote streaming and ``python -m runtime ping`` against a real Triton server (the bundled
``tritonserver``, python kind), over HTTP and gRPC: results equal the in-process runner's."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import (
    MAX_BATCH_SIZE,
    MAX_TIME,
    PROTOCOLS,
    STREAM_IDLE_SECONDS,
    STREAM_WINDOW,
    assert_same_outputs,
    base_url,
)

import runtime
from runtime.__main__ import main as runtime_main
from runtime.errors import RuntimeInputError
from runtime.triton.client import TritonRunner
from runtime.triton.remote_stream import RemoteStream

MODEL, STREAM = "cnn_bilstm", "cnn_bilstm_stream"


def _clips(rng, batch: int, time_: int) -> np.ndarray:
    return rng.standard_normal((batch, time_, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module", params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture(scope="module")
def served(triton_server, protocol):
    with runtime.load(f"{base_url(triton_server, protocol)}/{MODEL}", timeout=30) as runner:
        yield runner


def test_runner_describes_the_served_model(served, local_model):
    assert isinstance(served, TritonRunner)
    assert served.metadata.class_names == local_model.metadata.class_names
    assert served.metadata.frame_size == local_model.metadata.frame_size
    assert served.input_spec.item_shape == local_model.input_spec.item_shape
    assert served.time_buckets == (1, 2, 4, 8, 16)
    assert served.ragged  # the python kind batches requests of any T: the client sends each clip unpadded
    assert [(p.batch, p.time) for p in served.input_spec.profiles] == [((1, MAX_BATCH_SIZE), (1, MAX_TIME))]


@pytest.mark.parametrize("batch,time_,lengths", [(1, 1, None), (1, 3, None), (1, 16, None), (3, 11, [11, 5, 3]),
                                                 (MAX_BATCH_SIZE, 7, [7, 1, 2, 3, 4, 5, 6, 7])])
def test_results_equal_the_local_runner(served, local_model, batch, time_, lengths):
    """Mixed lengths in one padded batch, and T off the buckets (sent as they are: the server batches them ragged)."""
    x = _clips(np.random.default_rng(batch * 100 + time_), batch, time_)
    out = served.infer(x, lengths)
    assert out["frame_logits"].shape == (batch, time_, 3)
    assert_same_outputs(out, local_model.infer(x, lengths), lengths or [time_] * batch)
    assert served.classify(x, lengths).labels == local_model.classify(x, lengths).labels


def test_sixteen_concurrent_clients_batched(triton_server, protocol, local_model):
    """16 clients x 50 requests of mixed lengths: no error, every result equal to the local one, and the server's
    statistics show fewer executions than requests (dynamic batching across clients). Short clips (1..4 frames, time
    buckets 1, 2 and 4) keep it quick on a shared CPU."""
    rng = np.random.default_rng(7)
    pool = []
    for t in (1, 2, 3, 4):
        x = _clips(rng, 1, t)
        pool.append((x, None, local_model.infer(x)))
    x = _clips(rng, 2, 3)
    pool.append((x, np.array([3, 1]), local_model.infer(x, np.array([3, 1]))))
    url = f"{base_url(triton_server, protocol)}/{MODEL}"
    clients, requests = 16, 50
    before = _stats(triton_server, MODEL)
    errors, mismatches = [], []

    def client(k):
        try:
            with runtime.load(url, timeout=120) as runner:
                for j in range(requests):
                    x, lengths, expected = pool[(k + j) % len(pool)]
                    out = runner.infer(x, lengths)
                    try:
                        assert_same_outputs(out, expected, lengths if lengths is not None else [x.shape[1]])
                    except AssertionError as e:
                        mismatches.append((k, j, str(e)[:200]))
        except Exception as e:  # surfaced below
            errors.append(repr(e))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert not errors and not mismatches, (errors[:3], mismatches[:3])
    # Triton counts a request after its response has left: on a loaded machine the last one may lag the clients
    deadline = time.monotonic() + 10
    while True:
        after = _stats(triton_server, MODEL)
        done = {k: after[k] - before[k] for k in after}
        if done["requests"] >= clients * requests or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(f"\n[{protocol}] {clients} clients x {requests} requests in {elapsed:.1f} s: {done['requests']} requests, "
          f"{done['inference_count']} clips, {done['execution_count']} executions "
          f"({done['requests'] / max(done['execution_count'], 1):.2f} requests per execution)")
    assert done["requests"] == clients * requests
    assert done["inference_count"] == clients * requests + clients * requests // len(pool)  # 1 in 5 holds 2 clips
    assert done["execution_count"] < done["requests"]  # requests of several clients ran together


def _stats(server, model: str) -> dict:
    """Successful requests, inference_count (clips) and execution_count of ``model`` (the statistics endpoint)."""
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"][0]
    return {"requests": int(stats["inference_stats"]["success"]["count"]),
            "inference_count": int(stats.get("inference_count", 0)),
            "execution_count": int(stats.get("execution_count", 0))}


def test_two_interleaved_streams_equal_two_local_classifiers(triton_server, protocol, tiny_export):
    rng = np.random.default_rng(3)
    frames_a = rng.standard_normal((12, 3, 16, 16)).astype(np.float32)
    frames_b = rng.integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)  # raw frames, normalised on the client
    url = f"{base_url(triton_server, protocol)}/{STREAM}"
    with runtime.open_stream(url) as remote_a, runtime.open_stream(url, STREAM_WINDOW) as remote_b, \
            runtime.open_stream(tiny_export, window=STREAM_WINDOW) as local_a, \
            runtime.open_stream(tiny_export, window=STREAM_WINDOW) as local_b:
        assert isinstance(remote_a, RemoteStream) and remote_a.window == STREAM_WINDOW
        assert remote_a.correlation_id != remote_b.correlation_id and remote_a.correlation_id > 0
        for i in range(12):
            pairs = [(remote_a, local_a, frames_a[i])] + ([(remote_b, local_b, frames_b[i])] if i < 11 else [])
            for remote, local, frame in pairs:
                got, want = remote.push(frame), local.push(frame)
                np.testing.assert_allclose(got.frame_logits, want.frame_logits, rtol=0, atol=1e-5)
                np.testing.assert_allclose(got.clip_logits, want.clip_logits, rtol=0, atol=1e-5)
                assert (got.frames_seen, got.window_frames) == (want.frames_seen, want.window_frames)
                assert (got.frame_label, got.clip_label) == (want.frame_label, want.clip_label)
        assert remote_a.frames_seen == 12 and remote_b.frames_seen == 11
        remote_a.reset()  # a new session: the window starts empty again
        local_a.reset()
        got, want = remote_a.push(frames_a[0]), local_a.push(frames_a[0])
        assert got.frames_seen == 1
        np.testing.assert_allclose(got.clip_logits, want.clip_logits, rtol=0, atol=1e-5)


def test_remote_feed_equals_the_local_feed(triton_server, protocol, tiny_export, tmp_path):
    """feed, shared with the local stream: a video file (decoded and resized on the client) and an iterable of frames
    give the local stream's indices and results."""
    from conftest import motion_frames

    from runtime.video_write import write_video

    video = write_video(tmp_path / "feed.mp4", motion_frames(2, 11, (24, 32)), 25)
    raw = np.random.default_rng(5).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    url = f"{base_url(triton_server, protocol)}/{STREAM}"
    with runtime.open_stream(url) as remote, runtime.open_stream(tiny_export, window=STREAM_WINDOW) as local:
        for source, stride in ((video, 2), (raw, 3)):
            remote.reset()
            local.reset()
            got, want = list(remote.feed(source, stride=stride)), list(local.feed(source, stride=stride))
            assert [i for i, _ in got] == [i for i, _ in want] == list(range(0, len(raw) if source is raw else 11,
                                                                              stride))
            for (_, a), (_, b) in zip(got, want, strict=True):
                np.testing.assert_allclose(a.clip_logits, b.clip_logits, rtol=0, atol=1e-5)
                assert (a.frames_seen, a.window_frames, a.clip_label) == (b.frames_seen, b.window_frames, b.clip_label)


def test_push_after_close_is_refused_and_sends_nothing(triton_server, protocol):
    """A closed session refuses push and feed, as a local stream does: a push would open a server-side sequence
    that nothing ends (it would hold one of the model's max_streams until the idle timeout)."""
    frame = np.zeros((3, 16, 16), np.float32)
    stream = runtime.open_stream(f"{base_url(triton_server, protocol)}/{STREAM}")
    assert stream.push(frame).frames_seen == 1
    stream.close()  # sends END
    before = _stats(triton_server, STREAM)["requests"]
    refused = r"this stream is closed: push and feed are refused after close\(\); open a new stream"
    with pytest.raises(RuntimeInputError, match=refused):
        stream.push(frame)
    with pytest.raises(RuntimeInputError, match=refused):
        stream.feed([frame])
    stream.close()  # closing again sends nothing either
    assert _stats(triton_server, STREAM)["requests"] == before


def test_expired_session_errors_clearly(triton_server):
    """Idle longer than the repository's timeout: the next frame says the session expired; reset() starts anew.
    Both protocols in one wait."""
    frame = np.zeros((3, 16, 16), np.float32)
    streams = [runtime.open_stream(f"{base_url(triton_server, p)}/{STREAM}") for p in PROTOCOLS]
    try:
        for s in streams:
            s.push(frame)
        time.sleep(STREAM_IDLE_SECONDS + 1.0)
        for s in streams:
            with pytest.raises(RuntimeInputError, match="expired.*reset\\(\\)"):
                s.push(frame)
            s.reset()
            assert s.push(frame).frames_seen == 1
    finally:
        for s in streams:
            s.close()


def test_bad_input_is_a_runtime_input_error(served, triton_server, protocol):
    x = _clips(np.random.default_rng(0), 2, 4)
    x[1, 2, 0, 0, 0] = np.nan
    with pytest.raises(RuntimeInputError, match="clip 1"):  # refused before sending, as by every runner
        served.infer(x)
    with pytest.raises(RuntimeInputError, match="the server refused the request: .*NaN or Inf"):  # by the model
        served.infer(x, check_finite=False)
    with pytest.raises(RuntimeInputError, match=f"1..{MAX_TIME} frames"):
        served.infer(_clips(np.random.default_rng(0), 1, MAX_TIME + 1))
    with pytest.raises(RuntimeInputError, match=f"1..{MAX_BATCH_SIZE} clips"):
        served.infer(_clips(np.random.default_rng(0), MAX_BATCH_SIZE + 1, 2))
    with pytest.raises(RuntimeInputError, match="float32, got float64"):
        served.infer(x.astype(np.float64))
    stream_url = f"{base_url(triton_server, protocol)}/{STREAM}"
    with runtime.open_stream(stream_url) as stream:
        with pytest.raises(RuntimeInputError, match="NaN or Inf"):
            stream.push(np.full((3, 16, 16), np.nan, np.float32))
        with pytest.raises(RuntimeInputError, match=r"\(3, 16, 16\)"):
            stream.push(np.zeros((3, 8, 8), np.float32))
    with runtime.open_stream(stream_url, check_finite=False) as stream:
        with pytest.raises(RuntimeInputError, match="the server refused the request: .*NaN or Inf"):
            stream.push(np.full((3, 16, 16), np.nan, np.float32))
        assert stream.push(np.zeros((3, 16, 16), np.float32)).frames_seen == 1  # the refused frame started nothing


def test_wrong_model_or_role_or_options(triton_server, protocol):
    base = base_url(triton_server, protocol)
    with pytest.raises(RuntimeInputError, match=f"does not serve a model 'nope' \\(it has: {MODEL}, {STREAM}\\)"):
        runtime.load(f"{base}/nope")
    with pytest.raises(RuntimeInputError, match=r"is a streaming model.*runtime\.open_stream"):
        runtime.load(f"{base}/{STREAM}")
    with pytest.raises(RuntimeInputError, match="is a whole-clip model"):
        runtime.open_stream(f"{base}/{MODEL}")
    with pytest.raises(RuntimeInputError, match=f"window of {STREAM_WINDOW} frames"):
        runtime.open_stream(f"{base}/{STREAM}", window=4)
    with pytest.raises(RuntimeInputError, match="unknown options \\['providers'\\]"):
        runtime.load(f"{base}/{MODEL}", providers=["CPUExecutionProvider"])
    with pytest.raises(RuntimeInputError, match="device and backend"):
        runtime.load(f"{base}/{MODEL}", device="cuda")


def test_metrics_serve_the_models_counters(triton_server, served):
    served.infer(np.zeros((1, 2, 3, 16, 16), np.float32))
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    counters = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("nv_inference") and f'model="{MODEL}"' in line}
    assert counters["nv_inference_request_success"] >= 1
    assert counters["nv_inference_exec_count"] >= 1
    assert "nv_inference_queue_duration_us" in counters


@pytest.mark.parametrize("model", [MODEL, STREAM])
def test_ping_answers(triton_server, protocol, model, capsys):
    assert runtime_main(["ping", f"{base_url(triton_server, protocol)}/{model}", "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "answered" in out


def test_ping_fails_in_one_line(triton_server, capsys):
    assert runtime_main(["ping", f"{triton_server.grpc_url}/nope", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "does not serve a model 'nope'" in err
    assert runtime_main(["ping", "ftp://host/model"]) == 1
    assert "unsupported scheme" in capsys.readouterr().err
