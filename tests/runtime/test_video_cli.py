"""``python -m runtime classify`` / ``stream`` on video files, and ``StreamingClassifier.feed``, against the runner
and the reader: the CLI classifies exactly the frames the reader reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime
from runtime.__main__ import main
from runtime.video import VideoReader, read_video_clip
from runtime.video_sampling import window_starts
from runtime.video_write import write_video

pytest.importorskip("av")

from conftest import TINY_CLASSES, TINY_CONFIG, VIDEO_FRAMES, motion_frames  # noqa: E402
from video_cases import clip_probs  # noqa: E402

SIZE = TINY_CONFIG.frame_size


def test_classify_video_equals_runner_infer_on_the_readers_frames(tiny_checkpoint, synthetic_videos, tmp_path,
                                                                  capsys):
    paths = [synthetic_videos[n][0] for n in ("h264_mp4_25fps", "h264_mkv_odd_30fps")]
    short = write_video(tmp_path / "short.avi", motion_frames(2, 5, (40, 40)), 30, codec="mpeg4")
    out = tmp_path / "preds.json"
    args = ["classify", str(tiny_checkpoint), *map(str, paths), str(short), "--frames", "8", "--top-k", "3",
            "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(8 frames of 40, uniform)" in printed and "(5 frames of 8: the video has only 5, padded)" in printed
    result = json.loads(out.read_text())["clips"]
    clips = [read_video_clip(p, 8, frame_size=SIZE) for p in [*paths, short]]
    with runtime.load(tiny_checkpoint, device="cpu") as runner:
        expected = clip_probs(runner, [c.frames for c in clips], SIZE)
    for entry, clip, probs in zip(result, clips, expected, strict=True):
        assert entry["video"]["indices"] == clip.indices.tolist() and entry["frames"] == clip.length
        assert entry["video"]["short"] == clip.short
        for label, p in zip(entry["labels"], entry["probs"], strict=True):
            assert p == pytest.approx(probs[TINY_CLASSES.index(label)], abs=2e-6)
        assert entry["labels"][0] == TINY_CLASSES[int(probs.argmax())]
    assert [e["video"]["short"] for e in result] == [False, False, True]


def test_windows_timeline_json_and_png(tiny_checkpoint, synthetic_videos, tmp_path, capsys):
    path = synthetic_videos["mpeg4_avi_30fps"][0]
    out, png = tmp_path / "timeline.json", tmp_path / "timeline.png"
    assert main(["classify", str(tiny_checkpoint), str(path), "--frames", "8", "--windows", "4", "--json", str(out),
                 "--plot", str(png)]) == 0
    timeline = json.loads(out.read_text())["timelines"][0]
    starts = window_starts(VIDEO_FRAMES, 8, 4)
    assert [w["start"] for w in timeline["windows"]] == starts.tolist()
    assert all(w["end"] - w["start"] == 8 for w in timeline["windows"])
    assert timeline["windows"][1]["start_s"] == pytest.approx(4 / 30, abs=1e-3)
    with VideoReader(path, SIZE) as reader, runtime.load(tiny_checkpoint, device="cpu") as runner:
        expected = clip_probs(runner, [reader.read(range(s, s + 8)) for s in starts], SIZE)
    got = np.array([[w["probs"][c] for c in TINY_CLASSES] for w in timeline["windows"]])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{len(starts)} windows of 8 frames, step 4" in capsys.readouterr().out
    # An existing --plot is replaced only with --force.
    assert main(["classify", str(tiny_checkpoint), str(path), "--windows", "4", "--plot", str(png)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err


def test_folder_of_videos_and_bad_video_arguments(tiny_checkpoint, synthetic_videos, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("h264_mp4_25fps", "mpeg4_avi_30fps"):
        (folder / synthetic_videos[name][0].name).write_bytes(synthetic_videos[name][0].read_bytes())
    assert main(["classify", str(tiny_checkpoint), str(folder), "--frames", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / "h264.mp4"), str(folder / "mpeg4.avi")]
    for args, message in [
        ([str(folder / "missing.mp4")], "missing.mp4 does not exist"),
        ([str(folder), "--windows", "4", "--frames", "0"], "--frames must be >= 1, got 0"),
        ([str(folder), "--plot", str(tmp_path / "t.png")], "--plot draws the --windows timeline"),
        ([str(tmp_path / "x.npy"), "--windows", "2"], "--windows makes a timeline of video files"),
    ]:
        assert main(["classify", str(tiny_checkpoint), *args]) == 2
        assert message in capsys.readouterr().err
    (folder / "frame_0.png").write_bytes(b"")  # frames and videos side by side: which is meant is unclear
    assert main(["classify", str(tiny_checkpoint), str(folder)]) == 2
    assert "holds both video files and frame images" in capsys.readouterr().err


def test_stream_cli_and_feed_agree_with_pushing_the_readers_frames(tiny_checkpoint, tmp_path, capsys):
    path = write_video(tmp_path / "stream.mp4", motion_frames(1, 10, (24, 32)), 25)
    with VideoReader(path, SIZE) as reader:
        frames = [f for _, f in reader.iter_frames()]
    with runtime.StreamingClassifier(tiny_checkpoint, window=3, device="cpu") as stream:
        expected = [(i, stream.push(frames[i])) for i in range(0, 10, 2)]
        stream.reset()
        from_file = list(stream.feed(path, stride=2))
        stream.reset()
        from_frames = list(stream.feed(iter(frames), stride=2))
    for got in (from_file, from_frames):
        assert [i for i, _ in got] == [0, 2, 4, 6, 8]
        for (_, a), (_, b) in zip(got, expected, strict=True):
            np.testing.assert_allclose(a.clip_logits, b.clip_logits, rtol=1e-5, atol=1e-5)
            assert a.frames_seen == b.frames_seen
    assert main(["stream", str(tiny_checkpoint), str(path), "--stride", "2", "--window", "3", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 + 1
    assert lines[1].startswith("frame      2 ~   0.080s  window ") and "latency" in lines[1] and "ms" in lines[1]
    label = lines[1].split("window ")[1].split()[0]
    assert label == expected[1][1].clip_label
    assert lines[-1].startswith("5 frames pushed (stride 2, window 3); median latency")
    assert main(["stream", str(tiny_checkpoint), str(path), "--stride", "0"]) == 2
    assert "--stride must be >= 1" in capsys.readouterr().err


def test_the_cli_opens_each_video_once(tiny_checkpoint, synthetic_videos, demuxed, capsys):
    """A video is opened (demuxed: every packet of the file read) before the model loads, so a bad one is reported
    at once, and that same reader decodes its frames later: never a second demux of a long video."""
    paths = [synthetic_videos[n][0] for n in ("h264_mp4_25fps", "mpeg4_avi_30fps")]
    assert main(["classify", str(tiny_checkpoint), *map(str, paths), "--frames", "8"]) == 0
    assert demuxed == paths
    demuxed.clear()
    assert main(["classify", str(tiny_checkpoint), *map(str, paths), "--frames", "8", "--windows", "8"]) == 0
    assert demuxed == paths
    demuxed.clear()
    assert main(["stream", str(tiny_checkpoint), str(paths[0]), "--window", "3", "--device", "cpu"]) == 0
    assert demuxed == [paths[0]]
    capsys.readouterr()


def test_sampling_options_that_would_be_ignored_are_refused_and_short_clips_say_why(tiny_checkpoint, synthetic_videos,
                                                                                    tmp_path, capsys):
    path = str(synthetic_videos["h264_mp4_25fps"][0])  # 40 frames
    for args, message in [
        (["--frame-stride", "3"], "a frame stride of 3 is used only by the stride sampling, not by 'uniform' "
                                  "(--frame-stride needs --sampling stride)"),
        (["--sampling", "window", "--frame-stride", "2"], "not by 'window'"),
        (["--windows", "4", "--sampling", "stride", "--frame-stride", "2"],
         "--windows reads every window of consecutive frames; --sampling and --frame-stride pick one clip's frames"),
    ]:
        assert main(["classify", str(tiny_checkpoint), path, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # A stride too long for the video: the clip is short because of the stride, and says so (not "only 40").
    assert main(["classify", str(tiny_checkpoint), path, "--frames", "8", "--sampling", "stride", "--frame-stride",
                 "100"]) == 0
    assert "(1 frames of 8: 8 frames 100 apart span 701, the video has 40, padded)" in capsys.readouterr().out


def test_a_link_loop_in_a_folder_of_videos_is_named(tiny_checkpoint, synthetic_videos, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(synthetic_videos["h264_mp4_25fps"][0].read_bytes())
    (folder / "b.mp4").symlink_to("b.mp4")
    assert main(["classify", str(tiny_checkpoint), str(folder)]) == 2
    assert f"{folder / 'b.mp4'} is a loop of symbolic links" in capsys.readouterr().err
