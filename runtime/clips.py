"""The clips ``python -m runtime classify`` is given: reading folders of frame images and ``.npy`` arrays, telling
video files apart, and classifying clips of any lengths in batches the runner accepts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import softmax
from .batches import infer_batches
from .errors import RuntimeInputError
from .frames import IMAGE_SUFFIXES, list_frame_files, read_frame_folder, resize_frames
from .preprocess import preprocess_clips
from .video_index import VIDEO_SUFFIXES, list_videos


def read_clip(path: str | os.PathLike, frame_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of one clip: a folder of images or a ``.npy`` array.

    A folder is read by :func:`runtime.frames.read_frame_folder`, as training reads it: the same image suffixes,
    natural name order (``2.png`` before ``10.png``) and, with ``frame_size``, the same resize.

    Raises:
        RuntimeInputError: missing path, no frames, an unreadable image, frames of different sizes, not uint8 RGB, a
            .npz archive or another format named .npy, or another format.
    """
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path, frame_size)
    if path.suffix.lower() == ".npy" and path.is_file():
        try:
            frames = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # pickled, empty, truncated or unreadable
            raise RuntimeInputError(f"{path} is not a readable .npy array file: {type(e).__name__}: {e}") from e
        if not isinstance(frames, np.ndarray):  # np.load goes by content: a zip (.npz) gives an archive object
            frames.close()
            raise RuntimeInputError(f"{path} is a .npz archive (a zip of arrays), not a .npy array; save the clip "
                                    "with np.save(path, frames) as uint8 (T, H, W, 3)")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
            raise RuntimeInputError(f"{path} must hold uint8 (T, H, W, 3) RGB frames with T >= 1, got "
                                    f"{frames.dtype} {frames.shape}")
        return frames if frame_size is None else resize_frames(frames, frame_size)
    if not path.exists():
        raise RuntimeInputError(f"{path} does not exist")
    raise RuntimeInputError(f"{path} is neither a folder of frame images nor a .npy file of uint8 (T, H, W, 3) "
                            f"frames nor a video file ({', '.join(VIDEO_SUFFIXES)}); frame images end in "
                            f"{', '.join(IMAGE_SUFFIXES)}")


def is_video(path: str | os.PathLike) -> bool:
    """A file (or a path that is not a folder) with a video suffix: read by :mod:`runtime.video`."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES and not Path(path).is_dir()


def expand_clip_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The clips the command line names: a folder holding video files stands for its videos (natural name order);
    any other path for itself.

    Raises:
        RuntimeInputError: a folder holding both video files and frame images (which one is meant is unclear).
    """
    out = []
    for p in map(Path, paths):
        videos = list_videos(p) if p.is_dir() else []
        if videos:
            try:
                list_frame_files(p)
            except RuntimeInputError:
                out += videos
                continue
            raise RuntimeInputError(f"{p} holds both video files and frame images; name the videos, or move them "
                                    "out of the folder of frames")
        out.append(p)
    return out


def classify_clips(runner, clips: Sequence[np.ndarray], *, top_k: int = 1, resize: bool = False) -> list[dict]:
    """Classify uint8 clips of any lengths, padded with their lengths (exact), in as many batches as the runner
    needs (:func:`runtime.batches.infer_batches`: an engine's profiles or a served model's ``max_batch_size`` bound
    the clips per call).

    Returns:
        list[dict]: per clip, ``frames``, ``labels`` and ``probs`` (top-k, best first) and ``frame_labels`` (top-1 per
        frame).

    Raises:
        RuntimeInputError: top_k outside 1..C, or clips the runner refuses.
    """
    meta = runner.metadata
    names, c = list(meta.class_names), meta.num_classes
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= c:
        raise RuntimeInputError(f"top_k must be an integer in 1..{c} (the number of classes), got {top_k!r}")
    batch, lengths = preprocess_clips(clips, meta.mean, meta.std, runner.input_spec.frame_size, resize=resize)
    out = infer_batches(runner, batch, lengths)
    probs = softmax(np.asarray(out["clip_logits"]))
    best = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    frame_best = np.asarray(out["frame_logits"]).argmax(-1)
    return [{"frames": int(n), "labels": [names[k] for k in best[i]],
             "probs": [round(float(probs[i, k]), 6) for k in best[i]],
             "frame_labels": [names[k] for k in frame_best[i, :n]]} for i, n in enumerate(lengths.tolist())]
