"""``python -m runtime classify URL`` against the real bundled Triton server (python kind, ``max_batch_size`` 8,
clips of 1..16 frames): more clips or windows than one request takes are sent in batches the server accepts, and a
``--frames`` beyond what it serves is one clear line. Results equal the in-process model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MAX_BATCH_SIZE, MAX_TIME, TINY_CONFIG, motion_frames, run_cli

import runtime
from runtime.base import softmax

MODEL = "cnn_bilstm"
SIZE = TINY_CONFIG.frame_size



def test_classify_sends_more_clips_than_a_request_takes_in_batches(triton_server, local_model, tmp_path):
    rng = np.random.default_rng(3)
    clips = [rng.integers(0, 256, (k % 5 + 1, *SIZE, 3), np.uint8) for k in range(MAX_BATCH_SIZE + 3)]
    paths = []
    for k, clip in enumerate(clips):
        paths.append(tmp_path / f"clip{k:02d}.npy")
        np.save(paths[-1], clip)
    out = tmp_path / "preds.json"
    p = run_cli("runtime", "classify", f"{triton_server.grpc_url}/{MODEL}", *paths, "--json", out)
    assert p.returncode == 0, p.stderr
    m = local_model.metadata
    for clip, pred in zip(clips, json.loads(out.read_text())["clips"], strict=True):
        x = runtime.preprocess_frames(clip, m.mean, m.std, SIZE)
        want = softmax(np.asarray(local_model.infer(x)["clip_logits"]))[0]
        assert pred["frames"] == len(clip)
        assert pred["probs"][0] == pytest.approx(want.max(), abs=1e-5)


def test_timeline_of_a_served_model_runs_its_windows_in_batches(triton_server, local_model, tmp_path):
    from runtime.video_write import write_video

    n, t = 30, 8
    video = write_video(tmp_path / "v.mp4", motion_frames(2, n, (24, 32)), 25)
    url = f"{triton_server.http_url}/{MODEL}"
    out = tmp_path / "timeline.json"
    p = run_cli("runtime", "classify", url, video, "--frames", t, "--windows", 1, "--json", out)
    assert p.returncode == 0, p.stderr
    assert "windows run the whole model each" in p.stderr and "no separate cnn and bilstm stages" in p.stderr
    windows = json.loads(out.read_text())["timelines"][0]["windows"]
    assert len(windows) == n - t + 1 > MAX_BATCH_SIZE
    from runtime.stages import WindowModel
    from runtime.timeline import window_probabilities

    want = window_probabilities(WindowModel.for_runner(local_model, split=False), video, range(n - t + 1), t)
    got = np.array([list(w["probs"].values()) for w in windows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    p = run_cli("runtime", "classify", url, video, "--frames", MAX_TIME * 2, "--windows", 4)
    assert p.returncode == 2
    assert p.stderr == (f"error: --frames {MAX_TIME * 2} is more than {url} takes: clips of 1..{MAX_TIME} frames; "
                        f"give --frames {MAX_TIME} or fewer\n")
