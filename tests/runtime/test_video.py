"""runtime.video: decoding quality, sampling indices, seeking, streaming and windows, and every bad input."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from runtime.errors import RuntimeInputError
from runtime.frames import resize_frames
from runtime.video import VideoReader, iter_video_frames, opened_video, probe_video, read_video_clip
from runtime.video_sampling import sample_indices, window_starts
from runtime.video_write import write_video

pytest.importorskip("av")

from conftest import VIDEO_FRAMES, VIDEO_SPECS, motion_frames  # noqa: E402
from video_cases import add_silence, remux  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def probe_index(path):
    with VideoReader(path) as r:
        return r.index


def full_decode(path) -> np.ndarray:
    with VideoReader(path) as r:
        return np.stack([f for _, f in r.iter_frames()])


@pytest.mark.parametrize("name", list(VIDEO_SPECS))
def test_decoded_frames_match_the_source(synthetic_videos, name):
    path, source, fps = synthetic_videos[name]
    _, codec, _, size, _, _ = VIDEO_SPECS[name]
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (VIDEO_FRAMES, *size)
    assert info.codec == {"libx264": "h264", "mpeg4": "mpeg4"}[codec]
    assert info.fps == pytest.approx(fps, rel=0.01) and not info.variable_frame_rate and info.seekable
    frames = full_decode(path)
    assert frames.dtype == np.uint8 and frames.shape == source.shape
    assert psnr(frames, source) >= 30.0
    assert min(psnr(f, s) for f, s in zip(frames, source, strict=True)) >= 30.0  # every frame, in order


def test_uniform_sampling_takes_the_documented_indices():
    # The middle frame of each of T equal segments: floor((2i + 1) N / (2T)).
    assert sample_indices(40, 8).tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert sample_indices(100, 16).tolist() == [(2 * i + 1) * 100 // 32 for i in range(16)]
    assert sample_indices(8, 8).tolist() == list(range(8))
    assert sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4]  # a short video gives what it has
    # Training: a random frame of each segment, different per generator, never outside its segment.
    draws = [sample_indices(40, 8, rng=np.random.default_rng(s)) for s in range(20)]
    for d in draws:
        assert len(d) == 8 and all(5 * i <= v < 5 * (i + 1) for i, v in enumerate(d))
    assert len({tuple(d) for d in draws}) > 1


def test_stride_and_window_sampling_indices():
    assert sample_indices(40, 4, "stride", stride=3).tolist() == [15, 18, 21, 24]  # centred: span 10, start 15
    assert sample_indices(40, 8, "window").tolist() == list(range(16, 24))
    assert sample_indices(5, 4, "stride", stride=2).tolist() == [0, 2, 4]
    for s in range(10):
        d = sample_indices(40, 8, "window", rng=np.random.default_rng(s))
        assert np.all(np.diff(d) == 1) and 0 <= d[0] <= 32
    assert window_starts(40, 16, 10).tolist() == [0, 10, 20]
    assert window_starts(5, 16, 4).tolist() == [0]
    with pytest.raises(RuntimeInputError, match="unknown sampling 'random'.*uniform, stride, window"):
        sample_indices(40, 8, "random")
    with pytest.raises(RuntimeInputError, match="frames must be an integer >= 1"):
        sample_indices(40, 0)


@pytest.mark.parametrize("name", list(VIDEO_SPECS))
def test_reading_by_index_equals_the_sequential_decode(synthetic_videos, name):
    path, _, _ = synthetic_videos[name]
    full = full_decode(path)
    idx = [39, 0, 20, 21, 5, 5, 33]
    with VideoReader(path) as r:
        assert np.array_equal(r.read(idx), full[idx])
        clip = r.read_clip(8)
        assert clip.indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37] and not clip.short
        assert np.array_equal(clip.frames, full[clip.indices])
    # Resized exactly as the frame-folder path resizes (runtime.frames.resize_frames).
    small = read_video_clip(path, 8, frame_size=(16, 16))
    assert np.array_equal(small.frames, resize_frames(full[small.indices], (16, 16)))


def test_the_frame_size_can_be_set_on_an_open_reader(synthetic_videos):
    path, _, _ = synthetic_videos["h264_mp4_25fps"]
    with VideoReader(path) as r:
        native = r.read([3, 30])
        r.frame_size = (16, 16)  # the CLI opens a video before the model that fixes the size loads
        assert np.array_equal(r.read([3, 30]), resize_frames(native, (16, 16)))
        with pytest.raises(RuntimeInputError, match=r"frame_size must be \(height, width\).*got \(16, 0\)"):
            r.frame_size = (16, 0)
        assert r.frame_size == (16, 16)
        # opened_video sets the size on an open reader and leaves it open for its owner.
        with opened_video(r, (8, 8)) as same:
            assert same is r and r.read([3]).shape == (1, 8, 8, 3)
        assert r.read([30]).shape == (1, 8, 8, 3)
    with opened_video(path, (8, 8)) as own:
        assert own.read([3]).shape == (1, 8, 8, 3)
    with pytest.raises(RuntimeInputError, match="this reader is closed; open the video again"):  # closed after
        own.read([30])
    with pytest.raises(RuntimeInputError, match="this reader is closed"):
        next(own.iter_frames())


def test_a_reader_given_an_index_does_not_demux_again_unless_the_file_changed(synthetic_videos, tmp_path, demuxed):
    path, _, _ = synthetic_videos["mpeg4_mkv_keyframes_25fps"]
    with VideoReader(path) as first:
        index, expected = first.index, first.read([0, 11, 22, 33])
    demuxed.clear()
    with VideoReader(path, index=index) as r:
        assert r.index is index and r.info == index.info and r.seekable
        assert np.array_equal(r.read([33, 0, 22, 11]), expected[[3, 0, 2, 1]])
        assert np.array_equal(np.stack([f for _, f in r.iter_frames(11)]), expected)
    assert demuxed == []
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    with VideoReader(copy, index=index) as r:  # another file's index
        assert r.index is not index and r.info.path == str(copy)
    assert demuxed == [copy]
    with VideoReader(copy) as r:
        stale = r.index
    os.utime(copy, ns=(1, 1))  # the file changed since its index was made (here its modification time only)
    with VideoReader(copy, index=stale) as r:
        assert r.index is not stale and r.index.file_stamp != stale.file_stamp
    assert demuxed == [copy, copy, copy]


def test_a_few_frames_are_read_by_seeking_not_by_decoding_the_whole_file(synthetic_videos, monkeypatch):
    path, _, _ = synthetic_videos["mpeg4_mkv_keyframes_25fps"]  # a keyframe every 5 frames
    full = full_decode(path)
    with VideoReader(path) as r:
        assert r.info.keyframes == VIDEO_FRAMES // 5
        decoded = []
        real_next = r._next

        def counting_next():
            item = real_next()
            if item is not None:
                decoded.append(item[0])
            return item

        monkeypatch.setattr(r, "_next", counting_next)
        assert np.array_equal(r.read([37]), full[[37]])
        assert decoded == [35, 36, 37]  # from the keyframe before frame 37, not from frame 0
        decoded.clear()
        assert np.array_equal(r.read([38, 39]), full[[38, 39]])
        assert decoded == [38, 39]  # same GOP: decoding went on forward, no seek


def test_sequential_fallback_gives_the_same_frames(synthetic_videos):
    path, _, _ = synthetic_videos["h264_mp4_25fps"]
    full = full_decode(path)
    index = probe_index(path).learned(seekable=False)  # as a file whose seeks failed: every read decodes from the start
    with VideoReader(path, index=index) as r:
        assert not r.seekable
        assert np.array_equal(r.read([30, 3, 17]), full[[30, 3, 17]])


def test_a_seek_that_lands_after_its_target_falls_back_to_decoding_from_the_start(synthetic_videos, monkeypatch,
                                                                                   caplog):
    path, _, _ = synthetic_videos["mpeg4_mkv_keyframes_25fps"]
    full = full_decode(path)
    with VideoReader(path) as r:
        real_restart = r._restart

        def landing_late(ts, keyframe=0):  # as a container whose index is off: the seek ends on a later keyframe
            if ts is None:
                return real_restart(None)
            return real_restart(int(r.index.pts[keyframe + 5]), keyframe + 5)

        monkeypatch.setattr(r, "_restart", landing_late)
        with caplog.at_level(logging.INFO, logger="runtime.video"):
            assert np.array_equal(r.read([12, 30]), full[[12, 30]])
    assert not r.seekable and not r.index.info.seekable  # the index keeps it for the readers given it later
    assert "a seek to keyframe 10 landed at frame 15; this video is read from the start from now on" in caplog.text


def test_stride_stream_and_windows(synthetic_videos):
    path, _, _ = synthetic_videos["mpeg4_avi_30fps"]
    full = full_decode(path)
    got = list(iter_video_frames(path, 3))
    assert [i for i, _ in got] == list(range(0, VIDEO_FRAMES, 3))
    assert all(np.array_equal(f, full[i]) for i, f in got)
    with VideoReader(path) as r:
        windows = list(r.iter_windows(16, 10))
    assert [w.indices.tolist() for w in windows] == [list(range(s, s + 16)) for s in (0, 10, 20)]
    assert all(np.array_equal(w.frames, full[w.indices]) for w in windows)
    assert windows[1].times_s[0] == pytest.approx(10 / 30, abs=1e-3)


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, synthetic_videos):
    """name -> path of each bad input (made from the good videos, or written here)."""
    import av

    folder = tmp_path_factory.mktemp("bad")
    mp4 = synthetic_videos["h264_mp4_25fps"][0].read_bytes()
    mkv = synthetic_videos["mpeg4_mkv_keyframes_25fps"][0].read_bytes()
    out = {"truncated_mp4": folder / "truncated.mp4", "truncated_mkv": folder / "truncated.mkv",
           "corrupt_mp4": folder / "corrupt.mp4", "garbage": folder / "garbage.mp4", "text": folder / "notes.txt",
           "audio_only": folder / "audio.mkv", "zero_frames": folder / "empty.avi"}
    out["truncated_mp4"].write_bytes(mp4[: len(mp4) // 2])  # MP4 from PyAV: the index (moov) is at the end
    out["truncated_mkv"].write_bytes(mkv[: len(mkv) // 2])
    damaged = bytearray(mp4)
    n = len(damaged)
    damaged[n // 3: n // 3 + n // 4] = np.random.default_rng(1).integers(0, 256, n // 4, dtype=np.uint8).tobytes()
    out["corrupt_mp4"].write_bytes(bytes(damaged))
    out["garbage"].write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out["text"].write_text("not a video\n" * 50)
    with av.open(str(out["audio_only"]), "w") as c:
        add_silence(c, "pcm_s16le", "s16", 4)
    with av.open(str(out["zero_frames"]), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    return out


@pytest.mark.parametrize("name, message", [
    ("truncated_mp4", r"truncated\.mp4 cannot be opened as a video \(unknown container, damaged, or truncated\)"),
    ("truncated_mkv", r"truncated\.mkv is truncated or damaged: its header declares video up to 1\.600 s, but its "
                      r"\d+ readable frames end at"),
    ("garbage", r"garbage\.mp4 cannot be opened as a video .*Invalid data"),
    ("text", r"notes\.txt: \.txt is not a video container this reader opens; valid suffixes: \.mp4"),
    ("audio_only", r"audio\.mkv has no video stream \(its streams: audio\)"),
    ("zero_frames", r"empty\.avi has a video stream but no frames"),
])
def test_bad_files_are_refused_when_opened(bad_videos, name, message):
    with pytest.raises(RuntimeInputError, match=message):
        probe_video(bad_videos[name])


def test_a_first_frame_that_cannot_be_decoded_is_named_at_opening(tmp_path):
    """Its first keyframe's data overwritten: the reader opens it by decoding that frame, and says which frame."""
    src = write_video(tmp_path / "src.avi", motion_frames(2, 10, (48, 64)), 25, codec="mpeg4")

    def garble_first(k, p):
        if k == 0:
            p.update(bytes(p)[:8] + np.random.default_rng(0).integers(0, 256, p.size - 8, np.uint8).tobytes())

    damaged = remux(src, tmp_path / "first.avi", garble_first)
    with pytest.raises(RuntimeInputError, match=r"first\.avi is damaged: decoding failed at frame 0: InvalidDataError"):
        probe_video(damaged)


def test_corrupt_data_inside_a_video_is_an_error_naming_the_file(bad_videos):
    with pytest.raises(RuntimeInputError, match=r"corrupt\.mp4 is damaged: decoding failed"):
        read_video_clip(bad_videos["corrupt_mp4"], 8)
    with pytest.raises(RuntimeInputError, match=r"corrupt\.mp4 is damaged"):
        list(iter_video_frames(bad_videos["corrupt_mp4"]))


def test_missing_file_and_index_out_of_range(tmp_path, synthetic_videos):
    with pytest.raises(RuntimeInputError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")
    with VideoReader(synthetic_videos["h264_mp4_25fps"][0]) as r:
        with pytest.raises(RuntimeInputError, match=r"has frames 0\.\.39; asked for frame 40"):
            r.read([3, 40])


def test_a_video_shorter_than_a_clip_is_padded_and_says_so(tmp_path, caplog):
    path = write_video(tmp_path / "short.mp4", motion_frames(0, 5, (32, 32)), 25)
    with caplog.at_level(logging.WARNING, logger="runtime.video"):
        clip = read_video_clip(path, 8)
    assert clip.length == 5 and clip.requested == 8 and clip.short
    assert clip.indices.tolist() == [0, 1, 2, 3, 4]
    assert "short.mp4: a clip of 8 frames has 5 (the video has only 5); it is padded" in caplog.text
    with VideoReader(path) as r:
        (window,) = list(r.iter_windows(8, 2))
    assert window.length == 5 and window.short


def test_variable_frame_rate_is_sampled_by_frame_index(tmp_path):
    source = motion_frames(1, 24, (32, 32))
    pts = np.cumsum([0] + [1, 2, 1, 3, 1, 1, 4] * 4)[:24]  # irregular intervals, in 1/30 s
    path = write_video(tmp_path / "vfr.mkv", source, 30, pts=pts, time_base=(1, 30), options={"crf": "12"})
    with VideoReader(path) as r:
        assert r.info.variable_frame_rate and r.info.num_frames == 24
        clip = r.read_clip(6)
    assert clip.indices.tolist() == sample_indices(24, 6).tolist() == [2, 6, 10, 14, 18, 22]
    assert psnr(clip.frames, source[clip.indices]) >= 30.0  # the frames at those indices, not at even times
    assert clip.times_s.tolist() == pytest.approx((pts[clip.indices] - pts[0]) / 30, abs=2e-3)
