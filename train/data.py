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
``video``
    A user's video files: ``root/<class>/*.mp4`` (``.avi``, ``.mkv``, ``.webm``, ...), decoded by the runtime's video
    reader (:mod:`runtime.video`), ``root/train`` and ``root/test`` as for ``folder``. Clips of T frames by
    ``sampling``: a random segment per epoch for training, a fixed one for the test split; an optional decode cache.
    See :mod:`train.video_clips`.

An item is ``(frames, label)``: frames a float32 tensor ``(T, 3, H, W)`` normalised as ``(x / 255 - mean) / std``
(the contract in docs/ARCHITECTURE.md), label an int. :func:`train.clips.pad_collate` batches clips of different
lengths into ``(frames (B, T, 3, H, W), lengths (B,) int64, labels (B,) int64)`` with zero padding.

This module is the one entry point (:class:`DataSpec`, :func:`build_dataset`); the sources live in
:mod:`train.synthetic` and :mod:`train.image_clips`, their shared helpers in :mod:`train.clips`; video files in :mod:`train.video_clips`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from torch.utils.data import Dataset

from ._checks import check_range
from .clips import DATASETS, SPLITS, DataError, seeded_subset
from .image_clips import ImageClips, open_cifar10, split_folder
from .synthetic import SyntheticClips


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
        sampling (str): ``video``: how a clip's frames are picked (``runtime.video_sampling.SAMPLINGS``).
        frame_stride (int): ``video`` with ``sampling="stride"``: the step between a clip's frames.
        cache_dir (str | None): ``video``: decode cache folder (None: decode every time).
        on_bad_video (str): ``video``: "fail" (stop, naming the video) or "skip" (leave it out, logged).
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
    sampling: str = "uniform"
    frame_stride: int = 1
    cache_dir: Optional[str] = None
    on_bad_video: str = "fail"


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
        DataError: unknown source or split, a missing folder, unusable contents, fewer than 2 classes.
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
    ds = _open_data_dir(spec, split, norm)
    names = list(ds.class_names)
    if len(names) < 2:  # refused here, where the folder and its class are known (the model config knows a count)
        found = f"one class, {names[0]!r}" if names else "no class"
        raise DataError(f"the {split} split of {spec.data_dir} has {found}: a classifier needs at least 2 classes "
                        "(one folder each)")
    return ds


def _open_data_dir(spec: DataSpec, split: str, norm: dict) -> Dataset:
    """One split of the sources read from ``spec.data_dir`` (cifar10, video, folder)."""
    if spec.name == "cifar10":
        base = open_cifar10(spec.data_dir, split, spec.download)
        return ImageClips(base, spec.frames, spec.frame_size, spec.seed, spec.num_clips,
                          augment=spec.augment and split == "train", **norm)
    if spec.name == "video":
        from .video_clips import split_video_folder

        return split_video_folder(Path(spec.data_dir), split, spec.seed, spec.val_fraction, spec.num_clips,
                                  frames=spec.frames, frame_size=spec.frame_size, sampling=spec.sampling,
                                  stride=spec.frame_stride, cache_dir=spec.cache_dir,
                                  on_bad_video=spec.on_bad_video, **norm)
    ds = split_folder(Path(spec.data_dir), split, spec.seed, spec.val_fraction, frame_size=spec.frame_size,
                       max_frames=spec.frames, **norm)
    ds.samples = seeded_subset(ds.samples, spec.num_clips, spec.seed)
    if not len(ds):
        raise DataError(f"the {split} split of {spec.data_dir} has no clips")
    return ds
