"""What ``python -m train.evaluate`` runs and on what: any model ``runtime.load`` opens (checkpoint, ONNX graph or
export folder, engine, served URL), the held-out clips built for it (its frame size, normalisation and classes), and
videos scored by several windows each. The scoring itself is :mod:`runtime.evaluation`'s."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from runtime.evaluation import ClipOutputs, averaged_scores, largest_batch

from .synthetic import synthetic_class_names

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The data does not fit the model (other classes), the reference does not fit the model, or the model's outputs
    are unusable (NaN/Inf)."""


class CannotRunError(RuntimeError):
    """The model cannot run on this machine (no GPU for an engine, a backend library missing)."""


def model_path(model: str | os.PathLike) -> str | Path:
    """What ``runtime.load`` opens for MODEL: a URL as it is, an export folder's ``model.onnx``, any other path."""
    from runtime.triton.client import is_remote_url

    if is_remote_url(model):
        return str(model)
    path = Path(model)
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise EvaluationError(f"{path} is a folder without model.onnx; pass an export folder (python -m "
                                  "export.to_onnx CKPT --out DIR), a model file (.pt, .onnx, .engine/.plan) or a URL")
        return path / "model.onnx"
    return path


def open_model(model: str | os.PathLike, *, device: Optional[str] = None, timeout: float = 30.0):
    """MODEL as an activated whole-model runner.

    Args:
        model (str | PathLike): a checkpoint, ``model.onnx`` or an export folder, a ``.engine``/``.plan``, or a
            ``grpc://HOST:PORT/NAME`` / ``http://HOST:PORT/NAME`` URL.
        device (str | None): "cpu", "cuda", "cuda:N"; None lets the backend choose (a URL takes none).
        timeout (float): seconds a served model may take per request. Defaults to 30.

    Raises:
        RuntimeInputError, CheckpointError, EvaluationError: not a model, a damaged one, a cnn or bilstm stage.
        CannotRunError: it cannot run here (an engine without its GPU, a backend library missing).
        runtime.errors.RemoteServerError: the server of a URL does not answer.
    """
    from runtime.backends import load
    from runtime.triton.client import is_remote_url

    target = model_path(model)
    options = {"device": device}  # runtime.load refuses a device for a URL: the server decides
    if is_remote_url(target):
        options = {"timeout": timeout, **({} if device is None else options)}
    try:
        runner = load(target, **options)
        runner.activate()
    except (ImportError, RuntimeError) as e:  # a backend library or the GPU it needs is missing here
        raise CannotRunError(f"{model} cannot run on this machine: {type(e).__name__}: {e}") from e
    if runner.stage != "model":
        runner.deactivate()
        raise EvaluationError(f"{model} is the {runner.stage} stage; evaluation takes a whole model (model.onnx, a "
                              "model engine, a checkpoint or a served clip model)")
    return runner


def describe(runner) -> str:
    """The backend a runner runs on, as a table shows it (``CPUExecutionProvider``, ``torch``, ``triton``)."""
    return getattr(runner, "provider", None) or runner.backend_name


def check_reference(runner, reference, model: str, ref: str) -> Optional[bool]:
    """Refuse a reference that does not take the model's input or name its classes in the same order, and tell
    whether the model was exported from the reference checkpoint.

    Returns:
        bool | None: whether the model's recorded ``checkpoint_sha256`` is the reference file's; None when either
        is unknown (a checkpoint model, a served or non-checkpoint reference). A mismatch is logged as a warning.

    Raises:
        EvaluationError: other classes, frame size or normalisation, naming both.
    """
    from runtime._io import sha256_file
    from runtime.triton.client import is_remote_url

    a, b = runner.metadata, reference.metadata
    for what, mine, theirs in (("classes", list(a.class_names), list(b.class_names)),
                               ("frame size", list(a.frame_size), list(b.frame_size)),
                               ("mean", [float(v) for v in a.mean], [float(v) for v in b.mean]),
                               ("std", [float(v) for v in a.std], [float(v) for v in b.std])):
        if mine != theirs:
            raise EvaluationError(f"--reference {ref} has {what} {theirs}, but {model} has {mine}: a reference must "
                                  "be the same model (its checkpoint)")
    recorded = a.extra.get("checkpoint_sha256")
    if not recorded or is_remote_url(ref) or Path(ref).suffix.lower() not in (".pt", ".pth"):
        return None
    same = sha256_file(ref) == recorded
    if not same:
        logger.warning("%s was exported from another checkpoint (sha256 %s...) than --reference %s", model,
                       recorded[:12], ref)
    return same


def build_clips(metadata, model: str, *, data: str, data_dir, split: str, frames: int, num_clips, seed: int,
                sampling: str, frame_stride: int):
    """The split to evaluate, framed and normalised as the model expects, with the model's classes.

    Raises:
        DataError: unusable data.
        EvaluationError: the data's classes differ from the model's (count or names), naming both.
    """
    from .data import DataSpec, build_dataset

    names = list(metadata.class_names)
    if data == "synthetic":
        if len(names) not in (2, 4):
            raise EvaluationError(f"{model} has {len(names)} classes {names}, but the synthetic data has 2 "
                                  f"{synthetic_class_names(2)} or 4 {synthetic_class_names(4)}")
        num_clips = 1024 if num_clips is None else num_clips  # only a missing count takes the default
    spec = DataSpec(name=data, data_dir=data_dir, frames=frames, frame_size=tuple(metadata.frame_size), seed=seed,
                    num_clips=num_clips, num_classes=len(names), mean=metadata.mean, std=metadata.std,
                    sampling=sampling, frame_stride=frame_stride)
    ds = build_dataset(spec, split)
    if list(ds.class_names) != names:
        raise EvaluationError(f"the {data} data has {len(ds.class_names)} classes {list(ds.class_names)}, but "
                              f"{model} has {len(names)} classes {names}")
    return ds


def resolve_modes(data: str, clips_per_video, shuffled, sampling) -> tuple[bool, str]:
    """(shuffled, sampling) of an evaluation, as given or defaulted.

    Raises:
        EvaluationError: ``clips_per_video`` with data other than videos, another sampling than "window", or
            ``shuffled``.
    """
    if not clips_per_video:
        return (True if shuffled is None else bool(shuffled)), sampling or "uniform"
    if data != "video":
        raise EvaluationError(f"--clips-per-video scores video files (--data video), not {data} clips")
    if sampling not in (None, "window"):
        raise EvaluationError(f"--clips-per-video takes windows of --frames consecutive frames (--sampling window), "
                              f"not --sampling {sampling}")
    if shuffled:
        raise EvaluationError("--shuffled evaluates single clips; it does not go with --clips-per-video")
    return False, "window"


def clip_batches(ds, batch_size: int, workers: int, shuffle_seed: Optional[int] = None):
    """Batches (frames, lengths, labels) in the data set's order; with ``shuffle_seed`` each clip's frames permuted
    in time (the temporal-order ablation)."""
    import torch
    from torch.utils.data import DataLoader

    from .clips import pad_collate
    from .loop import shuffle_within_clips

    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=pad_collate)
    if shuffle_seed is None:
        yield from loader
        return
    gen = torch.Generator().manual_seed(shuffle_seed)
    for frames, lengths, labels in loader:
        yield shuffle_within_clips(frames, lengths, gen), lengths, labels


def spread_starts(num_frames: int, frames: int, k: int) -> np.ndarray:
    """First frames of ``k`` evenly spaced windows of ``frames`` frames in a video of ``num_frames``: for ``k = 1``
    the centre window (the clip ``--sampling window`` takes), otherwise the first, the last and ``k - 2`` evenly
    between (rounded half up), so the windows cover the whole video. A video with fewer possible starts than ``k``
    gives each start once; one shorter than a window gives one short window."""
    span = max(int(num_frames) - int(frames), 0)
    if k == 1:
        return np.array([span // 2])
    i = np.arange(k)
    return np.unique((2 * i * span + k - 1) // (2 * (k - 1)))


def score_videos(runners, ds, k: int, frames: int, batch_size: int, progress=None) -> tuple[list[ClipOutputs], int]:
    """Every video of a video data set scored by ``k`` windows (:func:`spread_starts`), their probabilities
    averaged (:func:`runtime.evaluation.averaged_scores`), by each runner; each video is opened once.

    Returns:
        tuple: (one :class:`ClipOutputs` per runner, without frame logits; the number of windows run per runner).
    """
    from runtime.timeline import window_probabilities

    probs: list[list[np.ndarray]] = [[] for _ in runners]
    labels, windows = [], 0
    sizes = [min(batch_size, largest_batch(r) or batch_size) for r in runners]
    for path, label, n in ds.samples:
        starts = spread_starts(n, frames, k)
        with ds.open_video(path) as reader:
            for runner, size, out in zip(runners, sizes, probs, strict=True):
                out.append(window_probabilities(runner, reader, starts, frames, batch_size=size))
        labels.append(label)
        windows += len(starts)
        if progress is not None:
            progress(1)
    y = np.asarray(labels, np.int64)
    return [ClipOutputs(clip_logits=averaged_scores(p), labels=y) for p in probs], windows


class Progress:
    """Progress of a long evaluation: a tqdm bar on a terminal, else an INFO line every ``every`` batches.

    Args:
        total (int): items (clips or videos) to go through.
        what (str): their name ("clips", "videos").
        every (int): batches between log lines when there is no bar (0: none). Defaults to 10.
        bar (bool | None): force the bar on or off; None: on when stderr is a terminal. Defaults to None.
    """

    def __init__(self, total: int, what: str, every: int = 10, bar: Optional[bool] = None) -> None:
        self.total, self.what, self.every = int(total), what, int(every)
        self.done = self.batches = 0
        self.start = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc="evaluate", unit=what[:-1], leave=False, dynamic_ncols=True)

    def __call__(self, n: int) -> None:
        self.done += n
        self.batches += 1
        if self._bar is not None:
            self._bar.update(n)
        elif self.every and (self.batches % self.every == 0 or self.done >= self.total):
            logger.info("evaluated %d/%d %s (%.0f s)", self.done, self.total, self.what,
                        time.perf_counter() - self.start)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def check_finite(outputs: ClipOutputs, model: str, data: str) -> None:
    """Refuse NaN/Inf outputs: they still give an argmax, so accuracies alone would look plausible.

    Raises:
        EvaluationError: naming the model and the first such clip.
    """
    bad = ~np.isfinite(outputs.clip_logits).all(-1)
    if outputs.frame_logits is not None:
        bad |= ~np.isfinite(outputs.frame_logits).all((1, 2))
    if bad.any():
        raise EvaluationError(f"{model} gives non-finite outputs (NaN/Inf) on {int(bad.sum())} of {outputs.clips} "
                              f"clips of the {data} data, first clip {int(np.flatnonzero(bad)[0])}: its weights hold "
                              "NaN or Inf, or it overflows; use another model")

