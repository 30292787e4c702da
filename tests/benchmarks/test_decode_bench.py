"""``python -m benchmarks.decode`` in miniature, run as a user runs it: it writes its videos, times every task and
records the result (no number is asserted: speed is measured, never tested)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytest.importorskip("av")


def test_decode_benchmark_records_every_task(tmp_path):
    args = ["--out", tmp_path, "--prefix", "mini", "--seconds", "0.4", "--fps", "10", "--size", "32", "48",
            "--rounds", "1", "--gap", "0", "--threads", "1"]
    proc = run_cli("benchmarks.decode", *args)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "mini.json").read_text())
    result = data["result"]
    tasks = {r["task"]: r for r in result["results"]}
    assert set(tasks) == {f"{kind} {g}{suffix}" for g in ("gop250", "gop30")
                          for kind, suffix in (("open", ""), ("uniform16", " @24x24"), ("sequential", " @24x24"))} | {
        "sequential gop250 @native (RGB only)", "model demo B1 T16", "model reference B1 T16"}
    assert tasks["sequential gop30 @24x24"]["frames"] == 4 and tasks["uniform16 gop30 @24x24"]["frames"] == 16
    assert all(r["median_ms"] > 0 and r["cpu_median_ms"] >= 0 for r in result["results"])
    assert set(result["classify_clip"]) == {"gop250 + demo", "gop250 + reference", "gop30 + demo",
                                            "gop30 + reference"}
    assert len(result["load_average_before"]) == 3 and data["environment"]["av"]
    assert "/" not in result["videos"]["gop250"]["path"]  # no machine paths in a recorded result
    assert "| model demo B1 T16 |" in (tmp_path / "mini.md").read_text() and "round 1/1" in proc.stderr


def test_a_file_this_tool_did_not_write_is_kept(tmp_path, capsys):
    from benchmarks.decode import main

    (tmp_path / "mini.md").write_text("my notes\n")
    assert main(["--out", str(tmp_path), "--prefix", "mini", "--rounds", "1"]) == 2  # before any video is written
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "mini.md").read_text() == "my notes\n" and sorted(tmp_path.iterdir()) == [tmp_path / "mini.md"]


def test_the_test_video_has_the_frames_asked_for_and_moves(tmp_path):
    from benchmarks.workloads import moving_scene, write_test_video
    from runtime.video import probe_video

    frames = list(moving_scene(6, 32, 48, fps=10))
    assert len(frames) == 6 and frames[0].shape == (32, 48, 3) and frames[0].dtype.name == "uint8"
    assert all((a == b).all() for a, b in zip(frames, moving_scene(6, 32, 48, fps=10), strict=True))  # seeded
    # It moves: the mean change over half a second (32.9 here) is far above the noise's alone
    # (3.4 = E|N(0,3) - N(0,3)|).
    assert abs(frames[0].astype(int) - frames[5]).mean() > 10
    info = probe_video(write_test_video(tmp_path / "v.mp4", 12, (32, 48), fps=10, keyframe_interval=5))
    assert (info.num_frames, info.height, info.width, info.fps, info.codec) == (12, 32, 48, 10, "h264")
    assert info.keyframes >= 3  # at most 5 frames apart: frames 0, <= 5 and <= 10
