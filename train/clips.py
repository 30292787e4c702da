"""What every data source shares: the source names and normalisations, :class:`DataError`, and the helpers that
turn frames into a normalised clip and clips of different lengths into a padded batch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from runtime.errors import RuntimeInputError
from runtime.frames import read_image
from runtime.preprocess import preprocess_frames

DATASETS = ("synthetic", "cifar10", "folder", "video")
SPLITS = ("train", "test")

# Normalisation stored in every checkpoint. Synthetic frames are mostly dark noise, so centre there.
SYNTHETIC_MEAN = (0.25, 0.25, 0.25)
SYNTHETIC_STD = (0.25, 0.25, 0.25)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(ValueError):
    """Unusable data: unknown source, missing or empty folder, folder without clips, unreadable image."""


def normalize_frames(frames: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 frames ``(T, H, W, 3)`` -> float32 ``(T, 3, H, W)`` as ``(x / 255 - mean) / std``.

    Args:
        frames (ndarray | Tensor): uint8 RGB frames, channels last.
        mean (Sequence[float]): per-channel mean on the 0..1 scale.
        std (Sequence[float]): per-channel standard deviation on the 0..1 scale.

    Returns:
        Tensor: float32 ``(T, 3, H, W)``.
    """
    # The runtime's preprocessing, so training and serving normalise frames with the same code.
    return torch.from_numpy(preprocess_frames(frames, mean, std)[0])


def pad_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch clips of different lengths: zero padding at the end plus their real lengths.

    Args:
        batch (Sequence[tuple[Tensor, int]]): items ``(frames (T_i, 3, H, W), label)``.

    Returns:
        tuple[Tensor, Tensor, Tensor]: frames ``(B, max T_i, 3, H, W)``, lengths ``(B,)`` int64, labels ``(B,)`` int64.

    Raises:
        DataError: when the batch is empty or the frames differ in size.
    """
    if not batch:
        raise DataError("cannot collate an empty batch")
    shapes = {tuple(f.shape[1:]) for f, _ in batch}
    if len(shapes) != 1:
        raise DataError(f"all frames in a batch must have one (3, H, W) shape, got {sorted(shapes)}")
    lengths = torch.tensor([f.shape[0] for f, _ in batch], dtype=torch.int64)
    out = batch[0][0].new_zeros((len(batch), int(lengths.max()), *batch[0][0].shape[1:]))
    for i, (f, _) in enumerate(batch):
        out[i, : f.shape[0]] = f
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.int64)
    return out, lengths, labels


def load_image(path: str | os.PathLike, frame_size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Read an image as uint8 RGB ``(H, W, 3)``, resized to ``frame_size`` (height, width) if given.

    The runtime's reader (:func:`runtime.frames.read_image`), so training and serving decode and resize frames with the
    same code.

    Raises:
        DataError: the file cannot be read as an image (the message names the path).
    """
    try:
        return read_image(path, frame_size)
    except RuntimeInputError as e:
        raise DataError(str(e)) from e


def holdout_indices(labels: Sequence[int], split: str, seed: int, val_fraction: float) -> list[int]:
    """Sorted indices of one split of samples with ``labels`` when no train/test folders exist: a seeded
    ``val_fraction`` of each class (at least one sample of a class with two or more) is the test split.

    Raises:
        DataError: ``val_fraction`` outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(max(labels, default=-1) + 1):
        idx = [i for i, y in enumerate(labels) if y == label]
        idx = [idx[i] for i in rng.permutation(len(idx))]
        n_test = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        chosen += idx[:n_test] if split == "test" else idx[n_test:]
    return sorted(chosen)


def check_both_splits(root: Path, what: str, layout: str) -> None:
    """A tree with one of train/ and test/ but not the other is refused: its other split would silently come from
    somewhere else (a download, or the split folder read as a class)."""
    have = [s for s in SPLITS if (root / s).is_dir()]
    if len(have) == 1:
        missing = next(s for s in SPLITS if s not in have)
        raise DataError(f"{root} has {have[0]}/ but no {missing}/: {what} needs both {root}/train/{layout} and "
                        f"{root}/test/{layout}")


def split_samples(root: Path, split: str, seed: int, val_fraction: float, scan, what: str, layout: str) -> tuple:
    """One split of a folder source: ``scan(root/split)`` when ``root`` has both train/ and test/, otherwise
    ``scan(root)`` with a seeded ``val_fraction`` of each class held out (:func:`holdout_indices`).

    Args:
        scan (callable): ``folder -> (class_names, [(item, label), ...])``.
        what, layout (str): how the refusal of a tree with one split only names it (:func:`check_both_splits`).

    Returns:
        tuple: (class_names, samples).
    """
    check_both_splits(root, what, layout)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return scan(root / split)
    names, samples = scan(root)
    return names, [samples[i] for i in holdout_indices([y for _, y in samples], split, seed, val_fraction)]


def seeded_subset(samples: list, max_items: Optional[int], seed: int) -> list:
    """A seeded random ``max_items`` of ``samples``, kept in their order (all of them when None or not fewer)."""
    if max_items is None or max_items >= len(samples):
        return samples
    rng = np.random.default_rng(seed)
    return [samples[i] for i in sorted(rng.permutation(len(samples))[:max_items])]


def visible_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def class_dirs(root: Path, what: str, layout: str) -> list[Path]:
    """The class folders of a ``what`` (e.g. "video folder") laid out as ``root/<class>/layout``: its visible
    subfolders, by name.

    Raises:
        DataError: ``root`` is missing, not a folder, or has no class folder.
    """
    if not root.is_dir():
        raise DataError(f"{what} {root} does not exist or is not a folder")
    classes = visible_dirs(root)
    if not classes:
        raise DataError(f"{what} {root} is empty: expected {root}/<class>/{layout}")
    return classes
