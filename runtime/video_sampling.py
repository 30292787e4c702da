"""Which frames of a video a clip takes: frame indices only (numpy, no decoding), shared by training and serving.

Every sampling picks frame indices, never times, so a variable frame rate video is sampled by frame count. ``N``
frames in the video, ``T`` frames per clip:

``uniform`` (the default for clips)
    The video is cut into T equal segments ``[floor(i N / T), floor((i + 1) N / T))``; a clip takes the middle frame
    of each, ``floor((2 i + 1) N / (2 T))``, or with an ``rng`` (training) a random frame of each. N = T gives frames
    0..T-1.
``stride``
    T frames ``start, start + k, ..., start + (T - 1) k``: centred in the video, or at a random start with an ``rng``.
    A video shorter than the span ``(T - 1) k + 1`` gives frames ``0, k, 2k, ...`` (fewer than T).
``window``
    T consecutive frames (stride 1): centred, or at a random start with an ``rng``.

A frame stride other than 1 belongs to the ``stride`` sampling only and is refused with any other
(:func:`check_sampling`): it is never silently ignored.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import RuntimeInputError
from .inputs import check_count

SAMPLINGS = ("uniform", "stride", "window")


def _count(value, what: str) -> int:
    check_count(value, what)
    return int(value)


def check_sampling(sampling: str, stride: int = 1) -> None:
    """A known sampling, and a stride that it uses.

    Raises:
        RuntimeInputError: an unknown sampling, a stride that is not an integer >= 1, or a stride other than 1 with a
            sampling other than ``stride`` (it would be ignored).
    """
    if sampling not in SAMPLINGS:
        raise RuntimeInputError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
    k = _count(stride, "stride")
    if k != 1 and sampling != "stride":
        raise RuntimeInputError(f"a frame stride of {k} is used only by the stride sampling, not by {sampling!r} "
                                "(--frame-stride needs --sampling stride)")


def sample_indices(num_frames: int, frames: int, sampling: str = "uniform", *, stride: int = 1,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The frame indices one clip of ``frames`` (T) frames takes from a video of ``num_frames`` (N) frames.

    See the module docstring for each sampling. Without ``rng`` the indices are deterministic (evaluation, serving);
    with one they are a random segment (training). Fewer than T indices come back when the video is too short.

    Raises:
        RuntimeInputError: an unknown sampling, counts that are not integers >= 1, or a stride the sampling does not
            use (:func:`check_sampling`).
    """
    n, t = _count(num_frames, "num_frames"), _count(frames, "frames")
    check_sampling(sampling, stride)
    if sampling == "uniform":
        if n < t:
            return np.arange(n)
        i = np.arange(t)
        if rng is None:
            return (2 * i + 1) * n // (2 * t)
        lo, hi = i * n // t, (i + 1) * n // t
        return lo + (rng.random(t) * (hi - lo)).astype(np.int64)
    k = int(stride)
    span = (t - 1) * k + 1
    if n < span:
        return np.arange(0, n, k)[:t]
    start = (n - span) // 2 if rng is None else int(rng.integers(0, n - span + 1))
    return start + k * np.arange(t)


def window_starts(num_frames: int, frames: int, step: int) -> np.ndarray:
    """First frame of every window of ``frames`` frames, ``step`` frames apart, that fits in ``num_frames`` ([0] when the
    video is shorter than one window: one short window)."""
    n, t, s = (_count(v, w) for v, w in ((num_frames, "num_frames"), (frames, "frames"), (step, "step")))
    return np.arange(0, max(n - t, 0) + 1, s)
