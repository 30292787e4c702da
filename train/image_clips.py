"""Image sources (see :mod:`train.data`): clips of single images of one class (CIFAR-10 or any ImageFolder tree)
and a user's clips on disk (``root/<class>/<clip>/<frame files>``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import RuntimeInputError
from runtime.frames import IMAGE_SUFFIXES, list_frame_files, resize_frame

from ._checks import check_range
from .clips import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    DataError,
    check_both_splits,
    class_dirs,
    load_image,
    normalize_frames,
    split_samples,
    visible_dirs,
)

logger = logging.getLogger(__name__)

# --- clips made of single images (CIFAR-10 or any ImageFolder tree) ------------------------------------------------


def group_into_clips(
    labels: Sequence[int], frames: int, seed: int, max_clips: Optional[int] = None
) -> list[tuple[list[int], int]]:
    """Group sample indices into clips of ``frames`` indices of one class, classes interleaved (so any prefix is
    balanced), reproducibly by ``seed``.

    Returns:
        list[tuple[list[int], int]]: ``(indices, label)`` per clip.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    per_class = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx) // frames
        per_class.append([(idx[i * frames : (i + 1) * frames].tolist(), int(c)) for i in range(n)])
    clips = []
    for i in range(max((len(p) for p in per_class), default=0)):
        clips.extend(p[i] for p in per_class if i < len(p))
    return clips if max_clips is None else clips[:max_clips]


class ImageClips(Dataset):
    """Clips of ``frames`` images of one class drawn from an image data set (CIFAR-10, ImageFolder).

    Args:
        base: a torchvision data set whose items are ``(PIL image, label)`` and that has ``targets`` and ``classes``.
        frames (int): clip length T. Defaults to 8.
        frame_size (tuple[int, int]): (height, width); images of another size are resized. Defaults to (32, 32).
        seed (int): grouping seed. Defaults to 0.
        max_clips (int | None): keep only this many clips (classes stay balanced). Defaults to None (all).
        augment (bool): random crop (pad 2) and horizontal flip per frame (training). Defaults to False.
        mean (Sequence[float]): normalisation mean. Defaults to ``CIFAR10_MEAN``.
        std (Sequence[float]): normalisation std. Defaults to ``CIFAR10_STD``.
    """

    def __init__(
        self,
        base,
        frames: int = 8,
        frame_size: tuple[int, int] = (32, 32),
        seed: int = 0,
        max_clips: Optional[int] = None,
        augment: bool = False,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        check_range("frames", frames, 1, error=DataError)
        check_range("max_clips", max_clips, 1, error=DataError)  # None: all; 0 is not "all"
        self.base, self.frames, self.frame_size, self.augment = base, int(frames), tuple(frame_size), augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.class_names = list(base.classes)
        self.clips = group_into_clips(base.targets, self.frames, seed, max_clips)
        if not self.clips:
            raise DataError(f"no clip of {frames} images could be formed from {len(base)} images")

    def __len__(self) -> int:
        return len(self.clips)

    def _image(self, i: int) -> np.ndarray:
        path = getattr(self.base, "samples", None)
        if path is not None:  # ImageFolder: read it ourselves so a damaged file names its path
            return load_image(path[i][0], self.frame_size)
        return resize_frame(np.asarray(self.base[i][0].convert("RGB"), dtype=np.uint8), self.frame_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        indices, label = self.clips[index]
        clip = np.stack([self._image(i) for i in indices])
        x = normalize_frames(clip, self.mean, self.std)
        if self.augment:
            x = _augment(x)
        return x, label


def _augment(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Per-frame random translation by up to ``pad`` pixels (reflect padding) and horizontal flip (torch RNG)."""
    t, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (t, 2))
    flips = torch.rand(t) < 0.5
    out = torch.empty_like(x)
    for i in range(t):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        f = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = f.flip(-1) if flips[i] else f
    return out


def open_cifar10(data_dir: str | os.PathLike, split: str, download: bool = False):
    """The CIFAR-10 split as a torchvision data set: an ImageFolder tree ``DIR/<split>/<class>/*`` when present,
    otherwise torchvision's ``CIFAR10(DIR)`` (fetched when ``download``).

    Raises:
        DataError: no CIFAR-10 at ``data_dir`` and ``download`` is off, or an unknown split.
    """
    import torchvision

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    root = Path(data_dir)
    check_both_splits(root, "an ImageFolder tree", "<class>/<images>")
    if (root / split).is_dir():
        _check_image_folder(root / split)
        return torchvision.datasets.ImageFolder(str(root / split))
    if (root / "cifar-10-batches-py").is_dir() or download:
        try:
            return torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DataError(f"cannot read CIFAR-10 under {root}: {e}") from e
        except OSError as e:  # urllib's URLError (offline, no DNS), timeouts, a full disk
            if not download:
                raise DataError(f"cannot read CIFAR-10 under {root}: {e}") from e
            reason = " ".join(str(getattr(e, "reason", None) or e).split())
            raise DataError(
                f"--download: fetching CIFAR-10 into {root} failed ({type(e).__name__}: {reason}); without a network, "
                f"put CIFAR-10 there by hand: an ImageFolder tree ({root}/train/<class>/*.png and "
                f"{root}/test/<class>/*.png) or torchvision's {root}/cifar-10-batches-py"
            ) from e
    raise DataError(
        f"no CIFAR-10 found at {root}: expected an ImageFolder tree ({root}/train/<class>/*, {root}/test/<class>/*) "
        f"or torchvision's {root}/cifar-10-batches-py; pass --download to fetch it there"
    )


def _check_image_folder(root: Path) -> None:
    classes = visible_dirs(root)
    if not classes:
        raise DataError(f"image folder {root} has no class folders (expected {root}/<class>/<image files>)")
    for c in classes:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in c.iterdir()):
            raise DataError(f"class folder {c} holds no images ({', '.join(IMAGE_SUFFIXES)})")


# --- a user's clips on disk ---------------------------------------------------------------------------------------


def scan_clip_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[list[Path], int]]]:
    """Find ``root/<class>/<clip>/<frame files>``.

    Returns:
        tuple[list[str], list]: class names (sorted) and ``(frame paths in natural order, label)`` per clip.

    Raises:
        DataError: the folder is missing or empty, a class folder has no clip folders, or a clip has no frames.
    """
    classes = class_dirs(Path(root), "clip folder", "<clip>/<frame images>")
    samples = []
    for label, cdir in enumerate(classes):
        clips = visible_dirs(cdir)
        if not clips:
            raise DataError(f"class folder {cdir} has no clip folders (expected {cdir}/<clip>/<frame images>)")
        for clip in clips:
            try:  # the runtime's listing: the same suffixes and natural order as `python -m runtime classify`
                frames = list_frame_files(clip)
            except RuntimeInputError as e:
                raise DataError(f"clip folder {clip} has no frame images ({', '.join(IMAGE_SUFFIXES)})") from e
            samples.append((frames, label))
    return [c.name for c in classes], samples


class FolderClips(Dataset):
    """Clips stored as ``root/<class>/<clip>/<frame files>``; lengths may differ (batch them with :func:`pad_collate`).

    Args:
        samples (list): ``(frame paths, label)`` per clip (see :func:`scan_clip_folder`).
        class_names (list[str]): names in label order.
        frame_size (tuple[int, int]): (height, width); frames of another size are resized. Defaults to (32, 32).
        max_frames (int | None): clips longer than this keep ``max_frames`` evenly spaced frames (logged once).
            Defaults to None (all frames).
        mean (Sequence[float]): normalisation mean. Defaults to ``IMAGENET_MEAN``.
        std (Sequence[float]): normalisation std. Defaults to ``IMAGENET_STD``.
    """

    def __init__(
        self,
        samples: list[tuple[list[Path], int]],
        class_names: list[str],
        frame_size: tuple[int, int] = (32, 32),
        max_frames: Optional[int] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        check_range("max_frames", max_frames, 1, error=DataError)  # None: all frames; 0 is not "all"
        self.samples, self.class_names = samples, list(class_names)
        self.frame_size, self.max_frames = tuple(frame_size), max_frames
        self.mean, self.std = tuple(mean), tuple(std)
        longer = sum(len(f) > max_frames for f, _ in samples) if max_frames is not None else 0
        if longer:
            logger.info("%d of %d clips have more than %d frames; using %d evenly spaced frames of each",
                        longer, len(samples), max_frames, max_frames)

    @classmethod
    def from_root(cls, root: str | os.PathLike, **kwargs) -> "FolderClips":
        """Scan ``root`` (see :func:`scan_clip_folder`) and build the data set."""
        names, samples = scan_clip_folder(root)
        return cls(samples, names, **kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        paths, label = self.samples[index]
        if self.max_frames is not None and len(paths) > self.max_frames:
            keep = np.linspace(0, len(paths) - 1, self.max_frames).round().astype(int)
            paths = [paths[i] for i in keep]
        clip = np.stack([load_image(p, self.frame_size) for p in paths])
        return normalize_frames(clip, self.mean, self.std), label


def split_folder(root: Path, split: str, seed: int, val_fraction: float, **kwargs) -> FolderClips:
    names, samples = split_samples(root, split, seed, val_fraction, scan_clip_folder, "a split clip folder",
                                   "<class>/<clip>/<frames> (or neither, and --val-fraction holds out a part of each "
                                   "class's clips)")
    return FolderClips(samples, names, **kwargs)
