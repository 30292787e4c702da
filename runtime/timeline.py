"""Classifying video files with a loaded runner: one clip per video, or a timeline of overlapping windows.

Frames come from :mod:`runtime.video` at the model's frame size (resized as training resizes them) and are
normalised by :func:`runtime.preprocess_frames`; a window shorter than T (a video shorter than one window) is padded
with its ``lengths``, which is exact. The PNG timeline needs matplotlib (the ``plots`` extra), imported only there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import softmax
from .errors import RuntimeInputError
from .preprocess import preprocess_clips

# A model records no clip length; 16 frames is the package's reference clip (benchmarks, stream window).
DEFAULT_CLIP_FRAMES = 16


def default_clip_frames(runner) -> int:
    """T for a video clip when none is given: :data:`DEFAULT_CLIP_FRAMES`, or the most the runner takes when that is
    fewer (an engine built for shorter clips)."""
    hi = runner.input_spec.time_range[1]
    return DEFAULT_CLIP_FRAMES if hi is None else min(DEFAULT_CLIP_FRAMES, int(hi))


def classify_windows(runner, video, frames: int, step: int, *, batch_size: int = 16) -> dict:
    """Class probabilities of every window of ``frames`` frames, ``step`` frames apart, of one video.

    Windows are read in one sequential decoding pass (:meth:`runtime.video.VideoReader.iter_windows`) and run in
    batches of ``batch_size``.

    Args:
        video (str | os.PathLike | runtime.video.VideoReader): a video file, or one already open (read at the
            runner's frame size, and left open).

    Returns:
        dict: ``clip`` (the path), ``video`` (:class:`runtime.video.VideoInfo` as a dict), ``frames_per_window``,
        ``step`` and ``windows``: per window ``start`` and ``end`` (frame indices, end exclusive), ``start_s`` and
        ``end_s`` (presentation times of its first and last frame), ``frames`` (real frames), ``label``, ``prob`` and
        ``probs`` (every class's probability, by name).

    Raises:
        RuntimeInputError: a bad video (see :mod:`runtime.video`), bad counts, or a runner that is not a whole model.
    """
    from .video import opened_video

    if runner.stage != "model":
        raise RuntimeInputError(f"classifying a video takes a whole model, not the {runner.stage} stage")
    meta = runner.metadata
    names = list(meta.class_names)
    out = []

    def run(batch) -> None:
        x, lengths = preprocess_clips([w.frames for w in batch], meta.mean, meta.std, runner.input_spec.frame_size)
        probs = softmax(np.asarray(runner.infer(x, lengths)["clip_logits"]))
        for w, p in zip(batch, probs, strict=True):
            best = int(p.argmax())
            out.append({"start": int(w.indices[0]), "end": int(w.indices[-1]) + 1, "start_s": float(w.times_s[0]),
                        "end_s": float(w.times_s[-1]), "frames": w.length, "label": names[best],
                        "prob": round(float(p[best]), 6),
                        "probs": {n: round(float(v), 6) for n, v in zip(names, p, strict=True)}})

    with opened_video(video, runner.input_spec.frame_size) as reader:
        batch = []
        for window in reader.iter_windows(frames, step):
            batch.append(window)
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        info, path = reader.info.to_dict(), reader.path
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


# Reference implementation; the split-stage version replaces it.
def window_probabilities(runner, video, starts, frames: int, *, batch_size: Optional[int] = None) -> np.ndarray:
    """Class probabilities of the windows ``[s, min(s + frames, N))`` of one video, one per start ``s``.

    Every frame the windows cover is decoded once; each window runs through the whole model.

    Args:
        runner (BaseRunner): a whole-model runner.
        video (str | os.PathLike | runtime.video.VideoReader): a video file, or one already open (read at the
            runner's frame size, and left open).
        starts (Sequence[int]): first frame of each window, in 0..N-1 (N: the video's frame count).
        frames (int): frames per window; a window running past the end is shorter (run with its length).
        batch_size (int | None): windows per call of the runner; None runs them all in one call. Defaults to None.

    Returns:
        np.ndarray: (len(starts), C) float64 softmax probabilities, in the order of ``starts``.

    Raises:
        RuntimeInputError: a runner that is not a whole model, bad counts or starts, or a bad video.
    """
    from .inputs import check_count
    from .video import opened_video

    if runner.stage != "model":
        raise RuntimeInputError(f"scoring video windows takes a whole model, not the {runner.stage} stage")
    check_count(frames, "frames")
    check_count(batch_size, "batch_size", allow_none=True)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.size == 0:
        raise RuntimeInputError("window_probabilities needs at least one window start")
    meta = runner.metadata
    with opened_video(video, runner.input_spec.frame_size) as reader:
        n = reader.info.num_frames
        if starts.min() < 0 or starts.max() >= n:
            raise RuntimeInputError(f"window starts must be frame indices in 0..{n - 1}, got {starts.tolist()}")
        windows = [np.arange(s, min(s + int(frames), n)) for s in starts]
        needed = np.unique(np.concatenate(windows))
        decoded = reader.read(needed)
    size = batch_size or len(windows)
    out = []
    for i in range(0, len(windows), size):
        clips = [decoded[np.searchsorted(needed, w)] for w in windows[i:i + size]]
        x, lengths = preprocess_clips(clips, meta.mean, meta.std, runner.input_spec.frame_size)
        out.append(softmax(np.asarray(runner.infer(x, lengths)["clip_logits"])))
    return np.concatenate(out)
