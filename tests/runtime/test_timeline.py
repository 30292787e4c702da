"""runtime.timeline and runtime.stages: every decoded frame's CNN once (the split path), the same probabilities as
the whole model on each window's frames, a bounded ring of features, batches cut to the runner's range, and the
whole path where a runner has no split stages."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest

import runtime
from runtime import timeline
from runtime.base import softmax
from runtime.batches import infer_batches
from runtime.clips import classify_clips
from runtime.errors import RuntimeInputError
from runtime.spec import Profile
from runtime.stages import WindowModel, open_stages
from runtime.timeline import classify_windows, window_probabilities
from runtime.video import VideoReader
from runtime.video_sampling import window_starts
from runtime.video_write import write_video

pytest.importorskip("av")
pytest.importorskip("onnxruntime")

from conftest import TINY_CONFIG, motion_frames, run_cli  # noqa: E402

SIZE = TINY_CONFIG.frame_size
T = 8
N = 45  # N - T = 37 is prime: no STEP below but 1 divides it, so the last frames begin no whole window
STEPS = (1, 3, 5, 8, 13, 60)  # 60: larger than the video (one window)
ODD_STARTS = [40, 0, 5, 5, 12, 44, 37, 2]  # any order, repeated, overlapping, windows cut short by the end


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("timeline") / "v.mp4", motion_frames(1, N, (24, 32)), 25)


def reference(runner, video, starts, frames=T) -> np.ndarray:
    """The whole model on each window's frames alone (B = 1, its real length): read by index, normalised,
    ``runner.infer``: what the timeline must equal."""
    m = runner.metadata
    with VideoReader(video, SIZE) as r:
        n = r.info.num_frames
        rows = [runtime.preprocess_frames(r.read(range(s, min(s + frames, n))), m.mean, m.std, SIZE) for s in starts]
    return np.stack([softmax(np.asarray(runner.infer(x)["clip_logits"]))[0] for x in rows])


def spy(monkeypatch, runner, calls: list) -> None:
    """Record the shape of every ``infer`` input of a real runner."""
    real = runner.infer
    monkeypatch.setattr(runner, "infer", lambda x, *a, **k: (calls.append(tuple(x.shape)), real(x, *a, **k))[1])


def _worst(models: dict, video, ref: dict, steps, frame_batches, monkeypatch) -> dict:
    """Max |probability difference| from ``ref`` (start -> probabilities) per (path, step): every window of each
    STEP, and the odd starts."""
    worst = {}
    for frame_batch in frame_batches:
        monkeypatch.setattr(timeline, "FRAME_BATCH", frame_batch)
        for name, model in models.items():
            for step in steps:
                starts = window_starts(N, T, step)
                got = window_probabilities(model, video, starts, T, batch_size=4)
                worst[name, step] = max(worst.get((name, step), 0.0), float(np.abs(got - ref[starts]).max()))
            got = window_probabilities(model, video, ODD_STARTS, T)
            worst[name, "odd"] = max(worst.get((name, "odd"), 0.0), float(np.abs(got - ref[ODD_STARTS]).max()))
    return worst


def test_timeline_equals_the_whole_model_on_each_window(tiny_export, video, monkeypatch):
    with runtime.load(tiny_export / "model.onnx") as runner:
        ref = reference(runner, video, range(N))  # the window at every start, cut short where the video ends
        split = WindowModel.for_runner(runner)
        whole = WindowModel.for_runner(runner, split=False)
        assert split.split and not whole.split
        with split:  # 5 frames per CNN call: the ring wraps every few frames
            worst = _worst({"split": split, "whole": whole}, video, ref, STEPS, (timeline.FRAME_BATCH, 5),
                           monkeypatch)
        assert max(worst.values()) <= 1e-5, worst
        # The runner itself: its split stages are opened once and kept for its next videos.
        np.testing.assert_allclose(window_probabilities(runner, video, ODD_STARTS, T), ref[ODD_STARTS], atol=1e-5)
        tl = classify_windows(runner, video, T, 3)
    assert [w["start"] for w in tl["windows"]] == window_starts(N, T, 3).tolist() == list(range(0, 37, 3))
    assert all(w["end"] - w["start"] == w["frames"] == T for w in tl["windows"])
    got = np.array([list(w["probs"].values()) for w in tl["windows"]])
    np.testing.assert_allclose(got, ref[window_starts(N, T, 3)], atol=1e-5)


def test_checkpoint_timeline_runs_the_checkpoints_cnn_and_bilstm(tiny_checkpoint, video, monkeypatch):
    with runtime.load(tiny_checkpoint, device="cpu") as runner, WindowModel.for_runner(runner) as split:
        assert split.split and (split.frame_runner.backend_name, split.window_runner.stage) == ("torch", "bilstm")
        ref = np.zeros((N, 3))
        needed = sorted(set(window_starts(N, T, 5).tolist() + window_starts(N, T, 60).tolist() + ODD_STARTS))
        ref[needed] = reference(runner, video, needed)
        worst = _worst({"split": split}, video, ref, (5, 60), (5,), monkeypatch)
    assert max(worst.values()) <= 1e-5, worst


def test_each_decoded_frame_goes_through_the_cnn_once(tiny_export, video, monkeypatch):
    with runtime.load(tiny_export / "model.onnx") as runner, WindowModel.for_runner(runner) as model:
        cnn, bilstm = [], []
        spy(monkeypatch, model.frame_runner, cnn)
        spy(monkeypatch, model.window_runner, bilstm)
        window_probabilities(model, video, window_starts(N, T, 1), T)
        assert sum(b * t for b, t, *_ in cnn) == N and all(t == 1 for _, t, *_ in cnn)  # 38 windows, 45 frames
        assert [s[:2] for s in bilstm] == [(16, T), (16, T), (6, T)]
        cnn.clear()
        window_probabilities(model, video, [26, 0, 5], T)  # frames no window covers are not computed
        assert sum(b * t for b, t, *_ in cnn) == 13 + T
        whole = []
        spy(monkeypatch, runner, whole)
        window_probabilities(WindowModel.for_runner(runner, split=False), video, window_starts(N, T, 1), T)
        assert sum(b * t for b, t, *_ in whole) == 38 * T  # each frame once per window it lies in
        cnn.clear()
        bilstm.clear()
        whole.clear()
        # Windows that share no frame (STEP >= T): each frame's CNN runs once on either path, so the whole model
        # runs them (one call per batch of windows instead of two), with the same probabilities.
        disjoint = window_probabilities(model, video, [26, 0, 13], T)
        assert cnn == bilstm == [] and sum(b * t for b, t, *_ in whole) == 3 * T
        with WindowModel.for_runner(runner, split=False) as per_window:
            np.testing.assert_allclose(disjoint, window_probabilities(per_window, video, [26, 0, 13], T), atol=1e-6)


def test_the_kept_features_are_bounded_by_the_window_not_the_video(tiny_export, tmp_path, monkeypatch):
    long_video = write_video(tmp_path / "long.mp4", motion_frames(2, 300, (16, 16), period=30), 25)
    rings = []

    class RecordingRing(timeline._Ring):
        most = 0

        def append(self, first, items):
            super().append(first, items)
            self.most = max(self.most, self.count)
            rings.append(self)

    monkeypatch.setattr(timeline, "_Ring", RecordingRing)
    monkeypatch.setattr(timeline, "FRAME_BATCH", 16)
    with runtime.load(tiny_export / "model.onnx") as runner:
        probs = window_probabilities(runner, long_video, window_starts(300, T, 1), T)
        assert probs.shape == (293, 3)
        np.testing.assert_allclose(probs[[0, 150, 292]], reference(runner, long_video, [0, 150, 292]), atol=1e-5)
    ring = rings[-1]
    assert ring.capacity == T - 1 + 16 and ring.most <= ring.capacity and ring.buf.shape == (T - 1 + 16, 512)


def test_a_runner_without_split_stages_runs_the_whole_model_and_says_why_once(tiny_export, video, tmp_path, caplog):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny_export / "model.onnx", lone / "model.onnx")
    with runtime.load(lone / "model.onnx") as runner:
        with caplog.at_level(logging.WARNING, logger="runtime.stages"):
            got = window_probabilities(runner, video, ODD_STARTS, T)
            window_probabilities(runner, video, [0], T)
        lines = [r.getMessage() for r in caplog.records if r.name == "runtime.stages"]
        assert len(lines) == 1 and "windows run the whole model each" in lines[0]
        assert f"{lone} holds no cnn.onnx or bilstm.onnx beside model.onnx" in lines[0]
        np.testing.assert_allclose(got, reference(runner, video, ODD_STARTS), atol=1e-5)


def narrowed(runner, batch: tuple, time: tuple = (1, None)):
    """The runner with a narrower input spec (as an engine built for small batches has): everything else real."""
    runner.input_spec = replace(runner.input_spec, profiles=(Profile(batch, time),))
    return runner


def test_batches_are_cut_to_the_runners_batch_range(tiny_export, video, monkeypatch):
    with runtime.load(tiny_export / "model.onnx") as runner:
        ref = reference(runner, video, range(N))
        x = runtime.preprocess_frames(np.random.default_rng(0).integers(0, 256, (7, T, *SIZE, 3), np.uint8),
                                      runner.metadata.mean, runner.metadata.std)
        lengths = np.array([8, 3, 8, 1, 5, 8, 2], np.int32)
        whole = runner.infer(x, lengths)
        narrowed(runner, (2, 3))
        calls = []
        spy(monkeypatch, runner, calls)
        got = infer_batches(runner, x, lengths)
        assert [c[0] for c in calls] == [3, 3, 2]  # the last clip padded to the minimum batch with its own copy
        for k in whole:
            np.testing.assert_allclose(got[k], whole[k], atol=1e-5)
        calls.clear()
        probs = window_probabilities(WindowModel.for_runner(runner, split=False), video, window_starts(N, T, 1), T)
        assert calls and max(c[0] for c in calls) <= 3 and min(c[0] for c in calls) >= 2
        np.testing.assert_allclose(probs, ref[:N - T + 1], atol=1e-5)
    with runtime.load(tiny_export / "cnn.onnx") as cnn, runtime.load(tiny_export / "bilstm.onnx") as bilstm:
        pair = (narrowed(cnn, (1, 4), (1, 1)), narrowed(bilstm, (1, 2), (1, T)))
        cnn_calls, bilstm_calls = [], []
        spy(monkeypatch, cnn, cnn_calls)
        spy(monkeypatch, bilstm, bilstm_calls)
        probs = window_probabilities(pair, video, ODD_STARTS, T)
        assert max(c[0] for c in cnn_calls) == 4 and max(c[0] for c in bilstm_calls) == 2
        np.testing.assert_allclose(probs, ref[ODD_STARTS], atol=1e-5)
        with pytest.raises(RuntimeInputError, match="windows of 9 frames are longer than onnxruntime:bilstm takes: "
                                                    "clips of 1..8 frames; use windows of 8 frames or fewer"):
            window_probabilities(pair, video, [0], 9)


def test_classify_clips_runs_more_clips_than_one_batch_takes(tiny_export):
    clips = [np.random.default_rng(k).integers(0, 256, (k % 4 + 1, *SIZE, 3), np.uint8) for k in range(7)]
    with runtime.load(tiny_export / "model.onnx") as runner:
        alone = [classify_clips(runner, [c], top_k=2)[0] for c in clips]
        together = classify_clips(narrowed(runner, (1, 3)), clips, top_k=2)
    for a, b in zip(alone, together, strict=True):
        assert a["labels"] == b["labels"] and a["frame_labels"] == b["frame_labels"] and a["frames"] == b["frames"]
        np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)


def test_bad_windows_are_refused(tiny_export, video):
    with runtime.load(tiny_export / "model.onnx") as runner:
        for starts, frames, message in [([N], T, f"window starts must be frame indices in 0..{N - 1}, got {N}"),
                                        ([-1], T, "got -1"), ([0.5], T, "must be a sequence of frame indices"),
                                        ([0], 0, "frames must be an integer >= 1")]:
            with pytest.raises(RuntimeInputError, match=message):
                window_probabilities(runner, video, starts, frames)
        assert window_probabilities(runner, video, [], T).shape == (0, 3)
        with pytest.raises(RuntimeInputError, match="step must be an integer >= 1, got 0"):
            classify_windows(runner, video, T, 0)
    with runtime.load(tiny_export / "cnn.onnx") as cnn:
        with pytest.raises(RuntimeInputError, match="takes a whole model, not the cnn stage"):
            window_probabilities(cnn, video, [0], T)


def test_open_stages_carries_the_runners_options(tiny_checkpoint, tiny_export):
    with runtime.load(tiny_checkpoint, device="cpu", check_finite=False) as runner:
        cnn, bilstm = open_stages(runner)
        assert (cnn.stage, bilstm.stage) == ("cnn", "bilstm")
        assert cnn.checkpoint is runner.checkpoint and bilstm.checkpoint is runner.checkpoint  # read once
        assert not cnn.check_finite and str(cnn.device) == "cpu" and cnn.fast is False
    with runtime.load(tiny_export / "model.onnx", intra_op_threads=1, check_finite=False) as runner:
        cnn, bilstm = open_stages(runner)
        for stage in (cnn, bilstm):
            assert stage.load_options["intra_op_threads"] == 1 and not stage.check_finite
            assert stage.load_options["allow_spinning"] is False  # the two sessions alternate on the same cores
        with pytest.raises(RuntimeInputError, match="runs the cnn stage, not the whole model"):
            open_stages(cnn)


def test_open_stages_of_an_engine_finds_the_cnn_and_bilstm_engines_beside_it(tmp_path):
    from fakes import Fakes, load, write_engine

    fakes = Fakes()
    model = write_engine(tmp_path, fakes, "model.engine", profiles=[((1, 4, 8), (1, 8, 16))])
    with load(model, fakes) as runner:
        with pytest.raises(RuntimeInputError, match="holds no cnn.engine or bilstm.engine beside model.engine"):
            open_stages(runner)
        write_engine(tmp_path, fakes, "cnn.engine", graph="cnn", profiles=[((1, 8, 16), (1, 1, 1))])
        write_engine(tmp_path, fakes, "bilstm.engine", graph="bilstm", profiles=[((1, 2, 4), (1, 8, 16))])
        cnn, bilstm = open_stages(runner)
        assert (cnn.stage, bilstm.stage) == ("cnn", "bilstm")
        assert cnn.tm is runner.tm and cnn.cuda is runner.cuda and bilstm.device_index == runner.device_index
        assert cnn.input_spec.batch_range == (1, 16)  # the timeline cuts its frames to batches of 16 there
        cnn.deactivate()
        bilstm.deactivate()


def test_stream_feed_computes_each_frame_once(tiny_checkpoint, video, monkeypatch):
    with runtime.StreamingClassifier(tiny_checkpoint, window=T, device="cpu") as stream:
        cnn, bilstm = [], []
        spy(monkeypatch, stream.cnn, cnn)
        spy(monkeypatch, stream.bilstm, bilstm)
        results = list(stream.feed(video, stride=2))
    assert [i for i, _ in results] == list(range(0, N, 2))
    assert cnn == [(1, 1, 3, *SIZE)] * 23  # one CNN pass per pushed frame, never a window's worth
    assert bilstm == [(1, min(k, T), 512) for k in range(1, 24)]  # the BiLSTM over the kept features



def test_cli_timeline_edge_and_bad_input(tiny_export, video, tmp_path):
    model = tiny_export / "model.onnx"
    p = run_cli("runtime", "classify", model, video, "--frames", T, "--windows", 0)
    assert (p.returncode, p.stderr) == (2, "error: --windows must be >= 1, got 0\n")
    # STEP larger than the video: the one window at frame 0; the frames no window holds are named.
    out = tmp_path / "far.json"
    p = run_cli("runtime", "classify", model, video, "--frames", T, "--windows", 100, "--json", out)
    assert p.returncode == 0, p.stderr
    assert f"{video}: 1 window of 8 frames, step 100; its last 37 frames lie in no window" in p.stdout
    assert [(w["start"], w["end"]) for w in json.loads(out.read_text())["timelines"][0]["windows"]] == [(0, T)]
    # A video shorter than one window: one short window of all its frames, padded exactly.
    out = tmp_path / "short.json"
    p = run_cli("runtime", "classify", model, video, "--frames", 60, "--windows", 4, "--json", out)
    assert p.returncode == 0, p.stderr
    assert f"{video}: 1 window of 60 frames, step 4\n" in p.stdout and "(short window, padded)" in p.stdout
    assert f"has {N} frames, fewer than the 60 of a window" in p.stderr
    (window,) = json.loads(out.read_text())["timelines"][0]["windows"]
    assert (window["start"], window["end"], window["frames"]) == (0, N, N)
    with runtime.load(model) as runner:
        want = reference(runner, video, [0], 60)[0]
    np.testing.assert_allclose(list(window["probs"].values()), want, atol=1e-5)
