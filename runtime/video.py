"""Reading video files: the one video reader training, evaluation, ``python -m runtime classify`` and streaming use.

Decoding is PyAV's (``pip install ".[video]"``; its wheels bundle FFmpeg and its codecs), imported only when a video
is opened. Frames come out as uint8 RGB ``(T, H, W, 3)`` and, with ``frame_size``, are resized frame by frame with
:func:`runtime.frames.resize_frame`, the frame-folder path's resize (Pillow bilinear, antialiased when shrinking): a
model sees a decoded video exactly as it would see the same frames saved as images.

Frame indices. Opening a video demuxes it once (packets only, no decoding) to list every frame's timestamp. Frame
``i`` is the i-th frame in presentation order; every sampling picks frame indices, never times, so a variable frame
rate video is sampled by frame count (its frames are not evenly spaced in time; ``VideoInfo.variable_frame_rate``
says so).

Samplings (:func:`sample_indices`, ``N`` frames in the video, ``T`` frames per clip):

``uniform`` (the default for clips)
    The video is cut into T equal segments ``[floor(i N / T), floor((i + 1) N / T))``; a clip takes the middle frame
    of each, ``floor((2 i + 1) N / (2 T))``, or with an ``rng`` (training) a random frame of each. N = T gives frames
    0..T-1.
``stride``
    T frames ``start, start + k, ..., start + (T - 1) k``: centred in the video, or at a random start with an ``rng``.
    For a stream of every k-th frame, :meth:`VideoReader.iter_frames` yields frames ``0, k, 2k, ...``.
``window``
    T consecutive frames (stride 1): centred, or at a random start with an ``rng``. :meth:`VideoReader.iter_windows`
    yields every window ``[s, s + T)`` for ``s = 0, step, 2 step, ...`` with ``s + T <= N``.

A video with fewer frames than a clip needs gives all the frames it has (``VideoClip.length < T``, a logged
warning): batches pad it with zeros and pass ``lengths``, which is exact (padding never reaches the outputs).

Seeking. Reading a few frames seeks to the keyframe at or before each target and decodes forward from there (never
the whole file), and keeps decoding forward instead when no keyframe lies between the last decoded frame and the
target. This holds when every packet carries a unique timestamp (MP4/MOV, MKV/WebM, AVI as written by FFmpeg), and
each seek is verified: one that lands after its target makes the reader decode from the start instead (logged).
Files without usable timestamps are always decoded sequentially from the start. ``VideoInfo.seekable`` says which.

Bad input raises :class:`runtime.errors.RuntimeInputError` naming the file: a suffix that is not a video container
(``VIDEO_SUFFIXES``), a file FFmpeg cannot open (unknown container, damaged header, a truncated MP4), no video
stream, a video stream without frames, fewer frames than the header declares (truncated or damaged), or a frame that
cannot be decoded. Decoding is bounded by the frame count found when the file was opened: it never loops or waits.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .errors import RuntimeInputError
from .frames import check_frame_size, files_with_suffixes, resize_frame
from .inputs import check_count

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
SAMPLINGS = ("uniform", "stride", "window")


@dataclass(frozen=True)
class VideoInfo:
    """What opening a video found out (demuxing only: no frame was decoded for it).

    Attributes:
        path (str): the file.
        container (str): FFmpeg's demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", ...).
        codec (str): the video codec ("h264", "mpeg4", "vp9", ...).
        width (int): coded frame width in pixels.
        height (int): coded frame height in pixels.
        num_frames (int): frames in the video stream (its packets), N.
        fps (float): average frame rate, frames / duration (0.0 when unknown).
        duration_s (float): presentation time from the first frame to the end of the last.
        variable_frame_rate (bool): the frame intervals differ (sampling still goes by frame index).
        seekable (bool): reads seek to the keyframe before a target (else they decode from the start).
        keyframes (int): keyframe packets.
    """

    path: str
    container: str
    codec: str
    width: int
    height: int
    num_frames: int
    fps: float
    duration_s: float
    variable_frame_rate: bool
    seekable: bool
    keyframes: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, eq=False)
class VideoIndex:
    """What demuxing a video found: its :class:`VideoInfo` and every frame's timestamp and keyframe flag, in
    presentation order (about 17 bytes a frame). A reader makes one when it opens a video (``VideoReader.index``);
    a reader given it opens the same file without demuxing it again (training opens a video for every clip it reads).
    It belongs to the file as it was: a reader given the index of a file that has changed since (size or
    modification time) demuxes it again.

    Attributes:
        info (VideoInfo): the video.
        pts (np.ndarray | None): int64 ``(N,)`` timestamps in the stream's time base, ascending (None: not seekable).
        keyframes (np.ndarray | None): bool ``(N,)``, with ``pts``.
        times_s (np.ndarray): float64 ``(N,)`` presentation time of each frame from the first, in seconds.
        file_stamp (tuple[int, int]): the file's size in bytes and modification time in ns when it was demuxed.
    """

    info: VideoInfo
    pts: Optional[np.ndarray]
    keyframes: Optional[np.ndarray]
    times_s: np.ndarray
    file_stamp: tuple[int, int]

    def describes(self, path: Path) -> bool:
        """The index was made from ``path`` as it is now."""
        return Path(self.info.path) == path and self.file_stamp == _file_stamp(path)


def _file_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


@dataclass
class VideoClip:
    """Frames read from one video.

    Attributes:
        frames (np.ndarray): uint8 ``(length, H, W, 3)`` RGB, in index order.
        indices (np.ndarray): the frame index of each frame, ``(length,)``.
        times_s (np.ndarray): each frame's presentation time in seconds from the first frame, ``(length,)``.
        requested (int): frames the clip asked for, T.
        info (VideoInfo): the video.
    """

    frames: np.ndarray
    indices: np.ndarray
    times_s: np.ndarray
    requested: int
    info: VideoInfo

    @property
    def length(self) -> int:
        """Real frames: T, or N when the video has fewer (a short clip, padded by batching)."""
        return int(len(self.frames))

    @property
    def short(self) -> bool:
        """The video had fewer frames than the clip asked for."""
        return self.length < self.requested


def _check_count(value, what: str) -> int:
    check_count(value, what)
    return int(value)


def sample_indices(num_frames: int, frames: int, sampling: str = "uniform", *, stride: int = 1,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The frame indices one clip of ``frames`` (T) frames takes from a video of ``num_frames`` (N) frames.

    See the module docstring for each sampling. Without ``rng`` the indices are deterministic (evaluation, serving);
    with one they are a random segment (training). Fewer than T indices come back when the video is too short.

    Raises:
        RuntimeInputError: an unknown sampling, or counts that are not integers >= 1.
    """
    n, t = _check_count(num_frames, "num_frames"), _check_count(frames, "frames")
    k = _check_count(stride, "stride")
    if sampling == "uniform":
        if n < t:
            return np.arange(n)
        i = np.arange(t)
        if rng is None:
            return (2 * i + 1) * n // (2 * t)
        lo, hi = i * n // t, (i + 1) * n // t
        return lo + (rng.random(t) * (hi - lo)).astype(np.int64)
    if sampling not in SAMPLINGS:
        raise RuntimeInputError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
    if sampling == "window":
        k = 1
    span = (t - 1) * k + 1
    if n < span:
        return np.arange(0, n, k)[:t]
    start = (n - span) // 2 if rng is None else int(rng.integers(0, n - span + 1))
    return start + k * np.arange(t)


def window_starts(num_frames: int, frames: int, step: int) -> np.ndarray:
    """First frame of every window of ``frames`` frames, ``step`` apart, that fits in ``num_frames`` ([0] when the
    video is shorter than one window: one short window)."""
    n, t, s = (_check_count(v, w) for v, w in ((num_frames, "num_frames"), (frames, "frames"), (step, "step")))
    return np.arange(0, max(n - t, 0) + 1, s)


def _ffmpeg_error():
    import av

    return (av.error.FFmpegError, OSError, EOFError)


def _declared_duration(stream, container) -> Optional[float]:
    """Seconds of video the header declares, where it does (MP4/AVI stream duration, MKV's DURATION tag, or the
    container's duration when the video is its only stream)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


class VideoReader:
    """An open video file: its :class:`VideoInfo`, and frames by index, by stride or by window.

    Args:
        path (str | PathLike): a video file whose suffix is one of ``VIDEO_SUFFIXES``.
        frame_size (Sequence[int] | None): (H, W) to resize every frame to (:func:`runtime.frames.resize_frame`);
            None keeps the decoded size. Defaults to None.
        threads (int): decoder threads (0: FFmpeg picks). Defaults to 0.

    Raises:
        RuntimeInputError: see the module docstring's list of bad input.

    Use as a context manager (or call :meth:`close`). One reader is not thread-safe: open one per thread or worker.
    """

    def __init__(self, path: str | os.PathLike, frame_size: Optional[Sequence[int]] = None, *, threads: int = 0,
                 index: Optional[VideoIndex] = None):
        self.path = Path(path)
        self.frame_size = frame_size
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise RuntimeInputError(f"{self.path}: {self.path.suffix or 'no suffix'} is not a video container this "
                                    f"reader opens; valid suffixes: {', '.join(VIDEO_SUFFIXES)}")
        if not self.path.is_file():
            raise RuntimeInputError(f"{self.path} does not exist (or is not a file)")
        try:
            import av
        except ImportError as e:
            raise ImportError("reading video files needs PyAV: pip install 'cnn-bilstm-deploy[video]' (or av)") from e
        stamp = _file_stamp(self.path)  # before opening: a file changed while demuxed is demuxed again next time
        try:
            self._container = av.open(str(self.path))
        except _ffmpeg_error() as e:
            raise RuntimeInputError(f"{self.path} cannot be opened as a video (unknown container, damaged, or "
                                    f"truncated): FFmpeg says {_reason(e)}") from e
        try:
            videos = list(self._container.streams.video)
            if not videos:
                kinds = ", ".join(sorted({s.type for s in self._container.streams})) or "none"
                raise RuntimeInputError(f"{self.path} has no video stream (its streams: {kinds})")
            self._stream = videos[0]
            self._threads = int(threads)
            _set_threads(self._stream, self._threads)
            if index is not None and not index.describes(self.path):
                logger.info("%s is not the file its index was made from (or has changed since); demuxing it again",
                            self.path)
                index = None
            self.index = index if index is not None else self._demux(stamp)
        except BaseException:
            self._container.close()
            raise
        self.info = self.index.info
        self.seekable = self.info.seekable  # turned off for this reader when a seek proves unreliable
        self._pts, self._key, self._times = self.index.pts, self.index.keyframes, self.index.times_s
        self._frames = None  # the decode iterator of the current position
        self._pos = -1  # index of the last frame it produced
        self._closed = False

    def _demux(self, stamp: tuple[int, int]) -> VideoIndex:
        """Read every packet of the video stream (no decoding): the index, and the checks for damage."""
        c, s = self._container, self._stream
        pts, keys, end, corrupt = [], [], None, 0
        try:
            for p in c.demux(s):
                if p.size == 0 and p.pts is None:  # the flush packet at the end
                    continue
                pts.append(p.pts)
                keys.append(bool(p.is_keyframe))
                corrupt += bool(p.is_corrupt)
                if p.pts is not None:
                    e = p.pts + (p.duration or 0)
                    end = e if end is None else max(end, e)
        except _ffmpeg_error() as e:
            raise RuntimeInputError(f"{self.path} is damaged: demuxing stopped after {len(pts)} frames: "
                                    f"{_reason(e)}") from e
        n = len(pts)
        if n == 0:
            raise RuntimeInputError(f"{self.path} has a video stream but no frames")
        if corrupt:
            raise RuntimeInputError(f"{self.path} is damaged: {corrupt} of its {n} frames are flagged corrupt by "
                                    "the demuxer (truncated or overwritten data)")
        if s.frames and n < s.frames:
            raise RuntimeInputError(f"{self.path} is truncated or damaged: its header declares {s.frames} frames, "
                                    f"but only {n} can be read")
        seekable = None not in pts and len(set(pts)) == n
        tb = float(s.time_base) if s.time_base is not None else 0.0
        if seekable:
            order = np.argsort(np.asarray(pts, np.int64), kind="stable")
            sorted_pts, key = np.asarray(pts, np.int64)[order], np.asarray(keys, bool)[order]
            first = int(sorted_pts[0])
            times = (sorted_pts - first) * tb
            duration = (end - first) * tb if tb else 0.0
            deltas = np.diff(sorted_pts)
            vfr = bool(len(deltas) > 1 and deltas.max() - deltas.min() > max(1, 0.1 * float(np.median(deltas))))
        else:
            sorted_pts, key = None, None
            rate = float(s.average_rate or 0)
            times = np.arange(n) / rate if rate else np.zeros(n)
            duration, vfr = (n / rate if rate else 0.0), False
        declared = _declared_duration(s, c)
        if declared and duration and duration < declared - max(0.05 * declared, 2 * duration / n):
            raise RuntimeInputError(f"{self.path} is truncated or damaged: its header declares {declared:.3f} s of "
                                    f"video, but its {n} readable frames end at {duration:.3f} s")
        info = VideoInfo(
            path=str(self.path), container=c.format.name, codec=s.codec_context.name,
            width=int(s.codec_context.width), height=int(s.codec_context.height), num_frames=n,
            fps=round(n / duration, 6) if duration else float(s.average_rate or 0.0),
            duration_s=round(float(duration), 6), variable_frame_rate=vfr, seekable=seekable,
            keyframes=int(sum(keys)))
        return VideoIndex(info, sorted_pts, key, np.asarray(times, np.float64), stamp)

    @property
    def frame_size(self) -> Optional[tuple[int, int]]:
        """(H, W) the frames are resized to, or None for the decoded size. It may be set between reads: a video is
        opened (and checked) before the model that fixes the size is loaded, and is not opened twice for it."""
        return self._frame_size

    @frame_size.setter
    def frame_size(self, value: Optional[Sequence[int]]) -> None:
        self._frame_size = None if value is None else check_frame_size(value, "frame_size")

    # --- decoding -------------------------------------------------------------------------------------------------

    def _restart(self, pts: Optional[int]) -> None:
        """Decode from the keyframe at or before ``pts``, or with None from the start (the file opened again: no
        seek is trusted there)."""
        import av

        try:
            if pts is None:
                self._container.close()
                self._container = av.open(str(self.path))
                self._stream = self._container.streams.video[0]
                _set_threads(self._stream, self._threads)
            else:
                self._container.seek(int(pts), stream=self._stream, backward=True, any_frame=False)
        except _ffmpeg_error() as e:
            raise RuntimeInputError(f"{self.path}: {'reopening' if pts is None else 'seeking'} failed: "
                                    f"{_reason(e)}") from e
        self._frames = self._container.decode(self._stream)
        self._pos = -1

    def _next(self):
        """(index, av.VideoFrame) of the next decoded frame, or None at the end of the stream."""
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except _ffmpeg_error() as e:
            raise RuntimeInputError(f"{self.path} is damaged: decoding failed after frame {self._pos}: "
                                    f"{_reason(e)}") from e
        if self.seekable:
            index = self._frame_index(frame.pts)
            if index is None:
                raise RuntimeInputError(f"{self.path}: a decoded frame has timestamp {frame.pts}, which no packet "
                                        "had; the file's timestamps are inconsistent (damaged)")
        else:
            index = self._pos + 1
        self._pos = index
        return index, frame

    def _frame_index(self, pts: Optional[int]) -> Optional[int]:
        """The index of the frame with timestamp ``pts`` (None when no packet had it)."""
        if pts is None:
            return None
        i = int(np.searchsorted(self._pts, pts))
        return i if i < len(self._pts) and int(self._pts[i]) == pts else None

    def _rgb(self, frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        return rgb if self.frame_size is None else resize_frame(rgb, self.frame_size)

    def _goto(self, target: int) -> None:
        """Position the decoder so that the next frame it produces is at or before ``target``."""
        if self._closed:  # PyAV would fail with a bare AssertionError
            raise RuntimeInputError(f"{self.path}: this reader is closed; open the video again to read it")
        if self._frames is not None and self._pos < target:
            if not self.seekable:
                return  # forward only
            keys_between = self._key[self._pos + 1: target + 1]
            if not keys_between.any():
                return  # same GOP: keep decoding forward
        if not self.seekable:
            self._restart(None)
            return
        self._restart(int(self._pts[target]))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)``.

        Raises:
            RuntimeInputError: an index outside 0..N-1, or a frame that cannot be decoded (damaged file).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.info.num_frames
        if idx.size == 0:
            raise RuntimeInputError("read needs at least one frame index")
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise RuntimeInputError(f"{self.path} has frames 0..{n - 1}; asked for frame {int(bad[0])}")
        got: dict[int, np.ndarray] = {}
        for target in np.unique(idx):
            got[int(target)] = self._decode_to(int(target))
        return np.stack([got[int(i)] for i in idx])

    def _decode_to(self, target: int) -> np.ndarray:
        self._goto(target)
        verified = False
        for _ in range(self.info.num_frames + 1):  # bounded: a stream has N frames
            item = self._next()
            if item is None:
                break
            index, frame = item
            if not verified:
                verified = True
                if index > target:  # the seek landed after its target: unreliable here, decode from the start
                    logger.info("%s: a seek landed at frame %d, after frame %d; decoding from the start",
                                self.path, index, target)
                    self.seekable = False
                    self._restart(None)
                    return self._decode_to(target)
            if index == target:
                return self._rgb(frame)
            if index > target:
                break
        raise RuntimeInputError(f"{self.path} is damaged: frame {target} of {self.info.num_frames} could not be "
                                "decoded")

    def iter_frames(self, stride: int = 1, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, frame)`` for frames ``start, start + stride, ...``, decoded in one sequential pass (frames in
        between are decoded, not converted or resized).

        Raises:
            RuntimeInputError: a bad stride or start, or a frame that cannot be decoded (damaged file).
        """
        k = _check_count(stride, "stride")
        n = self.info.num_frames
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n:
            raise RuntimeInputError(f"start must be a frame index in 0..{n - 1}, got {start!r}")
        self._goto(int(start))
        expected, first = int(start), True
        for _ in range(2 * n + 1):  # bounded: at most one restart, then N frames
            item = self._next()
            if item is None:
                break
            index, frame = item
            if first and index > start:  # a seek that landed after its target: decode from the start instead
                first = False
                self.seekable = False
                self._restart(None)
                continue
            first = False
            if index < start:
                continue
            if index != expected and self.seekable:
                raise RuntimeInputError(f"{self.path} is damaged: frame {expected} of {n} could not be decoded")
            expected = index + 1
            if (index - start) % k == 0:
                yield index, self._rgb(frame)
        if expected != n:
            raise RuntimeInputError(f"{self.path} is damaged: decoding ended at frame {expected} of {n}")

    def iter_windows(self, frames: int, step: int) -> Iterator[VideoClip]:
        """Every window of ``frames`` consecutive frames, ``step`` frames apart (:func:`window_starts`), decoded in
        one sequential pass; a video shorter than one window gives one short window."""
        t = _check_count(frames, "frames")
        starts = window_starts(self.info.num_frames, t, step)
        buf: list = []
        first = 0  # index of buf[0]
        pending = list(starts)
        for index, rgb in self.iter_frames():
            buf.append(rgb)
            while pending and (index + 1 - pending[0] >= t or index == self.info.num_frames - 1):
                s = int(pending.pop(0))
                window = buf[s - first: s - first + t]
                yield self._clip(np.stack(window), np.arange(s, s + len(window)), t)
            keep_from = int(pending[0]) if pending else index + 1
            del buf[: max(0, keep_from - first)]
            first = max(first, keep_from)

    def _clip(self, frames: np.ndarray, indices: np.ndarray, requested: int) -> VideoClip:
        if len(frames) < requested:
            logger.warning("%s has %d frames, fewer than the %d of a clip; the clip is padded (its length is %d)",
                           self.path, self.info.num_frames, requested, len(frames))
        return VideoClip(frames, indices, np.round(self._times[indices], 6), requested, self.info)

    def read_clip(self, frames: int, sampling: str = "uniform", *, stride: int = 1,
                  rng: Optional[np.random.Generator] = None) -> VideoClip:
        """One clip of ``frames`` frames picked by :func:`sample_indices` (a short video gives a short clip)."""
        idx = sample_indices(self.info.num_frames, frames, sampling, stride=stride, rng=rng)
        return self._clip(self.read(idx), idx, int(frames))

    def close(self) -> None:
        self._frames = None
        self._closed = True
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _set_threads(stream, threads: int) -> None:
    """Frame and slice threads (FFmpeg's AUTO), ``threads`` of them (0: FFmpeg picks), set before decoding starts."""
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


@contextmanager
def opened_video(video: "str | os.PathLike | VideoReader",
                 frame_size: Optional[Sequence[int]] = None) -> Iterator[VideoReader]:
    """``video`` as an open :class:`VideoReader` resizing to ``frame_size``: a path is opened here and closed after;
    a reader already open is used as it is, with ``frame_size`` set, and left open for its owner to close."""
    if isinstance(video, VideoReader):
        video.frame_size = frame_size
        yield video
        return
    with VideoReader(video, frame_size) as reader:
        yield reader


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """The :class:`VideoInfo` of a video (demuxing only), or a :class:`RuntimeInputError` saying what is wrong."""
    with VideoReader(path) as reader:
        return reader.info


def read_video_clip(path: str | os.PathLike, frames: int, sampling: str = "uniform", *,
                    frame_size: Optional[Sequence[int]] = None, stride: int = 1,
                    rng: Optional[np.random.Generator] = None) -> VideoClip:
    """One clip of ``frames`` frames from the video at ``path`` (see :meth:`VideoReader.read_clip`)."""
    with VideoReader(path, frame_size) as reader:
        return reader.read_clip(frames, sampling, stride=stride, rng=rng)


def iter_video_frames(path: str | os.PathLike, stride: int = 1, *,
                      frame_size: Optional[Sequence[int]] = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, frame)`` for every ``stride``-th frame of the video, in one sequential pass (for streaming)."""
    with VideoReader(path, frame_size) as reader:
        yield from reader.iter_frames(stride)


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """The video files (``VIDEO_SUFFIXES``, case-insensitive, not hidden) directly in ``folder``, in natural name
    order (``2.mp4`` before ``10.mp4``)."""
    return files_with_suffixes(Path(folder), VIDEO_SUFFIXES)


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float = 25, *,
                codec: str = "libx264",
                pix_fmt: str = "yuv420p", options: Optional[dict] = None, pts: Optional[Sequence[int]] = None,
                time_base: Optional[tuple[int, int]] = None) -> Path:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` into a video file with PyAV (tests, benchmarks, demos), atomically.

    Args:
        path: the file; its suffix picks the container.
        frames (np.ndarray | Iterable[np.ndarray]): uint8 ``(T, H, W, 3)``, or an iterable of uint8 ``(H, W, 3)``
            frames of one size (long videos without holding them all).
        fps (float): frame rate. Defaults to 25.
        codec (str): FFmpeg encoder ("libx264", "mpeg4", "libvpx-vp9", ...). Defaults to "libx264".
        pix_fmt (str): encoded pixel format (odd sizes need "yuv444p" with libx264). Defaults to "yuv420p".
        options (dict | None): encoder options, e.g. ``{"crf": "18"}``. Defaults to None.
        pts (Sequence[int] | None): each frame's timestamp in ``time_base`` (a variable frame rate); None for
            ``0, 1, 2, ...`` at ``fps``. Defaults to None.
        time_base (tuple[int, int] | None): (num, den) of ``pts``. Defaults to None (1/fps).

    Returns:
        Path: ``path``.
    """
    from fractions import Fraction

    import av

    from ._io import atomic_write

    path = Path(path)

    def encode(f) -> None:
        with av.open(f, "w", format=_muxer(path)) as out:
            stream = None
            for i, rgb in enumerate(frames):
                rgb = np.asarray(rgb)
                if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3 or (
                        stream is not None and (stream.height, stream.width) != rgb.shape[:2]):
                    raise RuntimeInputError(f"write_video takes uint8 (H, W, 3) frames of one size; frame {i} is "
                                            f"{rgb.dtype} {rgb.shape}")
                if stream is None:
                    stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
                    if time_base is not None:
                        stream.time_base = Fraction(*time_base)
                        stream.codec_context.time_base = Fraction(*time_base)
                    if options:
                        stream.options = dict(options)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                if pts is not None:
                    frame.pts = int(pts[i])
                    frame.time_base = stream.codec_context.time_base
                for packet in stream.encode(frame):
                    out.mux(packet)
            if stream is None:
                raise RuntimeInputError("write_video needs at least one frame")
            for packet in stream.encode():
                out.mux(packet)

    return atomic_write(path, encode)


def _muxer(path: Path) -> str:
    """FFmpeg's muxer for a suffix (a file object has no name to guess it from)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska",
            ".webm": "webm"}.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
