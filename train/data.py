"""Data sources for training and evaluation: every item is a clip of frames plus one class label.

Three sources (``DATASETS``):

``synthetic``
    Built in, generated on the fly, deterministic by seed. A bright blob on a noisy background jumps around a circle
    of ``T`` evenly spaced positions (random centre, radius, phase and colour per clip). The class is the angular step
    per frame: clockwise or counter-clockwise, slow (1 position) or fast (k positions, k coprime with T). Every class
    visits each of the T positions exactly once, so a single frame, and even the unordered set of a clip's frames,
    has the same distribution for every class: only the ORDER of the frames tells the classes apart. A per-frame
    classifier is at chance, and so is the model on temporally shuffled clips.
``cifar10``
    Clips of T images of one class from CIFAR-10 (per-frame label = clip label), train/test splits respected. Reads
    an ImageFolder tree (``DIR/train/<class>/*`` and ``DIR/test/<class>/*``) or torchvision's ``CIFAR10`` under
    ``DIR`` (downloaded there with ``download=True``).
``folder``
    A user's clips on disk: ``root/<class>/<clip>/<frame files>``, frames in natural name order (``2.png`` before
    ``10.png``), clips of different lengths. ``root/train`` and ``root/test`` are used as the splits when both exist;
    otherwise a seeded fraction of each class's clips is held out.

An item is ``(frames, label)``: frames a float32 tensor ``(T, 3, H, W)`` normalised as ``(x / 255 - mean) / std``
(the contract in docs/ARCHITECTURE.md), label an int. :func:`pad_collate` batches clips of different lengths into
``(frames (B, T, 3, H, W), lengths (B,) int64, labels (B,) int64)`` with zero padding.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import RuntimeInputError
from runtime.frames import IMAGE_SUFFIXES, list_frame_files, read_image, resize_frame
from runtime.preprocess import preprocess_frames

from ._checks import check_range

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "cifar10", "folder")
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


# --------------------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------------------
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


def _visible_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


# --------------------------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------------------------
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
    """One synthetic clip as uint8 RGB frames ``(T, H, W, 3)`` (see the module docstring for what it shows).

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


# --------------------------------------------------------------------------------------------------------------------
# clips made of single images (CIFAR-10 or any ImageFolder tree)
# --------------------------------------------------------------------------------------------------------------------
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
    _check_both_splits(root, "an ImageFolder tree", "<class>/<images>")
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


def _check_both_splits(root: Path, what: str, layout: str) -> None:
    """A tree with one of train/ and test/ but not the other is refused: its other split would silently come from
    somewhere else (a download, or the split folder read as a class)."""
    have = [s for s in SPLITS if (root / s).is_dir()]
    if len(have) == 1:
        missing = next(s for s in SPLITS if s not in have)
        raise DataError(f"{root} has {have[0]}/ but no {missing}/: {what} needs both {root}/train/{layout} and "
                        f"{root}/test/{layout}")


def _check_image_folder(root: Path) -> None:
    classes = _visible_dirs(root)
    if not classes:
        raise DataError(f"image folder {root} has no class folders (expected {root}/<class>/<image files>)")
    for c in classes:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in c.iterdir()):
            raise DataError(f"class folder {c} holds no images ({', '.join(IMAGE_SUFFIXES)})")


# --------------------------------------------------------------------------------------------------------------------
# a user's clips on disk
# --------------------------------------------------------------------------------------------------------------------
def scan_clip_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[list[Path], int]]]:
    """Find ``root/<class>/<clip>/<frame files>``.

    Returns:
        tuple[list[str], list]: class names (sorted) and ``(frame paths in natural order, label)`` per clip.

    Raises:
        DataError: the folder is missing or empty, a class folder has no clip folders, or a clip has no frames.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"clip folder {root} does not exist or is not a folder")
    classes = _visible_dirs(root)
    if not classes:
        raise DataError(f"clip folder {root} is empty: expected {root}/<class>/<clip>/<frame images>")
    samples = []
    for label, cdir in enumerate(classes):
        clips = _visible_dirs(cdir)
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


def _split_folder(root: Path, split: str, seed: int, val_fraction: float, **kwargs) -> FolderClips:
    _check_both_splits(root, "a split clip folder", "<class>/<clip>/<frames> (or neither, and --val-fraction holds out "
                       "a part of each class's clips)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return FolderClips.from_root(root / split, **kwargs)
    names, samples = scan_clip_folder(root)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(names)):
        idx = [i for i, (_, y) in enumerate(samples) if y == label]
        idx = [idx[i] for i in rng.permutation(len(idx))]
        n_test = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        chosen += idx[:n_test] if split == "test" else idx[n_test:]
    return FolderClips([samples[i] for i in sorted(chosen)], names, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# one entry point
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """Everything that picks a data split; the training CLI and ``train.evaluate`` both build one.

    Attributes:
        name (str): one of ``DATASETS``.
        data_dir (str | None): folder for ``cifar10`` / ``folder``.
        frames (int): clip length T (for ``folder``: the maximum, longer clips are subsampled).
        frame_size (tuple[int, int]): (height, width) the model expects.
        seed (int): data seed.
        num_clips (int | None): clips in the split (``synthetic``: required; others: a cap, None for all).
        num_classes (int): synthetic classes (2 or 4).
        download (bool): let torchvision fetch CIFAR-10.
        augment (bool): per-frame augmentation (image sources, training split).
        val_fraction (float): held-out fraction for ``folder`` trees without train/test.
        mean (Sequence[float] | None): override the source's normalisation.
        std (Sequence[float] | None): override the source's normalisation.
    """

    name: str = "synthetic"
    data_dir: Optional[str] = None
    frames: int = 8
    frame_size: tuple[int, int] = (16, 16)
    seed: int = 0
    num_clips: Optional[int] = None
    num_classes: int = 4
    download: bool = False
    augment: bool = False
    val_fraction: float = 0.2
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None


def _check_spec_numbers(spec: DataSpec) -> None:
    # 0 is refused, never read as "all" or "the default".
    check_range("frames", spec.frames, 1, error=DataError)
    check_range("num_clips", spec.num_clips, 1, error=DataError)
    check_range("val_fraction", spec.val_fraction, 0, 1, low_open=True, high_open=True, error=DataError)
    if len(tuple(spec.frame_size)) != 2 or min(spec.frame_size) < 1:
        raise DataError(f"frame_size must be (height, width), both >= 1, got {spec.frame_size!r}")


def build_dataset(spec: DataSpec, split: str) -> Dataset:
    """Build one split of a data source. The result has ``class_names``, ``mean`` and ``std`` attributes.

    Args:
        spec (DataSpec): source and options.
        split (str): "train" or "test".

    Returns:
        Dataset: items ``(frames (T, 3, H, W) float32, label)``.

    Raises:
        DataError: unknown source or split, a missing folder, unusable contents.
    """
    if spec.name not in DATASETS:
        raise DataError(f"unknown data set {spec.name!r}; valid choices: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    _check_spec_numbers(spec)
    norm = {}
    if spec.mean is not None:
        norm["mean"] = tuple(spec.mean)
    if spec.std is not None:
        norm["std"] = tuple(spec.std)
    if spec.name == "synthetic":
        if spec.num_clips is None:
            raise DataError("the synthetic data set needs a clip count (num_clips >= 1)")
        return SyntheticClips(spec.num_clips, spec.frames, spec.frame_size, spec.num_classes, split, spec.seed, **norm)
    if not spec.data_dir:
        raise DataError(f"--data {spec.name} needs --data-dir")
    if spec.name == "cifar10":
        base = open_cifar10(spec.data_dir, split, spec.download)
        return ImageClips(base, spec.frames, spec.frame_size, spec.seed, spec.num_clips,
                          augment=spec.augment and split == "train", **norm)
    ds = _split_folder(Path(spec.data_dir), split, spec.seed, spec.val_fraction, frame_size=spec.frame_size,
                       max_frames=spec.frames, **norm)
    if spec.num_clips is not None and spec.num_clips < len(ds):
        rng = np.random.default_rng(spec.seed)
        ds.samples = [ds.samples[i] for i in sorted(rng.permutation(len(ds))[: spec.num_clips])]
    if not len(ds):
        raise DataError(f"the {split} split of {spec.data_dir} has no clips")
    return ds
