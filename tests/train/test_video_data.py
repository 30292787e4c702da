"""``--data video``: the folder layout and splits, random segments per epoch, the decode cache, bad videos, and a
training run on videos of the synthetic motion classes that reaches the frame tensors' held-out accuracy."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("av")

from conftest import motion_frames  # noqa: E402

from runtime.video import VideoReader  # noqa: E402
from runtime.video_write import write_video  # noqa: E402
from train.clips import DataError  # noqa: E402
from train.data import DataSpec, build_dataset  # noqa: E402
from train.synthetic import synthetic_class_names  # noqa: E402

NAMES = synthetic_class_names(4)


def write_motion_folder(root, per_class: int, size: int, seed: int, noise: float = 0.12) -> None:
    """``root/<class>/*.mp4|avi``: one video per clip of the synthetic motion classes (period T = 8, so any 8
    consecutive frames are a clip of the class), 8 to 12 frames long, H.264 in MP4 at 25 fps and MPEG-4 in AVI at
    30 fps, alternately."""
    for label, name in enumerate(NAMES):
        for i in range(per_class):
            frames = motion_frames(label, 8 + i % 5, (size, size), seed=seed + label * 1000 + i, noise=noise,
                                   period=8)
            if i % 2:
                write_video(root / name / f"{i}.mp4", frames, 25, options={"crf": "20"})
            else:
                write_video(root / name / f"{i}.avi", frames, 30, codec="mpeg4", options={"qscale": "3"})


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_motion_folder(root, 3, 20, seed=0, noise=0.02)
    return root


def spec(root, **kw) -> DataSpec:
    return DataSpec(name="video", data_dir=str(root), frames=8, frame_size=(16, 16), **kw)


def test_each_video_is_demuxed_once_when_the_set_is_built_and_never_per_item(small_folder, demuxed):
    ds = build_dataset(spec(small_folder), "train")
    assert sorted(demuxed) == sorted(p for p, _, _ in ds.samples)
    demuxed.clear()
    items = [ds[i][0] for i in range(len(ds))]  # seek and decode through the kept index
    assert demuxed == []
    with VideoReader(ds.samples[0][0], (16, 16)) as reader:  # the same frames as a reader that demuxes itself
        expected = reader.read(ds.indices(0, reader.info.num_frames))
    np.testing.assert_array_equal(ds.raw_clip(0)[0], expected)
    assert items[0].shape == (8, 3, 16, 16)
    # A video changed since the set was built (here only its modification time) is demuxed again: an old index
    # would seek to the wrong places of a new file.
    path = ds.samples[1][0]
    os.utime(path, ns=(1, 1))
    demuxed.clear()
    ds[1]
    assert demuxed == [path]


def test_layout_split_and_items(small_folder, tmp_path):
    train, test = build_dataset(spec(small_folder), "train"), build_dataset(spec(small_folder), "test")
    assert train.class_names == test.class_names == sorted(NAMES)
    assert len(train) + len(test) == 12 and len(test) == 4  # one video of each class held out (--val-fraction)
    assert not {p for p, _, _ in train.samples} & {p for p, _, _ in test.samples}
    x, label = test[0]
    assert x.shape == (8, 3, 16, 16) and x.dtype.is_floating_point and 0 <= label < 4
    # train/ and test/ inside the root are the splits.
    for split in ("train", "test"):
        shutil.copytree(small_folder, tmp_path / "split" / split)
    assert len(build_dataset(spec(tmp_path / "split"), "test")) == 12
    shutil.rmtree(tmp_path / "split" / "test")
    with pytest.raises(DataError, match="has train/ but no test/"):
        build_dataset(spec(tmp_path / "split"), "train")
    (tmp_path / "frames" / "a" / "clip1").mkdir(parents=True)
    with pytest.raises(DataError, match=r"holds no videos .*for folders of frame images use --data folder"):
        build_dataset(spec(tmp_path / "frames"), "train")


def test_training_draws_a_random_segment_per_epoch_and_evaluation_is_fixed(small_folder):
    train = build_dataset(spec(small_folder, sampling="window"), "train")
    test = build_dataset(spec(small_folder, sampling="window"), "test")
    long = max(range(len(train)), key=lambda i: train.samples[i][2])
    n = train.samples[long][2]
    assert n > 8
    draws = []
    for epoch in range(6):
        train.set_epoch(epoch)
        draws.append(train.indices(long, n).tolist())
        assert draws[-1] == train.indices(long, n).tolist()  # the same in every worker and after a resume
    assert len({d[0] for d in draws}) > 1 and all(np.all(np.diff(d) == 1) for d in draws)
    test.set_epoch(3)
    i = max(range(len(test)), key=lambda i: test.samples[i][2])
    assert test.indices(i, test.samples[i][2]).tolist() == list(range((test.samples[i][2] - 8) // 2,
                                                                         (test.samples[i][2] - 8) // 2 + 8))
    # What an item holds: the reader's frames at those indices, resized, normalised.
    clip, _ = train.raw_clip(long)
    with VideoReader(train.samples[long][0], (16, 16)) as reader:
        assert np.array_equal(clip, reader.read(draws[-1]))


def test_decode_cache_hits_after_the_first_epoch(small_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    train = build_dataset(spec(small_folder, cache_dir=str(cache)), "train")
    first = [train.raw_clip(i)[0] for i in range(len(train))]
    assert (train.cache_misses, train.cache_hits) == (len(train), 0)
    entries = sorted(cache.glob("*-16x16-v2.npy"))
    assert len(entries) == len(train) and not list(cache.glob(".*.tmp"))
    import train.video_clips as video_clips

    def no_decoding(*a, **k):
        raise AssertionError("a cached video was decoded again")

    monkeypatch.setattr(video_clips, "VideoReader", no_decoding)
    train.set_epoch(1)
    second = [train.raw_clip(i)[0] for i in range(len(train))]
    assert train.cache_hits == len(train) and train.cache_misses == len(train)
    train.set_epoch(0)
    assert all(np.array_equal(train.raw_clip(i)[0], f) for i, f in enumerate(first))  # same clips as decoded
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))  # epoch 1: other segments
    monkeypatch.undo()
    # The key is the content: a changed video is a miss, not a stale hit.
    path = train.samples[0][0]
    write_video(path, motion_frames(0, 9, (20, 20), seed=99, period=8), 25, codec="mpeg4")
    train = build_dataset(spec(small_folder, cache_dir=str(cache)), "train")
    train.raw_clip(0)
    assert train.cache_misses == 1 and len(list(cache.glob("*.npy"))) == len(entries) + 1
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="--cache-dir .*afile is a file, not a folder"):
        build_dataset(spec(small_folder, cache_dir=str(tmp_path / "afile")), "train")


@pytest.fixture
def folder_with_bad_video(small_folder, tmp_path):
    root = tmp_path / "with_bad"
    shutil.copytree(small_folder, root)
    bad = root / NAMES[0] / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    return root, bad


def test_on_bad_video_fail_and_skip(folder_with_bad_video, caplog, capsys, tmp_path):
    root, bad = folder_with_bad_video
    with pytest.raises(DataError, match=rf"bad video {bad}: .*cannot be opened as a video.*--on-bad-video skip"):
        build_dataset(spec(root, val_fraction=0.5), "train")
    with caplog.at_level(logging.WARNING, logger="train.video_clips"):
        ds = build_dataset(spec(root, on_bad_video="skip", val_fraction=0.5), "train")
        ds_test = build_dataset(spec(root, on_bad_video="skip", val_fraction=0.5), "test")
    assert f"skipping bad video {bad}" in caplog.text
    assert bad not in {p for p, _, _ in ds.samples + ds_test.samples} and len(ds) + len(ds_test) == 12
    # A video that opens but fails while decoding: skipped for the next one (logged), or the error (fail).
    good = ds.samples[0][0]
    ds.samples[0] = (ds.samples[0][0], ds.samples[0][1], 50)  # pretend it has frames it does not have
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.video_clips"):
        clip, label = ds.raw_clip(0)
    assert f"skipping bad video {good}" in caplog.text and label == ds.samples[1][1] and len(clip) == 8
    ds.on_bad_video = "fail"
    with pytest.raises(DataError, match=rf"bad video {good}: .*has frames 0\.\.\d+; asked for frame"):
        ds.raw_clip(0)
    # Through the CLI: exit 2 and the path on stderr; with skip the run trains.
    from train.__main__ import main

    base = ["--data", "video", "--data-dir", str(root), "--frames", "8", "--frame-size", "16", "--val-fraction",
            "0.5", "--backbone", "resnet18", "--stem", "imagenet", "--hidden-size", "16", "--num-layers", "1",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress", "--no-eval-shuffled"]
    assert main([*base, "--out", str(tmp_path / "fail")]) == 2
    assert f"bad video {bad}" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "skip"), "--on-bad-video", "skip"]) == 0


def test_training_on_videos_learns_the_motion_classes(tmp_path_factory):
    """The synthetic motion classes as video files (H.264 and MPEG-4): the run learns them (held-out clip accuracy far
    above the 0.25 of chance). Decoding, sampling and resizing keep frame order and content."""
    from train.__main__ import main

    root = tmp_path_factory.mktemp("motion")
    write_motion_folder(root / "train", 48, 16, seed=0)
    write_motion_folder(root / "test", 8, 16, seed=10_000)
    out = root / "run"
    assert main(["--data", "video", "--data-dir", str(root), "--sampling", "window", "--frames", "8",
                 "--frame-size", "16", "--backbone", "resnet18", "--stem", "imagenet", "--hidden-size", "64",
                 "--num-layers", "1", "--epochs", "8", "--batch-size", "16", "--lr", "3e-3", "--device", "cpu",
                 "--no-progress", "--no-eval-shuffled", "--seed", "0", "--workers", "2",
                 "--cache-dir", str(root / "cache"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # On an AMD EPYC (2026-12) the best epoch reached 0.97 for --seed 0 (the test's) and 0.84 to 1.00 for seeds 1-4 (so
    # a bar of 0.9 failed for 2 of 5 seeds); the first epoch stood at 0.19 to 0.31, the second at 0.34 to 0.69. 0.6
    # is 4.6 standard deviations of chance above 0.25 on the 32 held-out clips, and 0.24 below the lowest run measured.
    assert max(m["val_clip_acc"] for m in metrics) >= 0.6, [m["val_clip_acc"] for m in metrics]


# --- videos as users have them ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from video_cases import make_cases

    return make_cases(tmp_path_factory.mktemp("cases"))


def test_real_world_videos_train_on_the_frames_a_player_shows(cases, tmp_path):
    """Latin-1 metadata, an edit list, a start offset, a rotation, a still first track: every one is used (none
    skipped as bad), and every item of every epoch holds the frames a player shows at its indices."""
    from video_cases import expected_turn, player_frames

    from runtime.frames import resize_frames

    names = {"latin1.mp4": 0, "edit.mp4": 0, "offset.mkv": 0, "rot90.mp4": 1, "still_first.mkv": 1}
    for split in ("train", "test"):
        for name, label in names.items():
            (tmp_path / split / NAMES[label]).mkdir(parents=True, exist_ok=True)
            shutil.copy(cases[name], tmp_path / split / NAMES[label] / name)
    ds = build_dataset(spec(tmp_path, sampling="window"), "train")
    assert len(ds) == len(names)
    shown = {}
    for path, _, n in ds.samples:
        turn = expected_turn(90) if path.name == "rot90.mp4" else (lambda a: a)
        shown[path] = player_frames(path, 1 if path.name == "still_first.mkv" else None, turn)
        assert n == len(shown[path]), path.name  # edit.mp4: 38 shown, not its 40 packets
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i, (path, _, n) in enumerate(ds.samples):
            clip, _ = ds.raw_clip(i)
            np.testing.assert_array_equal(clip, resize_frames(shown[path][ds.indices(i, n)], (16, 16)))


def test_a_seek_found_unreliable_is_not_paid_for_by_every_item(cases, monkeypatch):
    """A container whose seeks land late (simulated: each goes one keyframe too far): the first item learns it, the
    data set's index keeps it, and the next items decode from the start at once (no seek, no frame twice)."""
    from runtime.video import VideoReader
    from train.video_clips import VideoClips

    path = cases["offset.mkv"]  # keyframes at 0, 12, 24, 35
    ds = VideoClips([(path, 0)], ["a"], frames=4, frame_size=(16, 16), sampling="window")  # frames 18..21
    real_restart, real_decode = VideoReader._restart, VideoReader._decode_next
    seeks, decoded = [], []

    def landing_late(self, ts, keyframe=0):
        if ts is None:
            return real_restart(self, None)
        seeks.append(keyframe)
        return real_restart(self, int(self.index.pts[keyframe + 12]), keyframe + 12)

    def counting_decode(self):
        item = real_decode(self)
        decoded.append(None if item is None else item[0])
        return item

    monkeypatch.setattr(VideoReader, "_restart", landing_late)
    monkeypatch.setattr(VideoReader, "_decode_next", counting_decode)
    first, _ = ds.raw_clip(0)
    assert seeks == [12] and decoded == [24, *range(0, 22)]  # the late landing, then from the start
    seeks.clear()
    decoded.clear()
    again, _ = ds.raw_clip(0)
    assert seeks == [] and decoded == list(range(0, 22))
    np.testing.assert_array_equal(first, again)


def test_broken_links_and_link_loops_fail_naming_them_or_are_skipped_with_a_line(small_folder, tmp_path, caplog):
    from train.video_clips import VideoClips, scan_video_folder

    root = tmp_path / "links"
    shutil.copytree(small_folder, root)
    loop, gone = root / NAMES[1] / "loop.mp4", root / NAMES[2] / "gone.avi"
    loop.symlink_to(loop.name)
    gone.symlink_to(tmp_path / "nowhere.avi")
    names, samples = scan_video_folder(root)
    assert {loop, gone} <= {p for p, _ in samples}  # listed, not left out unseen
    for bad, message in ((loop, "is a loop of symbolic links (it never reaches a file)"),
                         (gone, f"is a broken symbolic link (to {tmp_path / 'nowhere.avi'})")):
        with pytest.raises(DataError, match=re.escape(f"bad video {bad}: {bad} {message} (--on-bad-video skip")):
            VideoClips([s for s in samples if s[0] in (bad, samples[0][0])], names)
    with caplog.at_level(logging.WARNING, logger="train.video_clips"):
        ds = VideoClips(samples, names, on_bad_video="skip")
    assert f"skipping bad video {loop}: {loop} is a loop of symbolic links" in caplog.text
    assert f"skipping bad video {gone}: {gone} is a broken symbolic link" in caplog.text
    assert len(ds) == 12


def test_a_frame_stride_without_stride_sampling_is_refused(small_folder, capsys):
    with pytest.raises(DataError, match="a frame stride of 3 is used only by the stride sampling, not by 'uniform'"):
        build_dataset(spec(small_folder, frame_stride=3), "train")
    assert len(build_dataset(spec(small_folder, sampling="stride", frame_stride=3), "train")) == 8
    from train.__main__ import main

    for args, message in [
        (["--data", "video", "--data-dir", str(small_folder), "--frame-stride", "3"],
         "a frame stride of 3 is used only by the stride sampling, not by 'uniform' (--frame-stride needs "
         "--sampling stride)"),
        (["--data", "synthetic", "--sampling", "window"],
         "--sampling and --frame-stride pick the frames of video files; --data synthetic does not use them"),
    ]:
        assert main([*args, "--epochs", "1", "--device", "cpu", "--out", str(small_folder / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (small_folder / "never").exists()
