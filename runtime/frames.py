"""Reading a clip's frames from disk, the one way training, evaluation and serving all use.

The BiLSTM reads frame order, so the trained and the served model must see a clip's frames in the same order, resized
the same way. Everything that reads frame images goes through this module:

- one list of image suffixes (``IMAGE_SUFFIXES``, case-insensitive); hidden files (``.*``) are never frames;
- natural name order: ``2.png`` before ``10.png`` (digit runs compare as numbers);
- one resize: Pillow's bilinear filter, which widens its support when shrinking (antialiased), applied to the
  decoded uint8 RGB image and rounded back to uint8.

Only numpy and Pillow are needed: no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import RuntimeInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``frame2`` < ``frame10``; other text compares case-insensitively."""
    # re.split with a capture group alternates text, digits, text, ...: positions never mix str and int.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


def files_with_suffixes(folder: Path, suffixes) -> list[Path]:
    """The files directly in ``folder`` whose suffix (case-insensitive) is one of ``suffixes``, hidden ones left out,
    in natural name order (``2.png`` before ``10.png``)."""
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes),
                  key=lambda p: natural_key(p.name))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame images of one clip folder in natural name order.

    Raises:
        RuntimeInputError: the folder does not exist, is not a folder, or holds no frame images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RuntimeInputError(f"{folder} is not a folder of frame images"
                                + ("" if folder.exists() else " (it does not exist)"))
    files = files_with_suffixes(folder, IMAGE_SUFFIXES)
    if not files:
        raise RuntimeInputError(f"{folder} holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_frame_size(size: Sequence[int], what: str = "frame size") -> tuple[int, int]:
    """``size`` as an (H, W) tuple of positive ints, or a :class:`RuntimeInputError` naming what was given."""
    try:
        h, w = size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise RuntimeInputError(f"{what} must be (height, width) with two integers >= 1, got {size!r}")
    return int(h), int(w)


def resize_frame(frame: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """One uint8 RGB frame ``(H, W, 3)`` resized to ``size`` = (height, width): bilinear, antialiased when shrinking.

    A frame already of that size is returned unchanged (no copy, no filtering).
    """
    from PIL import Image

    h, w = check_frame_size(size)
    if frame.shape[:2] == (h, w):
        return frame
    resized = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def resize_frames(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 RGB frames ``(..., H, W, 3)`` resized frame by frame with :func:`resize_frame`."""
    h, w = check_frame_size(size)
    if frames.shape[-3:-1] == (h, w):
        return frames
    flat = frames.reshape((-1,) + frames.shape[-3:])
    out = np.stack([resize_frame(f, (h, w)) for f in flat])
    return out.reshape(frames.shape[:-3] + (h, w, frames.shape[-1]))


def read_image(path: str | os.PathLike, frame_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """One image as uint8 RGB ``(H, W, 3)``, resized with :func:`resize_frame` to ``frame_size`` when given.

    Raises:
        RuntimeInputError: the file cannot be read as an image (the message names the path and the reason).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            frame = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # Pillow raises all three for damaged or foreign files
        raise RuntimeInputError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return frame if frame_size is None else resize_frame(frame, frame_size)


def read_frames(paths: Sequence[str | os.PathLike], frame_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """The images ``paths``, in that order, as uint8 ``(T, H, W, 3)``.

    With ``frame_size`` every frame is resized to it; without, the frames must share one size.

    Raises:
        RuntimeInputError: no paths, an unreadable image, or frames of different sizes (without ``frame_size``).
    """
    if not len(paths):
        raise RuntimeInputError("a clip needs at least one frame")
    frames = []
    for p in paths:
        frames.append(read_image(p, frame_size))
        if frames[-1].shape != frames[0].shape:
            (h0, w0), (h, w) = frames[0].shape[:2], frames[-1].shape[:2]
            raise RuntimeInputError(f"{p} is {w}x{h} but {Path(paths[0]).name} is {w0}x{h0} (W x H); a clip's frames "
                                    "must share one size (or be read with a frame size to resize them to)")
    return np.stack(frames)


def read_frame_folder(folder: str | os.PathLike, frame_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """A clip folder's frames (:func:`list_frame_files` order) as uint8 ``(T, H, W, 3)``; see :func:`read_frames`."""
    return read_frames(list_frame_files(folder), frame_size)
