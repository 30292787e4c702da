"""What every stream shares, in process (:class:`runtime.streaming.StreamingClassifier`) or served
(:class:`runtime.triton.remote_stream.RemoteStream`): the result of one push (:class:`StreamResult`), the check of one
frame, :meth:`BaseStream.feed` over a video or any iterable of frames, and the closed state.

:func:`runtime.open_stream` makes either kind; both push, feed, reset and close alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .base import softmax
from .errors import RuntimeInputError
from .inputs import _non_finite_steps, check_count, is_torch
from .preprocess import preprocess_frames


@dataclass
class StreamResult:
    """The prediction after one push.

    Attributes:
        frame_logits (np.ndarray): (C,) scores of the newest frame (BiLSTM over the window, last step).
        clip_logits (np.ndarray): (C,) scores of the window as a clip.
        frame_label (str): best class of the newest frame.
        frame_prob (float): its softmax probability.
        clip_label (str): best class of the window.
        clip_prob (float): its softmax probability.
        frames_seen (int): frames pushed since the start or the last ``reset``.
        window_frames (int): frames the window held for this result, ``min(frames_seen, window)``.
    """

    frame_logits: np.ndarray
    clip_logits: np.ndarray
    frame_label: str
    frame_prob: float
    clip_label: str
    clip_prob: float
    frames_seen: int
    window_frames: int

    @classmethod
    def from_logits(cls, frame_logits, clip_logits, class_names: Sequence[str], frames_seen: int,
                    window_frames: int) -> "StreamResult":
        """The result of one frame's (C,) and the window's (C,) logits: float32, with each one's best class."""
        frame_logits = np.asarray(frame_logits, dtype=np.float32)
        clip_logits = np.asarray(clip_logits, dtype=np.float32)
        fi, fp = _softmax_top1(frame_logits)
        ci, cp = _softmax_top1(clip_logits)
        return cls(frame_logits, clip_logits, class_names[fi], fp, class_names[ci], cp, frames_seen, window_frames)


def _softmax_top1(logits: np.ndarray) -> tuple:
    p = softmax(logits)
    i = int(p.argmax())
    return i, float(p[i])


def raw_frame_input(frame, frame_size: tuple, mean: Sequence[float], std: Sequence[float], resize: bool):
    """One raw uint8 (H, W, 3) frame -> normalised float32 (1, 1, 3, H, W), checked as a stream takes it: RGB of the
    model's frame size, or any size with ``resize``."""
    shape = tuple(frame.shape)
    h, w = frame_size
    if len(shape) != 3 or shape[-1] != 3:
        raise RuntimeInputError(f"a raw frame must be uint8 ({h}, {w}, 3) (H, W, RGB), got shape {shape}")
    if shape[:2] != (h, w) and not resize:
        raise RuntimeInputError(f"raw frames are {shape[0]}x{shape[1]} (H x W) but the model takes {h}x{w}; "
                                "resize them in your decoder or open the stream with resize=True")
    return preprocess_frames(frame, mean, std, frame_size, resize=resize)


class BaseStream:
    """One stream: frames in, one :class:`StreamResult` per frame out. Subclasses set ``frame_size``, ``metadata``,
    ``resize``, ``check_finite`` and ``_count``, implement :meth:`push` (refusing frames once closed:
    :meth:`_check_open`), :meth:`reset` and :meth:`_close`.

    After :meth:`close`, ``push`` and ``feed`` raise :class:`runtime.RuntimeInputError` (a closed stream never starts
    over by itself: open a new one); ``close`` again does nothing.
    """

    frame_size: tuple
    _count = 0
    _closed = False

    @property
    def frames_seen(self) -> int:
        """Frames pushed since the start or the last ``reset``."""
        return self._count

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def push(self, frame: Any) -> StreamResult:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeInputError("this stream is closed: push and feed are refused after close(); open a new "
                                    "stream with runtime.open_stream(...)")

    def frame_input(self, frame: Any):
        """Check one frame as ``push`` does and return its (1, 1, 3, H, W) float32 (numpy or torch, as given).

        Raises:
            RuntimeInputError: a frame of the wrong kind, shape, size or dtype, or one holding NaN/Inf (unless the
                stream was opened with ``check_finite=False``).
        """
        h, w = self.frame_size
        dtype = str(getattr(frame, "dtype", "")).replace("torch.", "")
        if dtype == "uint8":  # normalised here from uint8: finite by construction
            return raw_frame_input(frame, self.frame_size, self.metadata.mean, self.metadata.std, self.resize)
        if not (is_torch(frame) or isinstance(frame, np.ndarray)):
            raise RuntimeInputError(f"a frame must be a numpy array or torch tensor, got {type(frame).__name__}")
        if tuple(frame.shape) != (3, h, w) or dtype != "float32":
            raise RuntimeInputError(f"a frame must be normalised float32 (3, {h}, {w}) or raw uint8 ({h}, {w}, 3), "
                                    f"got shape {tuple(frame.shape)} dtype {dtype}")
        x = frame[None, None]
        if self.check_finite and _non_finite_steps(x, None, is_torch(x)) is not None:
            raise RuntimeInputError(f"the pushed frame (frame {self._count + 1} of the stream) holds NaN or Inf; "
                                    "frames must be finite. Nothing was added to the window; check_finite=False skips "
                                    "this check for callers that guarantee finite frames")
        return x

    def feed(self, source: Any, stride: int = 1) -> Iterator[tuple[int, StreamResult]]:
        """Push every ``stride``-th frame of a video file or of any iterable of frames, yielding as it goes.

        Args:
            source: a video file path (``str`` or ``os.PathLike``; decoded by :mod:`runtime.video` in one pass, its
                frames resized to the model's frame size as training resizes them) or an open
                :class:`runtime.video.VideoReader` (the same, left open), or an iterable of frames that ``push``
                takes (uint8 (H, W, 3) or normalised float32 (3, H, W)).
            stride (int): push frames ``0, stride, 2 stride, ...``; the others are skipped (for a video, decoded but
                never converted or resized). The window then spans ``window x stride`` source frames. Defaults to 1.

        Returns:
            Iterator[tuple[int, StreamResult]]: the source frame's index and the result after pushing it.

        Raises:
            RuntimeInputError: a bad stride or a closed stream (here); while iterating, a bad video (see
                :mod:`runtime.video`) or a frame ``push`` refuses.
        """
        check_count(stride, "stride")
        self._check_open()
        return self._feed(source, stride)

    def _feed(self, source: Any, stride: int) -> Iterator[tuple[int, StreamResult]]:
        from .video import VideoReader, opened_video

        if isinstance(source, (str, os.PathLike, VideoReader)):
            with opened_video(source, self.frame_size) as reader:
                for index, frame in reader.iter_frames(stride):
                    yield index, self.push(frame)
            return
        for index, frame in enumerate(source):
            if index % stride == 0:
                yield index, self.push(frame)

    def close(self) -> None:
        """Release what the stream holds; later ``push`` and ``feed`` are refused. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
