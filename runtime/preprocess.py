"""Decoder frames (uint8, H x W x RGB) -> the model's normalised float32 input (B, T, 3, H, W).

The frame size is checked, never silently changed: a frame of another size is an error that names the size the
model takes. Pass ``resize=True`` to resize explicitly, with the one resize every frame reader uses
(:func:`runtime.frames.resize_frames`: bilinear, antialiased when shrinking).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import RuntimeInputError
from .frames import check_frame_size, resize_frames


def preprocess_frames(
    frames,
    mean: Sequence[float],
    std: Sequence[float],
    frame_size: Optional[Sequence[int]] = None,
    *,
    resize: bool = False,
) -> np.ndarray:
    """Normalise uint8 RGB frames: ``(x / 255 - mean) / std``, channels first.

    Args:
        frames (np.ndarray | torch.Tensor): uint8 frames (T, H, W, 3) for one clip or (B, T, H, W, 3) for a batch;
            (H, W, 3) is accepted for a single frame and gives (1, 1, 3, H, W).
        mean (Sequence[float]): per-channel RGB mean (the model metadata's ``mean``).
        std (Sequence[float]): per-channel RGB std.
        frame_size (Sequence[int] | None): (H, W) the model takes; None skips the size check. Defaults to None.
        resize (bool): resize frames of another size to ``frame_size`` instead of raising. Defaults to False.

    Returns:
        np.ndarray: float32 (B, T, 3, H, W), C-contiguous.

    Raises:
        RuntimeInputError: not uint8, wrong rank, not 3 channels, or another frame size (when ``resize`` is False).
    """
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):  # a torch tensor, without importing torch
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise RuntimeInputError(
            f"preprocess_frames takes uint8 RGB frames as a video decoder gives them, got dtype {frames.dtype}; "
            "float frames that are already normalised go to runner.infer directly"
        )
    if frames.ndim == 3:
        frames = frames[None, None]
    elif frames.ndim == 4:
        frames = frames[None]
    elif frames.ndim != 5:
        raise RuntimeInputError(
            f"frames must be (T, H, W, 3) or (B, T, H, W, 3) uint8 (or one (H, W, 3) frame), got shape {frames.shape}"
        )
    if frames.shape[-1] != 3:
        raise RuntimeInputError(f"frames must be RGB with channels last (..., H, W, 3), got shape {frames.shape}")
    if len(mean) != 3 or len(std) != 3:
        raise RuntimeInputError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    if min(float(s) for s in std) <= 0:
        raise RuntimeInputError(f"std values must be > 0, got {list(std)}")
    h, w = frames.shape[2:4]
    want = None if frame_size is None else check_frame_size(frame_size, "frame_size")
    if want is not None and (h, w) != want:
        if not resize:
            raise RuntimeInputError(
                f"frames are {h}x{w} (H x W) but the model takes {want[0]}x{want[1]}; resize them in your decoder "
                "or pass resize=True"
            )
        frames = resize_frames(frames, want)
    x = frames.astype(np.float32).transpose(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(1, 1, 3, 1, 1)
    shift = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(1, 1, 3, 1, 1)
    return np.ascontiguousarray(x * scale - shift, dtype=np.float32)


def preprocess_clips(clips: Sequence, mean: Sequence[float], std: Sequence[float],
                     frame_size: Optional[Sequence[int]] = None, *, resize: bool = False) -> tuple:
    """Normalise uint8 clips of any lengths (each (T_i, H, W, 3)) into one zero-padded batch.

    Returns:
        tuple: (x float32 (B, max T_i, 3, H, W), lengths int32 (B,)): what ``runner.infer(x, lengths)`` takes;
        padding is exact there.
    """
    xs = [preprocess_frames(c, mean, std, frame_size, resize=resize)[0] for c in clips]
    lengths = np.array([len(x) for x in xs], np.int32)
    batch = np.zeros((len(xs), int(lengths.max())) + xs[0].shape[1:], np.float32)
    for i, x in enumerate(xs):
        batch[i, : len(x)] = x
    return batch, lengths
