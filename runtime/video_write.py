"""Writing video files with PyAV (tests, benchmarks, demos): uint8 RGB frames in, one encoded file out, atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import RuntimeInputError


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
