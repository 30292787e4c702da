"""Videos as users have them (tests/video_cases.py): every frame the reader gives is the frame a player shows (an
independent decode with PyAV, turned as the display matrix says, and ``ffmpeg``'s own output where it is installed),
and ``classify`` gives what ``runner.infer`` gives on those frames."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("av")

from conftest import TINY_CLASSES, TINY_CONFIG  # noqa: E402
from video_cases import (  # noqa: E402
    clip_probs,
    expected_turn,
    ffmpeg_frames,
    make_cases,
    player_frames,
)

import runtime  # noqa: E402
from runtime.errors import RuntimeInputError  # noqa: E402
from runtime.frames import resize_frames  # noqa: E402
from runtime.video import VideoReader, probe_video  # noqa: E402
from runtime.video_sampling import sample_indices  # noqa: E402

MODEL_SIZE = TINY_CONFIG.frame_size
TIMING = ("offset.mkv", "cut.mkv", "repeats.mkv")
PLAIN = ("bframes.avi", "latin1.mp4", *TIMING, "edit.mp4")
ROTATED = {"rot90.mp4": 90, "rot-90.mp4": -90, "rot180.mp4": 180}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_cases(tmp_path_factory.mktemp("cases"))


def expected_frames(cases, name) -> np.ndarray:
    """What a player shows, decoded independently of the reader."""
    if name == "still_first.mkv":
        return player_frames(cases[name], stream_index=1)  # the moving track, not the picture before it
    return player_frames(cases[name], display=expected_turn(ROTATED.get(name, 0)))


@pytest.mark.parametrize("name", [*PLAIN, "still_first.mkv", *ROTATED])
def test_every_frame_is_the_frame_a_player_shows(cases, name):
    want = expected_frames(cases, name)
    with VideoReader(cases[name]) as r:
        assert r.info.num_frames == len(want)
        assert (r.info.height, r.info.width) == want.shape[1:3]
        sequential = np.stack([f for _, f in r.iter_frames()])
        assert np.array_equal(sequential, want)
        index = r.index
    # Frame i from a fresh reader (seeking), from one that read frame 0 first, and out of order: the same frame.
    for i in range(len(want)):
        with VideoReader(cases[name], index=index) as fresh:
            assert np.array_equal(fresh.read([i])[0], want[i]), i
    with VideoReader(cases[name], index=index) as r:
        r.read([0])
        order = [len(want) - 1, 5, 17, 3, len(want) // 2, 0]
        assert np.array_equal(r.read(order), want[order])
        windows = list(r.iter_windows(8, 6))
    assert all(np.array_equal(w.frames, want[w.indices]) for w in windows)
    assert windows[-1].indices[-1] >= len(want) - 6  # every window to the end: none "damaged" early


def test_timestamps_that_start_late_or_repeat_are_not_truncation(cases, tmp_path):
    assert probe_video(cases["offset.mkv"]).duration_s == pytest.approx(1.6)
    assert probe_video(cases["cut.mkv"]).num_frames == 28
    repeats = probe_video(cases["repeats.mkv"])
    assert repeats.num_frames == 40 and not repeats.seekable  # counted in decoding order
    # The check still finds real truncation on the same timeline: the offset video cut in half.
    data = cases["offset.mkv"].read_bytes()
    short = tmp_path / "short.mkv"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeInputError, match=r"short\.mkv is truncated or damaged: its header declares video up to "
                                                r"11\.600 s, but its \d+ readable frames end at 10\.\d+ s"):
        probe_video(short)


def test_edit_list_frames_are_the_shown_ones(cases):
    # Two packets before the edit list's start are flagged discard: references for decoding, never shown.
    with VideoReader(cases["edit.mp4"]) as r:
        assert r.info.num_frames == 38 and r.info.seekable
        assert r.index.times_s[0] == 0.0


def test_cover_art_is_not_a_video_and_a_still_track_is_not_chosen(cases):
    with pytest.raises(RuntimeInputError, match=r"cover\.mp4 has no video stream \(its streams: attached picture, "
                                                r"audio\)"):
        probe_video(cases["cover.mp4"])
    info = probe_video(cases["still_first.mkv"])
    assert info.stream_index == 1 and info.num_frames == 40 and info.codec == "h264"


@pytest.mark.parametrize("name", [*ROTATED, "rot90m.mp4"])
def test_rotation_matches_ffmpeg(cases, name):
    """``ffmpeg`` (as players) turns the picture as its display matrix says; the reader gives the same frames."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is not installed (Debian: apt-get install ffmpeg)")
    with VideoReader(cases[name]) as r:
        ours = np.stack([f for _, f in r.iter_frames()])
        assert r.info.rotation == {"rot90.mp4": 90, "rot-90.mp4": -90, "rot180.mp4": -180, "rot90m.mp4": 90}[name]
        assert r.info.mirrored == name.endswith("m.mp4")
    assert np.array_equal(ours, ffmpeg_frames(cases[name], ours.shape[1:]))


def test_a_rotation_other_than_a_quarter_turn_is_refused(tmp_path):
    from video_cases import source_frames, write_rotated

    path = write_rotated(tmp_path / "tilted.mp4", source_frames()[:4], 45)
    with pytest.raises(RuntimeInputError, match=r"tilted\.mp4: its display matrix turns the picture by 45 degrees; "
                                                r"this reader applies quarter turns \(0, 90, 180, 270 degrees\)"):
        probe_video(path)


def test_a_rotated_video_and_its_frames_saved_as_images_give_the_model_one_input(cases, tiny_checkpoint, tmp_path):
    from PIL import Image

    from runtime.__main__ import main

    want = expected_frames(cases, "rot90.mp4")
    idx = sample_indices(len(want), 8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, i in enumerate(idx):
        Image.fromarray(want[i]).save(folder / f"{k}.png")
    out = tmp_path / "preds.json"
    assert main(["classify", str(tiny_checkpoint), str(cases["rot90.mp4"]), str(folder), "--frames", "8", "--resize",
                 "--top-k", "3", "--json", str(out)]) == 0
    video, images = json.loads(out.read_text())["clips"]
    assert video["labels"] == images["labels"]
    np.testing.assert_allclose(video["probs"], images["probs"], atol=1e-6)
    assert (video["video"]["width"], video["video"]["height"], video["video"]["rotation"]) == (48, 64, 90)


def test_classify_cli_on_real_world_videos_equals_runner_infer(cases, tiny_checkpoint, tmp_path):
    """As a user runs it: one subprocess over every case; each clip's probabilities are ``runner.infer``'s on the
    independently decoded frames."""
    names = [*PLAIN, "still_first.mkv", "rot90.mp4"]
    out = tmp_path / "preds.json"
    proc = subprocess.run([sys.executable, "-m", "runtime", "classify", str(tiny_checkpoint),
                           *(str(cases[n]) for n in names), "--frames", "8", "--top-k", str(len(TINY_CLASSES)),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["clips"]
    clips = []
    for name in names:
        want = expected_frames(cases, name)
        clips.append(resize_frames(want[sample_indices(len(want), 8)], MODEL_SIZE))
    with runtime.load(tiny_checkpoint, device="cpu") as runner:
        expected = clip_probs(runner, clips, MODEL_SIZE)
    for name, entry, probs in zip(names, result, expected, strict=True):
        got = dict(zip(entry["labels"], entry["probs"], strict=True))
        np.testing.assert_allclose([got[c] for c in TINY_CLASSES], probs, atol=2e-6, err_msg=name)
    assert "cover.mp4" not in proc.stdout


def test_cover_art_through_the_cli_is_one_error_line(cases, tiny_checkpoint, capsys):
    from runtime.__main__ import main

    assert main(["classify", str(tiny_checkpoint), str(cases["cover.mp4"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cover.mp4 has no video stream" in err[0]



# --- performance: frames nobody uses are not converted; a seek is never paid for twice ------------------------------


def counting(monkeypatch, reader, method: str) -> list[int]:
    """The frame index of every call of ``reader.<method>`` (a decoder step or a conversion)."""
    seen: list[int] = []
    real = getattr(reader, method)

    def wrapper(*args):
        out = real(*args)
        if method == "_rgb":
            seen.append(reader._pos)
        elif out is not None:
            seen.append(out[0])
        return out

    monkeypatch.setattr(reader, method, wrapper)
    return seen


def test_windows_far_apart_convert_only_their_frames(cases, monkeypatch):
    want = expected_frames(cases, "offset.mkv")  # H.264, a keyframe every 12 frames
    with VideoReader(cases["offset.mkv"], (16, 16)) as r:
        converted, decoded = counting(monkeypatch, r, "_rgb"), counting(monkeypatch, r, "_decode_next")
        windows = list(r.iter_windows(4, 30))
    assert [w.indices.tolist() for w in windows] == [[0, 1, 2, 3], [30, 31, 32, 33]]
    assert converted == [0, 1, 2, 3, 30, 31, 32, 33]  # not all 40 frames
    assert decoded == [1, 2, 3, *range(24, 34)]  # frame 0 came with opening; then from keyframe 24, not frame 4
    for w in windows:
        np.testing.assert_array_equal(w.frames, resize_frames(want[w.indices], (16, 16)))


def test_a_b_frame_avi_seeks_to_its_keyframes_and_decodes_each_frame_once(cases, monkeypatch):
    with VideoReader(cases["bframes.avi"]) as r:
        index = r.index
    want = expected_frames(cases, "bframes.avi")
    for target, first in ((10, 0), (11, 0), (23, 12), (35, 24)):  # 10, 11, 23, 35: B-frames before a keyframe
        with VideoReader(cases["bframes.avi"], index=index) as r:
            decoded = counting(monkeypatch, r, "_decode_next")
            np.testing.assert_array_equal(r.read([target])[0], want[target])
            assert decoded == list(range(first, target + 1)) and r.seekable, target
    assert index.info.seekable


def test_a_seek_found_unreliable_is_kept_in_the_index(cases, monkeypatch):
    """A container whose seeks land late (simulated: each seek goes to the next keyframe): the first reader falls
    back to decoding from the start, and a reader given its index starts there at once: no seek, no frame twice."""
    real_restart = VideoReader._restart

    def landing_late(self, ts, keyframe=0):
        if ts is None:
            return real_restart(self, None)
        return real_restart(self, int(self.index.pts[keyframe + 12]), keyframe + 12)

    want = expected_frames(cases, "offset.mkv")
    with VideoReader(cases["offset.mkv"]) as r:
        monkeypatch.setattr(VideoReader, "_restart", landing_late)
        np.testing.assert_array_equal(r.read([14])[0], want[14])
        learned = r.index
    assert not learned.info.seekable
    with VideoReader(cases["offset.mkv"], index=learned) as r:
        decoded = counting(monkeypatch, r, "_decode_next")
        np.testing.assert_array_equal(r.read([14, 20])[0], want[14])
    assert decoded == list(range(0, 21))
