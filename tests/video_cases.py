"""Videos as users have them, written here with PyAV (64x48, 1.6 s): a B-frame MPEG-4 AVI, Latin-1 metadata,
timestamps that start after 0 or repeat, an MP4 edit list, cover art, a still picture as the first track,
display-matrix rotations; and the independent decode the reader is checked against."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from conftest import motion_frames

SIZE_HW = (48, 64)
FRAMES = 40  # 1.6 s at 25 fps
TB = 12800  # PyAV's MP4 time base for 25 fps: 512 ticks a frame
TICKS = 512


def source_frames() -> np.ndarray:
    return motion_frames(1, FRAMES, SIZE_HW, seed=3)


def player_frames(path, stream_index: Optional[int] = None, display: Callable = lambda a: a) -> np.ndarray:
    """Frame ``i`` = the ``i``-th frame PyAV's decoder outputs for the stream (default: the first video stream),
    passed through ``display`` (the turn the test expects from the display matrix)."""
    import av

    with av.open(str(path), metadata_errors="replace") as c:
        s = c.streams.video[0] if stream_index is None else c.streams[stream_index]
        return np.stack([display(f.to_ndarray(format="rgb24")) for f in c.decode(s)])


def ffmpeg_frames(path, shape: tuple[int, int, int]) -> np.ndarray:
    """Every frame as the ``ffmpeg`` command-line tool outputs it (autorotation on, as players show it)."""
    raw = subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint8).reshape((-1, *shape))


def clip_probs(runner, frames_list, frame_size) -> np.ndarray:
    """Class probabilities of uint8 clips (resized to ``frame_size``), batched with lengths, straight through
    ``runner.infer``."""
    from runtime.preprocess import preprocess_frames

    m = runner.metadata
    xs = [preprocess_frames(f, m.mean, m.std, frame_size)[0] for f in frames_list]
    lengths = np.array([len(x) for x in xs], np.int32)
    x = np.zeros((len(xs), lengths.max()) + xs[0].shape[1:], np.float32)
    for i, xi in enumerate(xs):
        x[i, : len(xi)] = xi
    z = np.asarray(runner.infer(x, lengths)["clip_logits"], np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def remux(src: Path, dst: Path, retime: Callable = lambda k, p: None, *, first: int = 0, title: Optional[str] = None,
          metadata_encoding: str = "utf-8") -> Path:
    """Copy ``src``'s video packets into ``dst`` from packet ``first`` on (decoding order), ``retime(k, packet)``
    changing timestamps on the way."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", metadata_encoding=metadata_encoding) as o:
        if title is not None:
            o.metadata["title"] = title
        s = i.streams.video[0]
        t = o.add_stream_from_template(s)
        for k, p in enumerate(q for q in i.demux(s) if q.dts is not None):
            if k >= first:
                retime(k, p)
                p.stream = t
                o.mux(p)
    return dst


def _encode(out, stream, frames) -> None:
    import av

    for f in frames:
        for p in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def _video_stream(out, codec: str = "libx264", pix_fmt: str = "yuv420p"):
    s = out.add_stream(codec, rate=25)
    s.width, s.height, s.pix_fmt = SIZE_HW[1], SIZE_HW[0], pix_fmt
    return s


def add_silence(out, codec: str, sample_format: str, frames: int) -> None:
    """An audio stream of ``frames`` x 1024 silent mono samples at 8 kHz, muxed into the open container ``out``."""
    import av

    a = out.add_stream(codec, rate=8000)
    a.layout = "mono"
    dtype = np.int16 if sample_format == "s16" else np.float32
    for i in range(frames):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype), format=sample_format, layout="mono")
        f.sample_rate, f.pts = 8000, i * 1024
        for p in a.encode(f):
            out.mux(p)
    for p in a.encode():
        out.mux(p)


def write_with_picture(dst: Path, picture_first: bool, audio: bool, attached: bool, frames=None) -> Path:
    """A picture (PNG cover art in MP4 with ``attached``, else a one-frame MJPEG track) beside audio and/or video."""
    import av

    with av.open(str(dst), "w") as out:
        streams = []
        for kind in (("picture", "video") if picture_first else ("video", "picture")):
            if kind == "picture":
                pic = _video_stream(out, "png" if attached else "mjpeg", "rgb24" if attached else "yuvj420p")
                if attached:
                    pic.disposition = av.stream.Disposition.attached_pic
                streams.append((pic, np.full((1, *SIZE_HW, 3), 200, np.uint8)))
            elif frames is not None:
                streams.append((_video_stream(out), frames))
        if audio:
            add_silence(out, "aac", "fltp", 12)
        for stream, fr in streams:
            _encode(out, stream, fr)
    return dst


def write_rotated(dst: Path, frames, degrees: int, mirror: bool = False) -> Path:
    """An H.264 MP4 whose display matrix turns the picture ``degrees`` counterclockwise (after a left-right mirror),
    as phones write them."""
    import av

    with av.open(str(dst), "w") as out:
        s = _video_stream(out)
        s.set_display_rotation(degrees, hflip=mirror)
        _encode(out, s, frames)
    return dst


def make_cases(folder: Path) -> dict[str, Path]:
    """name -> file of every case (see the module docstring); ``bframes.mp4`` is the H.264 source of the remuxes."""
    from runtime.video_write import write_video

    frames = source_frames()
    base = write_video(folder / "bframes.mp4", frames, 25, options={"bf": "3", "g": "12", "crf": "18"})

    def shift(ticks: int) -> Callable:
        def retime(k, p):
            p.pts, p.dts = p.pts + ticks, p.dts + ticks
        return retime

    def stretched_repeats(k, p):  # every two frames share a timestamp, spread over twice the time (a setpts remux)
        p.pts, p.dts = p.pts // (2 * TICKS) * (4 * TICKS), None

    return {
        # MPEG-4 part 2 with B-frames in AVI: its seeks go by decoding timestamp
        "bframes.avi": write_video(folder / "bframes.avi", frames, 25, codec="mpeg4",
                                   options={"bf": "2", "g": "12", "qscale": "3"}),
        "latin1.mp4": remux(base, folder / "latin1.mp4", title="caf\u00e9", metadata_encoding="latin-1"),
        "offset.mkv": remux(base, folder / "offset.mkv", shift(10 * TB)),
        "cut.mkv": remux(base, folder / "cut.mkv", first=12),  # from the second keyframe: starts at 0.48 s
        "repeats.mkv": remux(base, folder / "repeats.mkv", stretched_repeats),
        "edit.mp4": remux(base, folder / "edit.mp4", shift(-2 * TICKS)),  # an edit list hides the first two frames
        "cover.mp4": write_with_picture(folder / "cover.mp4", True, audio=True, attached=True),
        "still_first.mkv": write_with_picture(folder / "still_first.mkv", True, False, False, frames),
        **{f"rot{d}{'m' if m else ''}.mp4": write_rotated(folder / f"rot{d}{'m' if m else ''}.mp4", frames, d, m)
           for d, m in ((90, False), (-90, False), (180, False), (90, True))},
    }


def expected_turn(degrees: int) -> Callable:
    """What a player does to a picture whose display matrix turns it ``degrees`` counterclockwise (no mirror)."""
    return lambda a: np.rot90(a, (degrees // 90) % 4)

