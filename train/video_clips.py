"""The ``video`` source (see :mod:`train.data`): a user's video files, ``root/<class>/*.mp4|avi|mkv|webm|...``, read by
the runtime's video reader (:mod:`runtime.video`), so training and serving decode, sample and resize one way.

- Every video is demuxed once, when the data set is built (packets only: frame count, timestamps, damage checks);
  its index (:class:`runtime.video_index.VideoIndex`, about 17 bytes a frame) is kept, so reading a clip later seeks
  and decodes without demuxing the file again (a file changed since is demuxed again), and it keeps what reading
  learned (a video whose seeks prove unreliable is read from its start at once, never decoded twice). A bad video
  (unreadable, a broken link or a loop of links, no video stream, no frames, truncated) stops the build with its path
  (``on_bad_video="fail"``, the default) or is left out with a warning naming it (``"skip"``). A video that passes
  this check but fails while a frame is decoded does the same at that moment: it raises (fail), or the next video of
  the data set takes its place in that batch (skip, logged with the path). No video ever gives an empty clip.
- Training clips are a random segment per epoch (:func:`runtime.video_sampling.sample_indices` with a generator
  seeded by seed, epoch and index, so workers and resumed runs draw the same clips); the test split is deterministic.
- ``cache_dir``: each video's frames, decoded and resized once, stored as ``<sha256 of the file>-<H>x<W>-v2.npy``
  (written atomically) and sampled from there, so epochs after the first decode nothing. The key is the file's
  content and everything that changes the decoded frames (frame size, reader format version); the sampling is applied
  to the cached frames, so one entry serves every sampling, T and epoch. It holds every frame at the model's size:
  about N x H x W x 3 bytes per video.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime._io import atomic_write, check_output_dir, remove_stale_temporaries, sha256_file
from runtime.errors import RuntimeInputError
from runtime.video import VideoReader
from runtime.video_index import VIDEO_SUFFIXES, VideoIndex, list_videos
from runtime.video_sampling import check_sampling, sample_indices

from ._checks import check_range
from .clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    class_dirs,
    normalize_frames,
    seeded_subset,
    split_samples,
    visible_dirs,
)

logger = logging.getLogger(__name__)

ON_BAD_VIDEO = ("fail", "skip")
CACHE_VERSION = 2  # 2: frames turned by the display matrix; discarded packets are not frames


def scan_video_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Find ``root/<class>/<video files>`` (``runtime.video_index.VIDEO_SUFFIXES``, natural name order; broken
    links and loops of them are listed, so that opening them fails naming them).

    Raises:
        DataError: the folder is missing or empty, or a class folder holds no videos.
    """
    classes = class_dirs(Path(root), "video folder", "<video files>")
    samples = []
    for label, cdir in enumerate(classes):
        videos = list_videos(cdir)
        if not videos:
            hint = " (it holds folders: for folders of frame images use --data folder)" if visible_dirs(cdir) else ""
            raise DataError(f"class folder {cdir} holds no videos ({', '.join(VIDEO_SUFFIXES)}){hint}")
        samples += [(v, label) for v in videos]
    return [c.name for c in classes], samples


class VideoClips(Dataset):
    """Clips of ``frames`` frames read from video files; items ``(frames (T, 3, H, W) float32, label)``.

    Args:
        samples (list): ``(video path, label)`` per video (see :func:`scan_video_folder`).
        class_names (list[str]): names in label order.
        frames (int): clip length T; a shorter video gives a shorter clip (padded by :func:`train.clips.pad_collate`).
        frame_size (tuple[int, int]): (height, width) every frame is resized to.
        sampling (str): ``runtime.video_sampling.SAMPLINGS``. Defaults to "uniform".
        stride (int): frame step of the ``stride`` sampling (any other sampling refuses a stride other than 1).
            Defaults to 1.
        random_segments (bool): a random segment per epoch (training) instead of the deterministic one.
            Defaults to False.
        seed (int): seed of the random segments. Defaults to 0.
        cache_dir (str | PathLike | None): decode cache folder (see the module docstring). Defaults to None.
        on_bad_video (str): "fail" or "skip". Defaults to "fail".
        mean (Sequence[float]): normalisation mean. Defaults to ``IMAGENET_MEAN``.
        std (Sequence[float]): normalisation std. Defaults to ``IMAGENET_STD``.

    Raises:
        DataError: a bad option, a bad video (with ``on_bad_video="fail"``), or no usable video.
    """

    def __init__(self, samples: list[tuple[Path, int]], class_names: Sequence[str], frames: int = 8,
                 frame_size: tuple[int, int] = (32, 32), sampling: str = "uniform", stride: int = 1,
                 random_segments: bool = False, seed: int = 0, cache_dir: Optional[str | os.PathLike] = None,
                 on_bad_video: str = "fail", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        check_range("frames", frames, 1, error=DataError)
        check_range("stride", stride, 1, error=DataError)
        try:
            check_sampling(sampling, stride)
        except RuntimeInputError as e:
            raise DataError(str(e)) from e
        if on_bad_video not in ON_BAD_VIDEO:
            raise DataError(f"on_bad_video must be one of {', '.join(ON_BAD_VIDEO)}, got {on_bad_video!r}")
        self.class_names, self.frames, self.frame_size = list(class_names), int(frames), tuple(frame_size)
        self.sampling, self.stride, self.random_segments = sampling, int(stride), bool(random_segments)
        self.seed, self.on_bad_video, self.epoch = int(seed), on_bad_video, 0
        self.mean, self.std = tuple(mean), tuple(std)
        self.cache_dir = None if cache_dir is None else check_output_dir(cache_dir, what="--cache-dir")
        if self.cache_dir is not None:
            remove_stale_temporaries(self.cache_dir)  # entries half-written by killed workers
        self.cache_hits = self.cache_misses = 0  # this process's counts (each DataLoader worker keeps its own)
        self._digests: dict = {}
        self._video_index: dict[Path, VideoIndex] = {}
        self.samples = self._probe(samples)  # (path, label, frame count)
        if not self.samples:
            raise DataError(f"none of the {len(samples)} videos is usable (every one was skipped as bad)")
        short = sum(n < self.frames for _, _, n in self.samples)
        if short:
            logger.warning("%d of %d videos have fewer than %d frames: their clips are shorter (padded, with their "
                           "lengths)", short, len(self.samples), self.frames)

    def _probe(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int, int]]:
        from tqdm import tqdm

        kept = []
        for path, label in tqdm(samples, desc="checking videos", leave=False, disable=not sys.stderr.isatty()):
            try:
                with VideoReader(path) as reader:
                    kept.append((Path(path), int(label), reader.info.num_frames))
                    self._video_index[Path(path)] = reader.index
            except RuntimeInputError as e:
                self._bad(path, e)
        return kept

    def _bad(self, path, error: Exception) -> None:
        if self.on_bad_video == "fail":
            raise DataError(f"bad video {path}: {error} (--on-bad-video skip leaves bad videos out)") from error
        logger.warning("skipping bad video %s: %s", path, error)

    def set_epoch(self, epoch: int) -> None:
        """Draw other random segments (training); no effect on deterministic clips."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def indices(self, index: int, num_frames: int) -> np.ndarray:
        """The frame indices item ``index`` takes from its video this epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.random_segments else None
        return sample_indices(num_frames, self.frames, self.sampling, stride=self.stride, rng=rng)

    def raw_clip(self, index: int) -> tuple[np.ndarray, int]:
        """Item ``index`` as uint8 ``(T, H, W, 3)`` frames (before normalisation) and its label; with
        ``on_bad_video="skip"`` a video that fails to decode is replaced by the next one (logged)."""
        for k in range(len(self.samples)):
            path, label, n = self.samples[(index + k) % len(self.samples)]
            try:
                return self._read(path, n, self.indices(index, n)), label
            except RuntimeInputError as e:
                self._bad(path, e)
        raise DataError("every video of the data set failed to decode")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip, label = self.raw_clip(index)
        return normalize_frames(clip, self.mean, self.std), label

    def _read(self, path: Path, num_frames: int, indices: np.ndarray) -> np.ndarray:
        if self.cache_dir is None:
            with self.open_video(path) as reader:
                return reader.read(indices)
        entry = self.cache_dir / f"{self._digest(path)}-{self.frame_size[0]}x{self.frame_size[1]}-v{CACHE_VERSION}.npy"
        frames = None
        if entry.is_file():
            try:
                frames = np.load(entry, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:  # a damaged entry is decoded again and replaced
                logger.warning("decode cache entry %s is unreadable (%s); decoding %s again", entry, e, path)
        if frames is not None and frames.dtype == np.uint8 and frames.shape == (num_frames, *self.frame_size, 3):
            self.cache_hits += 1
            return np.ascontiguousarray(frames[indices])
        self.cache_misses += 1
        with self.open_video(path) as reader:
            frames = np.stack([f for _, f in reader.iter_frames()])
        atomic_write(entry, lambda f: np.save(f, frames, allow_pickle=False))
        return frames[indices]

    @contextmanager
    def open_video(self, path: Path) -> Iterator[VideoReader]:
        """One of the data set's videos open at its frame size through its kept index (no second demux); what the
        reader learned goes back into the index."""
        with VideoReader(path, self.frame_size, index=self._video_index.get(path)) as reader:
            try:
                yield reader
            finally:
                self._video_index[path] = reader.index

    def _digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)
        return self._digests[key]


def split_video_folder(root: Path, split: str, seed: int, val_fraction: float, max_clips: Optional[int] = None,
                       **kwargs) -> VideoClips:
    """One split of a video folder: ``root/train`` and ``root/test`` when both exist, otherwise a seeded
    ``val_fraction`` of each class's videos held out (the frame-folder source's rule); ``max_clips`` keeps a seeded
    subset before the videos are opened."""
    names, samples = split_samples(root, split, seed, val_fraction, scan_video_folder, "a split video folder",
                                   "<class>/<videos> (or neither, and --val-fraction holds out a part of each "
                                   "class's videos)")
    samples = seeded_subset(samples, max_clips, seed)
    if not samples:
        raise DataError(f"the {split} split of {root} has no videos")
    return VideoClips(samples, names, random_segments=split == "train", seed=seed, **kwargs)
