"""Classifying a video's windows with a loaded runner: a timeline of overlapping windows, or any set of windows.

Each decoded frame goes through the CNN once, in batches, and the BiLSTM runs once per window over the kept features
(the *split* path): a frame that lies in T/STEP windows of a ``--windows STEP`` timeline costs one CNN pass, not
T/STEP. Only the features a later window still needs are kept (at most T - 1 frames' plus one batch of frames), so
memory does not grow with the video's length. The stages come from :func:`runtime.stages.open_stages` (the export's
``cnn.onnx`` + ``bilstm.onnx``, the checkpoint's CNN and BiLSTM, an engine folder's cnn and bilstm engines); where a
runner has none (a lone ``model.onnx``, a served model), the *whole* path runs the model once per window over the
window's frames, with one log line saying why. Both paths share the decoding, the windows and the batching, and
give the same probabilities (the CNN sees each frame alone either way; fp32: max |difference| about 1e-6).

Frames come from :mod:`runtime.video` at the model's frame size (resized as training resizes them) and are
normalised by :func:`runtime.preprocess_frames`; a window shorter than T (one that reaches the video's end, or a
video shorter than one window) is padded with its ``lengths``, which is exact. The PNG timeline needs matplotlib
(the ``plots`` extra), imported only there.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .base import BaseRunner, softmax
from .batches import infer_batches
from .errors import RuntimeInputError
from .inputs import check_count
from .preprocess import preprocess_frames
from .stages import WindowModel

logger = logging.getLogger(__name__)

# A model records no clip length; 16 frames is the package's reference clip (benchmarks, stream window).
DEFAULT_CLIP_FRAMES = 16
# Windows per model or BiLSTM call (cut further to what the runner accepts).
DEFAULT_WINDOW_BATCH = 16
# Frames per CNN call on the split path: enough to amortise a call, few enough to keep memory small at any frame size.
FRAME_BATCH = 64


def default_clip_frames(runner) -> int:
    """T for a video clip when none is given: :data:`DEFAULT_CLIP_FRAMES`, or the most the runner takes when that is
    fewer (an engine built for shorter clips)."""
    hi = runner.input_spec.time_range[1]
    return DEFAULT_CLIP_FRAMES if hi is None else min(DEFAULT_CLIP_FRAMES, int(hi))


# The split stages (or the reason there are none) of each whole-model runner, opened on its first video and kept
# while it lives: evaluation classifies many videos with one runner. The entries hold no reference to the runner.
_STAGES: "weakref.WeakKeyDictionary[BaseRunner, Any]" = weakref.WeakKeyDictionary()
_STAGES_LOCK = threading.Lock()


def _window_model(runner: Any) -> WindowModel:
    if isinstance(runner, WindowModel):
        return runner
    if not isinstance(runner, BaseRunner) or runner.stage != "model":
        return WindowModel.for_runner(runner)  # a pair, or refused with the reason
    with _STAGES_LOCK:
        if runner not in _STAGES:
            model = WindowModel.for_runner(runner)
            _STAGES[runner] = (model.frame_runner, model.window_runner) if model.split else model.reason
        entry = _STAGES[runner]
    if isinstance(entry, tuple):
        return WindowModel(entry[1], entry[0], whole=runner)
    return WindowModel(runner, reason=entry)


class _Ring:
    """Per-frame items (CNN features on the split path, normalised frames on the whole path) of the consecutive
    frames ``[first, first + count)``: what the windows still to come need. Fixed capacity: items move to the front
    when the end is reached (each item at most once per ``capacity - count`` appended)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf: Optional[np.ndarray] = None
        self.first = self.head = self.count = 0

    @property
    def end(self) -> int:
        return self.first + self.count

    def append(self, first: int, items: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.empty((self.capacity,) + items.shape[1:], items.dtype)
        if self.count == 0:
            self.first, self.head = first, 0
        elif first != self.end:
            raise AssertionError(f"frames {first}.. appended after frames ..{self.end - 1}")
        if self.head + self.count + len(items) > self.capacity:
            self.buf[:self.count] = self.buf[self.head:self.head + self.count]
            self.head = 0
        self.buf[self.head + self.count:self.head + self.count + len(items)] = items
        self.count += len(items)

    def drop_before(self, index: int) -> None:
        drop = min(max(index - self.first, 0), self.count)
        self.first, self.head, self.count = self.first + drop, self.head + drop, self.count - drop

    def items(self, start: int, end: int) -> np.ndarray:
        return self.buf[self.head + start - self.first:self.head + end - self.first]


class _Windows:
    """Windows collected into one zero-padded batch (B, longest window, ...) with their lengths, run together."""

    def __init__(self, model: WindowModel, out: np.ndarray, size: int, longest: int) -> None:
        self.model, self.out, self.size, self.longest = model, out, size, longest
        self.x: Optional[np.ndarray] = None
        self.rows: list = []  # output row of each window in the batch
        self.lengths: list = []

    def add(self, row: int, items: np.ndarray) -> None:
        if self.x is None:
            self.x = np.empty((self.size, self.longest) + items.shape[1:], items.dtype)
        k, n = len(self.rows), len(items)
        self.x[k, :n] = items  # a copy: the ring reuses its memory
        self.x[k, n:] = 0
        self.rows.append(row)
        self.lengths.append(n)
        if len(self.rows) == self.size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        lengths = np.array(self.lengths, np.int32)
        x = self.x[:len(self.rows), :int(lengths.max())]
        # Finite by construction: normalised uint8 frames, or the CNN's features of them.
        logits = infer_batches(self.model.window_runner, x, lengths, check_finite=False)["clip_logits"]
        self.out[self.rows] = softmax(np.asarray(logits))
        self.rows, self.lengths = [], []


def _check_starts(starts: Any, num_frames: int) -> np.ndarray:
    s = np.asarray(starts)
    if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
        raise RuntimeInputError(f"starts must be a sequence of frame indices (integers), got {s.dtype} {s.shape}")
    bad = s[(s < 0) | (s >= num_frames)]
    if bad.size:
        raise RuntimeInputError(f"window starts must be frame indices in 0..{num_frames - 1}, got {int(bad[0])}")
    return s.astype(np.int64)


def _share_no_frame(starts: np.ndarray, ends: np.ndarray) -> bool:
    order = np.argsort(starts, kind="stable")
    return bool(np.all(starts[order][1:] >= ends[order][:-1]))


def _runs(starts: np.ndarray, ends: np.ndarray) -> list:
    """The frames the windows cover, as merged runs (a, b) in order (windows sorted by start); numpy throughout, so
    bookkeeping stays a few bytes per window."""
    reach = np.maximum.accumulate(ends)  # the furthest frame the windows so far cover
    begins = np.flatnonzero(np.r_[True, starts[1:] > reach[:-1]])
    return list(zip(starts[begins].tolist(), reach[np.r_[begins[1:] - 1, len(starts) - 1]].tolist(), strict=True))


def _decoded(reader, a: int, b: int, batch: int) -> Iterator[tuple]:
    """(first index, uint8 frames) of frames ``a..b-1`` in batches of up to ``batch``, decoded in one pass from
    ``a`` (decoding goes on from where the reader is when no keyframe lies between; frames before ``a`` are decoded,
    not converted)."""
    frames = reader.iter_frames(1, a)
    try:
        chunk, first = [], a
        for index, rgb in frames:
            chunk.append(rgb)
            if len(chunk) == batch or index == b - 1:
                yield first, np.stack(chunk)
                chunk, first = [], index + 1
            if index == b - 1:
                return
    finally:
        frames.close()


def _frame_items(model: WindowModel, frames: np.ndarray) -> np.ndarray:
    """Normalised frames (k, 3, H, W) -> what the ring keeps per frame: CNN features (k, F), or the frames."""
    if not model.split:
        return frames
    # Frames along the batch axis (T = 1): cut to the cnn runner's batch range like any batch.
    return np.asarray(infer_batches(model.frame_runner, frames[:, None], check_finite=False)["features"])[:, 0]


def _probabilities(model: WindowModel, reader, starts: Any, frames: int, batch_size: Optional[int]) -> np.ndarray:
    n = reader.info.num_frames
    check_count(frames, "frames")
    check_count(batch_size, "batch_size", allow_none=True)
    starts = _check_starts(starts, n)
    out = np.zeros((len(starts), model.metadata.num_classes), np.float64)
    if not len(starts):
        return out
    ends = np.minimum(starts + int(frames), n)
    longest = int((ends - starts).max())
    if model.split and model.whole is not None and _share_no_frame(starts, ends):
        # Each frame's CNN runs once on either path here; the whole model saves the second call per window.
        model = WindowModel(model.whole, reason="the windows share no frame")
    model.check_window(longest)
    if n < frames:
        logger.warning("%s has %d frames, fewer than the %d of a window; its window is padded (its length is %d)",
                       reader.path, n, frames, n)
    order = np.argsort(starts, kind="stable")
    next_window = 0  # windows are emitted in the order of their starts (so of their ends)
    meta = model.metadata
    ring = _Ring(longest - 1 + FRAME_BATCH)
    windows = _Windows(model, out, batch_size or DEFAULT_WINDOW_BATCH, longest)
    for a, b in _runs(starts[order], ends[order]):
        for first, rgb in _decoded(reader, a, b, FRAME_BATCH):
            ring.append(first, _frame_items(model, preprocess_frames(rgb, meta.mean, meta.std, model.frame_size)[0]))
            while next_window < len(order) and ends[order[next_window]] <= ring.end:
                i = int(order[next_window])
                windows.add(i, ring.items(int(starts[i]), int(ends[i])))
                next_window += 1
            ring.drop_before(int(starts[order[next_window]]) if next_window < len(order) else ring.end)
    windows.flush()
    return out


def window_probabilities(runner, video, starts, frames, *, batch_size=None) -> np.ndarray:
    """Class probabilities of windows of one video: for each start ``s``, the frames ``[s, min(s + frames, N))``.

    Each decoded frame's CNN runs once where the runner offers split stages (see the module docstring), however
    the windows overlap; the frames no window covers are decoded but not converted. The result equals the whole
    model run on each window's frames.

    Args:
        runner: a runner of the whole model (its split stages are found and opened on its first video, and kept
            while the runner lives), a ``(cnn_runner, bilstm_runner)`` pair, or a :class:`WindowModel`.
        video (str | os.PathLike | runtime.video.VideoReader): a video file, or one already open (read at the
            model's frame size, and left open).
        starts (Sequence[int]): first frame of each window, in ``0..N-1``; any order, overlapping or not.
        frames (int): frames per window, T (a window reaching the video's end has fewer, padded exactly).
        batch_size (int | None): windows per model or BiLSTM call, cut further to what the runner accepts; None
            means :data:`DEFAULT_WINDOW_BATCH`. Defaults to None.

    Returns:
        np.ndarray: float64 (len(starts), C), row i the probabilities of the window at ``starts[i]``.

    Raises:
        RuntimeInputError: a bad video (see :mod:`runtime.video`), a start outside the video, bad counts, windows
            longer than the runner takes, or a runner that is not a whole model.
    """
    from .video import opened_video

    model = _window_model(runner)
    with opened_video(video, model.frame_size) as reader:
        return _probabilities(model, reader, starts, frames, batch_size)


def classify_windows(runner, video, frames: int, step: int, *, batch_size: Optional[int] = None) -> dict:
    """Class probabilities of every window of ``frames`` frames, ``step`` frames apart, of one video: windows
    ``[s, s + frames)`` for ``s = 0, step, 2 step, ...`` with ``s + frames <= N`` (:func:`runtime.video_sampling.window_starts`;
    one short window when the video is shorter than one window), by :func:`window_probabilities`.

    Args:
        runner: as for :func:`window_probabilities`.
        video (str | os.PathLike | runtime.video.VideoReader): a video file, or one already open (read at the
            model's frame size, and left open).
        frames (int): frames per window, T.
        step (int): frames between window starts, >= 1.
        batch_size (int | None): as for :func:`window_probabilities`. Defaults to None.

    Returns:
        dict: ``clip`` (the path), ``video`` (:class:`runtime.video_index.VideoInfo` as a dict), ``frames_per_window``,
        ``step`` and ``windows``: per window ``start`` and ``end`` (frame indices, end exclusive), ``start_s`` and
        ``end_s`` (presentation times of its first and last frame), ``frames`` (real frames), ``label``, ``prob`` and
        ``probs`` (every class's probability, by name).

    Raises:
        RuntimeInputError: a bad video (see :mod:`runtime.video`), bad counts, or a runner that is not a whole model.
    """
    from .video import opened_video
    from .video_sampling import window_starts

    check_count(frames, "frames")
    check_count(step, "step")
    model = _window_model(runner)
    names = list(model.metadata.class_names)
    with opened_video(video, model.frame_size) as reader:
        n = reader.info.num_frames
        starts = window_starts(n, frames, step)
        probs = _probabilities(model, reader, starts, frames, batch_size)
        times = reader.index.times_s
        info, path = reader.info.to_dict(), reader.path
    out = []
    for s, p in zip(starts.tolist(), probs, strict=True):
        e = min(s + frames, n)
        best = int(p.argmax())
        out.append({"start": s, "end": e, "start_s": round(float(times[s]), 6),
                    "end_s": round(float(times[e - 1]), 6), "frames": e - s, "label": names[best],
                    "prob": round(float(p[best]), 6), "probs": {c: round(float(v), 6) for c, v in zip(names, p,
                                                                                                    strict=True)}})
    return {"clip": str(path), "video": info, "frames_per_window": int(frames), "step": int(step), "windows": out}


def plot_timelines(timelines: Sequence[dict], path: str | os.PathLike, title: Optional[str] = None) -> Path:
    """A PNG of class probability over time, one panel per video (the :func:`classify_windows` results), written
    atomically. Each window is drawn at the time of its middle frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_write

    fig, axes = plt.subplots(len(timelines), 1, figsize=(9, 2.6 * len(timelines)), squeeze=False)
    for ax, tl in zip(axes[:, 0], timelines, strict=True):
        windows = tl["windows"]
        t = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
        for name in windows[0]["probs"]:
            ax.plot(t, [w["probs"][name] for w in windows], marker=".", label=name)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("probability")
        ax.set_title(f"{Path(tl['clip']).name}: windows of {tl['frames_per_window']} frames, step {tl['step']}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time of the window's middle (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
