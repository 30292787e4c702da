"""The built-in ``synthetic`` source (see :mod:`train.data`): clips whose classes differ only in the ORDER of
their frames, generated on the fly and deterministic by seed."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .clips import SPLITS, SYNTHETIC_MEAN, SYNTHETIC_STD, DataError, normalize_frames


def synthetic_steps(num_classes: int, frames: int) -> list[int]:
    """Angular step per frame (in circle positions) for each synthetic class: +1, -1 and, for 4 classes, +k, -k.

    Raises:
        DataError: unsupported class count, or no fast step k (1 < k < T/2, coprime with T) exists for this T.
    """
    if num_classes not in (2, 4):
        raise DataError(f"the synthetic data set has 2 or 4 classes, got num_classes={num_classes}")
    if frames < 3:
        raise DataError(f"synthetic clips need at least 3 frames to have a direction, got {frames}")
    steps = [1, -1]
    if num_classes == 4:
        fast = [k for k in range(2, (frames + 1) // 2) if math.gcd(k, frames) == 1]
        if not fast:
            raise DataError(
                f"4 synthetic classes need a fast step coprime with the clip length; T={frames} has none "
                "(use T=5, 7, 8 or more, T != 6, or 2 classes)"
            )
        steps += [fast[0], -fast[0]]
    return steps


def synthetic_class_names(num_classes: int) -> list[str]:
    """Names of the synthetic classes, in label order."""
    return ["clockwise", "counterclockwise", "clockwise_fast", "counterclockwise_fast"][:num_classes]


def make_synthetic_clip(
    label: int,
    rng: np.random.Generator,
    *,
    frames: int = 8,
    frame_size: tuple[int, int] = (16, 16),
    num_classes: int = 4,
    noise: float = 0.12,
) -> np.ndarray:
    """One synthetic clip as uint8 RGB frames ``(T, H, W, 3)`` (see :mod:`train.data` for what it shows).

    Args:
        label (int): class index in ``range(num_classes)``.
        rng (np.random.Generator): source of all randomness (position, colour, noise).
        frames (int): clip length T. Defaults to 8.
        frame_size (tuple[int, int]): (height, width). Defaults to (16, 16).
        num_classes (int): 2 (clockwise or not) or 4 (also slow or fast). Defaults to 4.
        noise (float): standard deviation of the per-pixel Gaussian noise on the 0..1 scale. Defaults to 0.12.

    Returns:
        ndarray: uint8 ``(T, H, W, 3)``.
    """
    steps = synthetic_steps(num_classes, frames)
    if not 0 <= label < num_classes:
        raise DataError(f"label {label} out of range for {num_classes} synthetic classes")
    h, w = frame_size
    size = min(h, w)
    radius = rng.uniform(0.24, 0.34) * size
    cy = h / 2 + rng.uniform(-0.08, 0.08) * size
    cx = w / 2 + rng.uniform(-0.08, 0.08) * size
    phase = rng.uniform(0, 2 * np.pi)
    sigma = max(0.9, 0.07 * size)
    colour = rng.uniform(0.7, 1.0, size=3)
    background = rng.uniform(0.05, 0.3)
    # Position index t * step (mod T): with step coprime to T every position is visited once, whatever the class.
    angles = phase + 2 * np.pi * ((np.arange(frames) * steps[label]) % frames) / frames
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((frames, h, w, 3), dtype=np.float32)
    for t, a in enumerate(angles):
        by, bx = cy + radius * np.sin(a), cx + radius * np.cos(a)
        blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma**2))
        out[t] = background + blob[..., None] * (colour - background)
    out += rng.normal(0.0, noise, size=out.shape)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticClips(Dataset):
    """Synthetic clips whose class is the order of their frames, generated on the fly and reproducible by seed.

    The ``train`` split draws fresh clips every epoch (call :meth:`set_epoch`); the ``test`` split is fixed by the
    seed alone, so training's held-out split and ``python -m train.evaluate`` see the same clips for one seed.

    Args:
        num_clips (int): clips in the split. Defaults to 2000.
        frames (int): clip length T. Defaults to 8.
        frame_size (tuple[int, int]): (height, width). Defaults to (16, 16).
        num_classes (int): 2 or 4. Defaults to 4.
        split (str): "train" or "test". Defaults to "train".
        seed (int): base seed. Defaults to 0.
        noise (float): pixel noise standard deviation (0..1 scale). Defaults to 0.12.
        mean (Sequence[float]): normalisation mean. Defaults to ``SYNTHETIC_MEAN``.
        std (Sequence[float]): normalisation std. Defaults to ``SYNTHETIC_STD``.
    """

    def __init__(
        self,
        num_clips: int = 2000,
        frames: int = 8,
        frame_size: tuple[int, int] = (16, 16),
        num_classes: int = 4,
        split: str = "train",
        seed: int = 0,
        noise: float = 0.12,
        mean: Sequence[float] = SYNTHETIC_MEAN,
        std: Sequence[float] = SYNTHETIC_STD,
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
        if num_clips < 1:
            raise DataError(f"num_clips must be >= 1, got {num_clips}")
        synthetic_steps(num_classes, frames)  # validate early
        self.num_clips, self.frames, self.frame_size = int(num_clips), int(frames), tuple(frame_size)
        self.num_classes, self.split, self.seed, self.noise = int(num_classes), split, int(seed), float(noise)
        self.mean, self.std = tuple(mean), tuple(std)
        self.class_names = synthetic_class_names(num_classes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw another set of training clips (no effect on the test split)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_clips

    def raw_clip(self, index: int) -> tuple[np.ndarray, int]:
        """Clip ``index`` as uint8 ``(T, H, W, 3)`` frames (before normalisation) and its label."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range for {self.num_clips} clips")
        split_id = SPLITS.index(self.split)
        epoch = self.epoch if self.split == "train" else 0
        rng = np.random.default_rng([self.seed, split_id, epoch, index])
        label = index % self.num_classes  # balanced classes
        clip = make_synthetic_clip(
            label, rng, frames=self.frames, frame_size=self.frame_size, num_classes=self.num_classes, noise=self.noise
        )
        return clip, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip, label = self.raw_clip(index)
        return normalize_frames(clip, self.mean, self.std), label
