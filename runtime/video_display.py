"""How a player shows a decoded picture: FFmpeg's display matrix (phone videos, ``-display_rotation``, MP4's ``tkhd``
matrix), applied as the ``ffmpeg`` command-line tool's autorotation applies it.

FFmpeg attaches the stream's display matrix to every decoded frame (``DISPLAYMATRIX`` side data). ``ffmpeg`` reads
the rotation from it (``-round(av_display_rotation_get)``, folded into [0, 360)) and inserts: at 90 degrees
``transpose=cclock_flip`` when ``matrix[3] > 0``, else ``transpose=clock``; at 180 an ``hflip`` when ``matrix[0] < 0``
and a ``vflip`` when ``matrix[4] < 0``; at 270 ``transpose=clock_flip`` when ``matrix[3] < 0``, else
``transpose=cclock``; at 0 a ``vflip`` when ``matrix[4] < 0``. Each of these is a left-right mirror (or none)
followed by counterclockwise quarter turns, which is how :class:`Display` holds it. Other angles (which ``ffmpeg``
draws on a larger canvas with its ``rotate`` filter) are refused.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .errors import RuntimeInputError


@dataclass(frozen=True)
class Display:
    """A decoded picture's display transform: an optional left-right mirror, then counterclockwise quarter turns.

    Attributes:
        quarter_turns (int): 0..3 counterclockwise quarter turns (``np.rot90``'s ``k``).
        mirror (bool): mirror left-right before turning.
        rotation (int): the matrix's rotation in degrees, counterclockwise, as ``ffprobe`` reports it.
    """

    quarter_turns: int = 0
    mirror: bool = False
    rotation: int = 0

    @property
    def swaps_axes(self) -> bool:
        """Height and width trade places (a quarter or three-quarter turn)."""
        return self.quarter_turns % 2 == 1

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` (H, W, C) as it is displayed (a view when nothing changes)."""
        if self.mirror:
            rgb = rgb[:, ::-1]
        if self.quarter_turns:
            rgb = np.rot90(rgb, self.quarter_turns)
        return rgb if rgb.flags.c_contiguous else np.ascontiguousarray(rgb)


IDENTITY = Display()


@functools.lru_cache(maxsize=64)
def display_from_matrix(matrix: tuple[int, ...]) -> Display:
    """The :class:`Display` of a 3x3 display matrix (9 int32, row-major, 16.16 fixed point as FFmpeg stores it).

    Raises:
        ValueError: a rotation that is not a multiple of 90 degrees (within 1 degree), or not 9 numbers.
    """
    if len(matrix) != 9:
        raise ValueError(f"a display matrix has 9 entries, got {len(matrix)}")
    m = [float(v) for v in matrix]
    # av_display_rotation_get: the angle the matrix turns the picture counterclockwise, in degrees.
    sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    ccw = 0.0 if sx == 0 or sy == 0 else -math.degrees(math.atan2(m[1] / sy, m[0] / sx))
    theta = -round(ccw)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    rotation = int(round(ccw))
    if abs(theta - 90) < 1:
        return Display(1, True, rotation) if m[3] > 0 else Display(3, False, rotation)
    if abs(theta - 180) < 1:
        h, v = m[0] < 0, m[4] < 0
        return Display(2 if v else 0, h != v, rotation)  # both flips: a half turn; a vflip: a half turn of a mirror
    if abs(theta - 270) < 1:
        return Display(3, True, rotation) if m[3] < 0 else Display(1, False, rotation)
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return Display(2, True, rotation) if m[4] < 0 else Display(0, False, rotation)
    raise ValueError(f"its display matrix turns the picture by {rotation} degrees; this reader applies quarter turns "
                     "(0, 90, 180, 270 degrees) and mirrors only")


def frame_display(frame, what: str) -> Display:
    """The :class:`Display` of a decoded ``av.VideoFrame`` (its ``DISPLAYMATRIX`` side data; none: as decoded).

    Raises:
        RuntimeInputError: naming ``what`` (the file), for a rotation :func:`display_from_matrix` refuses.
    """
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return IDENTITY
    try:
        return display_from_matrix(tuple(int(v) for v in np.frombuffer(bytes(side), dtype="<i4")))
    except ValueError as e:
        raise RuntimeInputError(f"{what}: {e}") from e
