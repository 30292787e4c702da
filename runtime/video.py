"""Reading video files: the one video reader training, evaluation, ``python -m runtime classify`` and streaming use.

Decoding is PyAV's (``pip install ".[video]"``; its wheels bundle FFmpeg and its codecs), imported only when a video
is opened. Frames come out as uint8 RGB ``(T, H, W, 3)`` as a player shows them: turned and mirrored as the video's
display matrix says (:mod:`runtime.video_display`, phone videos), then, with ``frame_size``, resized frame by frame
with :func:`runtime.frames.resize_frame`, the frame-folder path's resize (Pillow bilinear, antialiased when
shrinking): a model sees a decoded video exactly as it would see the same frames saved as images.

Frame indices. Opening a video demuxes it once (:func:`runtime.video_index.demux_video`: the video stream, every
frame's timestamp, the damage checks) and decodes its first frame (its display matrix). Frame ``i`` is the ``i``-th
frame a player shows, in presentation order; the samplings (:mod:`runtime.video_sampling`) pick frame indices.

Seeking. Reading a few frames seeks to the last keyframe at or before each target (to the keyframe's own timestamp,
never the target's: a container that seeks by decoding timestamp, as AVI does, would land on a later keyframe) and
decodes forward from there (never the whole file), and keeps decoding forward instead when no keyframe lies between
the last decoded frame and the target. Each seek is verified:
one that lands after its keyframe makes the reader decode from the start instead (logged), and the video's index
records it (``VideoIndex.info.seekable``), so later readers given that index do not try again. Files without unique
timestamps are always decoded sequentially from the start.

Bad input raises :class:`runtime.errors.RuntimeInputError` naming the file: a suffix that is not a video container
(``VIDEO_SUFFIXES``), a missing file or broken link, a file FFmpeg cannot open, no video stream (cover art is not
one), a video stream without frames, fewer frames than the header declares (truncated or damaged), or a frame that
cannot be decoded. Decoding is bounded by the frame count found when the file was opened: it never loops or waits.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .errors import RuntimeInputError
from .frames import check_frame_size, resize_frame
from .inputs import check_count
from .video_display import frame_display
from .video_index import (
    VideoIndex,
    VideoInfo,
    check_video_path,
    demux_video,
    ffmpeg_errors,
    file_stamp,
    open_container,
    reason,
)
from .video_sampling import sample_indices, window_starts

logger = logging.getLogger(__name__)


@dataclass
class VideoClip:
    """Frames read from one video.

    Attributes:
        frames (np.ndarray): uint8 ``(length, H, W, 3)`` RGB, in index order.
        indices (np.ndarray): the frame index of each frame, ``(length,)``.
        times_s (np.ndarray): each frame's presentation time in seconds from the first frame, ``(length,)``.
        requested (int): frames the clip asked for, T.
        info (VideoInfo): the video.
        stride (int): the step between the clip's frames (the ``stride`` sampling; 1 otherwise). Defaults to 1.
    """

    frames: np.ndarray
    indices: np.ndarray
    times_s: np.ndarray
    requested: int
    info: VideoInfo
    stride: int = 1

    @property
    def length(self) -> int:
        """Real frames: T, or fewer when the video is too short for the clip (padded by batching)."""
        return int(len(self.frames))

    @property
    def short(self) -> bool:
        """The clip has fewer frames than it asked for."""
        return self.length < self.requested

    @property
    def short_reason(self) -> str:
        """Why the clip is short ("" when it is not): the video has fewer frames than T, or fewer than T frames
        ``stride`` apart span."""
        if not self.short:
            return ""
        n = self.info.num_frames
        if n >= self.requested:
            return f"{self.requested} frames {self.stride} apart span {(self.requested - 1) * self.stride + 1}, " \
                   f"the video has {n}"
        return f"the video has only {n}"


class VideoReader:
    """An open video file: its :class:`VideoInfo`, and frames by index, by stride or by window.

    Args:
        path (str | PathLike): a video file whose suffix is one of ``VIDEO_SUFFIXES``.
        frame_size (Sequence[int] | None): (H, W) to resize every frame to (:func:`runtime.frames.resize_frame`);
            None keeps the displayed size. Defaults to None.
        threads (int): decoder threads (0: FFmpeg picks). Defaults to 0.
        index (VideoIndex | None): the file's index from an earlier reader (``reader.index``): no demuxing, unless
            the file changed since. Defaults to None.

    Raises:
        RuntimeInputError: see the module docstring's list of bad input.

    Use as a context manager (or call :meth:`close`). One reader is not thread-safe: open one per thread or worker.
    """

    def __init__(self, path: str | os.PathLike, frame_size: Optional[Sequence[int]] = None, *, threads: int = 0,
                 index: Optional[VideoIndex] = None):
        self.path = check_video_path(path)
        self.frame_size = frame_size
        try:
            import av  # noqa: F401
        except ImportError as e:
            raise ImportError("reading video files needs PyAV: pip install 'cnn-bilstm-deploy[video]' (or av)") from e
        self._threads = int(threads)
        self._container = self._frames = self._pending = None
        self._pos, self._start, self._closed = -1, 0, False
        stamp = file_stamp(self.path)  # before demuxing: a file changed while demuxed is demuxed again next time
        if index is not None and not index.describes(self.path):
            logger.info("%s is not the file its index was made from (or has changed since); demuxing it again",
                        self.path)
            index = None
        fresh = index is None
        self.index = self._demux(stamp) if fresh else index
        keyframes = self.index.keyframes
        self._keys = np.flatnonzero(keyframes) if keyframes is not None else np.zeros(0, np.int64)
        try:
            self._restart(None)
            if fresh:
                self._learn_display()
        except BaseException:
            self.close()
            raise

    def _demux(self, stamp: tuple[int, int]) -> VideoIndex:
        """Read every packet of the file (no decoding): the index, and the checks for damage."""
        return demux_video(self.path, stamp)

    def _learn_display(self) -> None:
        """Decode the first frame: the display matrix fixes the size frames come out at (kept for the next read)."""
        item = self._decode_next()
        if item is None:
            raise RuntimeInputError(f"{self.path} is damaged: none of its {self.info.num_frames} frames decodes")
        display = frame_display(item[1], str(self.path))
        w, h = item[1].width, item[1].height
        if display.swaps_axes:
            w, h = h, w
        self.index = self.index.learned(width=int(w), height=int(h), rotation=display.rotation,
                                        mirrored=display.mirror)
        self._hold(item)

    @property
    def info(self) -> VideoInfo:
        """The video (``self.index.info``)."""
        return self.index.info

    @property
    def seekable(self) -> bool:
        """Reads seek to the keyframe before a target (else they decode from the start)."""
        return self.info.seekable

    @property
    def frame_size(self) -> Optional[tuple[int, int]]:
        """(H, W) the frames are resized to, or None for the displayed size. It may be set between reads: a video is
        opened (and checked) before the model that fixes the size is loaded, and is not opened twice for it."""
        return self._frame_size

    @frame_size.setter
    def frame_size(self, value: Optional[Sequence[int]]) -> None:
        self._frame_size = None if value is None else check_frame_size(value, "frame_size")

    # --- decoding -------------------------------------------------------------------------------------------------

    def _restart(self, ts: Optional[int], keyframe: int = 0) -> None:
        """Decode from the keyframe with timestamp ``ts`` (frame ``keyframe``), or with None from the start (the file
        opened again: no seek is trusted there)."""
        try:
            if ts is None:
                if self._container is not None:
                    self._container.close()
                self._container = open_container(self.path)
                self._stream = self._container.streams[self.info.stream_index]
                self._stream.thread_type = "AUTO"  # frame and slice threads, set before decoding starts
                self._stream.codec_context.thread_count = self._threads
            else:
                self._container.seek(int(ts), stream=self._stream, backward=True, any_frame=False)
        except ffmpeg_errors() as e:
            raise RuntimeInputError(f"{self.path}: {'reopening' if ts is None else 'seeking'} failed: "
                                    f"{reason(e)}") from e
        self._frames = self._container.decode(self._stream)
        self._pos, self._start, self._pending = -1, (0 if ts is None else keyframe), None

    def _hold(self, item: tuple) -> None:
        """Give ``item``, a frame just decoded, back to the next :meth:`_next`."""
        self._pending, self._pos = item, item[0] - 1

    def _next(self):
        """(index, av.VideoFrame) of the next frame (one given back by :meth:`_hold` first), or None at the end."""
        if self._pending is not None:
            item, self._pending = self._pending, None
            self._pos = item[0]
            return item
        return self._decode_next()

    def _decode_next(self):
        """(index, av.VideoFrame) of the next frame the decoder outputs, or None at the end of the stream."""
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except ffmpeg_errors() as e:
            where = f"after frame {self._pos}" if self._pos >= 0 else f"at frame {self._start}"
            raise RuntimeInputError(f"{self.path} is damaged: decoding failed {where}: {reason(e)}") from e
        if self.index.pts is not None:
            index = self._frame_index(frame.pts)
            if index is None:
                raise RuntimeInputError(f"{self.path}: a decoded frame has timestamp {frame.pts}, which no frame's "
                                        "packet had; the file's timestamps are inconsistent (damaged)")
        else:
            index = self._pos + 1
        self._pos = index
        return index, frame

    def _frame_index(self, pts: Optional[int]) -> Optional[int]:
        """The index of the frame with timestamp ``pts`` (None when no packet had it)."""
        if pts is None:
            return None
        i = int(np.searchsorted(self.index.pts, pts))
        return i if i < len(self.index.pts) and int(self.index.pts[i]) == pts else None

    def _rgb(self, frame) -> np.ndarray:
        rgb = frame_display(frame, str(self.path)).apply(frame.to_ndarray(format="rgb24"))
        return rgb if self.frame_size is None else resize_frame(rgb, self.frame_size)

    def _keyframe_before(self, target: int) -> int:
        """The last keyframe at or before frame ``target`` (-1: none, or not seekable)."""
        if not self.seekable:
            return -1
        i = int(np.searchsorted(self._keys, target, side="right")) - 1
        return int(self._keys[i]) if i >= 0 else -1

    def _goto(self, target: int) -> None:
        """Position the decoder so that the next frame it produces is at or before ``target``."""
        if self._closed:  # PyAV would fail with a bare AssertionError
            raise RuntimeInputError(f"{self.path}: this reader is closed; open the video again to read it")
        key = self._keyframe_before(target)
        if self._frames is not None and self._pos < target and key <= self._pos + 1:
            return  # no keyframe to skip to: decoding forward is the shortest way
        if key < 0:
            self._restart(None)
            return
        self._restart(int(self.index.pts[key]), key)
        item = self._decode_next()
        if item is not None and item[0] <= key:
            self._hold(item)
            return
        # The container's seek landed after its keyframe: it is unreliable for this file. The index keeps that,
        # so readers given it later decode from the start at once instead of seeking and then decoding twice.
        logger.info("%s: a seek to keyframe %d landed at %s; this video is read from the start from now on",
                    self.path, key, "its end" if item is None else f"frame {item[0]}")
        self.index = self.index.learned(seekable=False)
        self._restart(None)

    def _decode_to(self, target: int) -> np.ndarray:
        """Frame ``target``, displayed and resized (the frames decoded on the way are not converted)."""
        self._goto(target)
        for _ in range(self.info.num_frames + 1):  # bounded: a stream has N frames
            item = self._next()
            if item is None or item[0] > target:
                break
            if item[0] == target:
                return self._rgb(item[1])
        raise RuntimeInputError(f"{self.path} is damaged: frame {target} of {self.info.num_frames} could not be "
                                "decoded")

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
        got = {int(t): self._decode_to(int(t)) for t in np.unique(idx)}  # ascending: one forward pass per GOP
        return np.stack([got[int(i)] for i in idx])

    def iter_frames(self, stride: int = 1, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, frame)`` for frames ``start, start + stride, ...``, decoded forward (frames in between are
        decoded but not converted or resized; a keyframe between two of them is sought to instead).

        Raises:
            RuntimeInputError: a bad stride or start, or a frame that cannot be decoded (damaged file).
        """
        check_count(stride, "stride")
        n = self.info.num_frames
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n:
            raise RuntimeInputError(f"start must be a frame index in 0..{n - 1}, got {start!r}")
        for index in range(int(start), n, int(stride)):
            yield index, self._decode_to(index)

    def iter_windows(self, frames: int, step: int) -> Iterator[VideoClip]:
        """Every window of ``frames`` consecutive frames, ``step`` frames apart (:func:`window_starts`), read forward
        in one pass; only the frames of some window are converted and resized, and a keyframe before the next window
        is sought to when it skips frames. A video shorter than one window gives one short window."""
        check_count(frames, "frames")
        t, n = int(frames), self.info.num_frames
        held: dict[int, np.ndarray] = {}  # frames of the current window that the next one shares
        for s in window_starts(n, t, step).tolist():
            indices = range(s, min(s + t, n))
            window = np.stack([held[i] if i in held else self._decode_to(i) for i in indices])
            held = {i: f for i, f in zip(indices, window, strict=True) if i >= s + step}
            yield self._clip(window, np.arange(s, s + len(window)), t)

    def _clip(self, frames: np.ndarray, indices: np.ndarray, requested: int, stride: int = 1) -> VideoClip:
        clip = VideoClip(frames, indices, np.round(self.index.times_s[indices], 6), requested, self.info, stride)
        if clip.short:
            logger.warning("%s: a clip of %d frames has %d (%s); it is padded", self.path, requested, clip.length,
                           clip.short_reason)
        return clip

    def read_clip(self, frames: int, sampling: str = "uniform", *, stride: int = 1,
                  rng: Optional[np.random.Generator] = None) -> VideoClip:
        """One clip of ``frames`` frames picked by :func:`runtime.video_sampling.sample_indices` (a video too short
        for it gives a short clip)."""
        idx = sample_indices(self.info.num_frames, frames, sampling, stride=stride, rng=rng)
        return self._clip(self.read(idx), idx, int(frames), int(stride))

    def close(self) -> None:
        self._frames = self._pending = None
        self._closed = True
        if self._container is not None:
            self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    """The :class:`VideoInfo` of a video (demuxing, and its first frame), or a :class:`RuntimeInputError` saying
    what is wrong."""
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
    """``(index, frame)`` for every ``stride``-th frame of the video, read forward (for streaming)."""
    with VideoReader(path, frame_size) as reader:
        yield from reader.iter_frames(stride)
