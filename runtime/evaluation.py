"""The one evaluation core: run runners over labelled clips, keep their logits, and score them (accuracy, confusion)
and compare them (top-1 agreement, largest logit difference, relative error).

numpy only, so every caller may use it: ``python -m train.evaluate`` (any model ``runtime.load`` opens),
``export.quantize``'s int8 agreement gate, the demo's runtime table and the benchmarks' closeness check.

A runner here is anything with ``infer(x, lengths) -> {"frame_logits": (B, T, C), "clip_logits": (B, C)}`` (every
:class:`runtime.base.BaseRunner` of a whole model); when it has an ``input_spec``, batches are split to fit its largest
batch (a served model takes ``max_batch_size`` clips per request, an engine what its profiles allow).

    outputs, reference = collect_logits([runner, checkpoint_runner], batches)   # batches of (frames, lengths, labels)
    scores = accuracy(outputs)          # clip_acc, frame_acc, per_class_acc, confusion
    gate = agreement(outputs, reference)  # clip/frame agreement, max_abs_dlogit, differing_clips
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .errors import RuntimeInputError
from .inputs import to_numpy


@dataclass
class ClipOutputs:
    """One model's outputs over an evaluation set, in the order the clips came.

    Attributes:
        clip_logits (np.ndarray): (N, C) float32 scores per clip (with several windows per video: the log of their
            averaged probabilities, whose softmax is that average).
        frame_logits (np.ndarray | None): (N, T, C) float32 per-frame scores, zero beyond each clip's length; None
            where there are none (scores averaged over windows).
        lengths (np.ndarray | None): (N,) real frames per clip (with ``frame_logits``).
        labels (np.ndarray | None): (N,) true class indices, None when the clips came without labels.
    """

    clip_logits: np.ndarray
    frame_logits: Optional[np.ndarray] = None
    lengths: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None

    @property
    def clips(self) -> int:
        return int(len(self.clip_logits))


def largest_batch(runner) -> Optional[int]:
    """The most clips ``runner`` takes in one call (the largest batch of its profiles), or None for no limit."""
    spec = getattr(runner, "input_spec", None)
    if spec is None:
        return None
    highs = [p.batch[1] for p in spec.profiles]
    return None if any(h is None for h in highs) else int(max(highs))


def collect_logits(runners: Sequence, batches: Iterable, *, on_batch: Optional[Callable[[int], None]] = None,
                   ) -> list[ClipOutputs]:
    """Run every runner over the same batches (each batch read once) and keep all their logits.

    Args:
        runners (Sequence): runners (see the module docstring), all taking the same input.
        batches (Iterable): ``(frames (B, T, 3, H, W), lengths (B,) or None, labels (B,) or None)`` as numpy arrays
            or CPU torch tensors; T may differ between batches.
        on_batch (Callable[[int], None] | None): called with the clip count of each batch once every runner ran it
            (progress). Defaults to None.

    Returns:
        list[ClipOutputs]: one per runner, in the order of ``runners``.

    Raises:
        RuntimeInputError: a batch that is not (frames, lengths, labels), or input a runner refuses.
    """
    limits = [largest_batch(r) for r in runners]
    parts: list[list[dict]] = [[] for _ in runners]
    lengths_all, labels_all = [], []
    for item in batches:
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise RuntimeInputError("each batch must be (frames, lengths, labels); lengths and labels may be None")
        x, lengths, labels = item
        x = np.ascontiguousarray(to_numpy(x), dtype=np.float32)
        b, t = x.shape[:2]
        lengths = np.full(b, t, np.int32) if lengths is None else to_numpy(lengths).astype(np.int32)
        for runner, limit, out in zip(runners, limits, parts, strict=True):
            step = b if limit is None else limit
            for i in range(0, b, step):
                got = runner.infer(x[i:i + step], lengths[i:i + step])
                out.append({k: np.asarray(to_numpy(got[k]), np.float32) for k in ("frame_logits", "clip_logits")})
        lengths_all.append(lengths)
        labels_all.append(None if labels is None else to_numpy(labels).astype(np.int64).reshape(b))
        if on_batch is not None:
            on_batch(b)
    lengths = np.concatenate(lengths_all) if lengths_all else np.zeros(0, np.int32)
    labels = None if not labels_all or any(y is None for y in labels_all) else np.concatenate(labels_all)
    return [ClipOutputs(clip_logits=_stack_clips(p), frame_logits=_stack_frames(p, lengths), lengths=lengths,
                        labels=labels) for p in parts]


def _stack_clips(parts: list[dict]) -> np.ndarray:
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate([p["clip_logits"] for p in parts])


def _stack_frames(parts: list[dict], lengths: np.ndarray) -> np.ndarray:
    """Per-frame logits of every batch in one (N, max T, C) array, zero beyond each clip's length."""
    if not parts:
        return np.zeros((0, 0, 0), np.float32)
    t = max(p["frame_logits"].shape[1] for p in parts)
    c = parts[0]["frame_logits"].shape[2]
    out = np.zeros((len(lengths), t, c), np.float32)
    row = 0
    for p in parts:
        f = p["frame_logits"]
        out[row:row + len(f), :f.shape[1]] = f
        row += len(f)
    out[np.arange(t)[None, :] >= lengths[:, None]] = 0.0  # padded steps carry no meaning: keep them out of scores
    return out


def _real_steps(outputs: ClipOutputs) -> np.ndarray:
    """(N, T) mask of the real frames."""
    t = outputs.frame_logits.shape[1]
    return np.arange(t)[None, :] < outputs.lengths[:, None]


def accuracy(outputs: ClipOutputs, num_classes: Optional[int] = None) -> dict:
    """Clip and frame top-1 accuracy, per-class clip accuracy and the confusion matrix.

    Args:
        outputs (ClipOutputs): with ``labels``.
        num_classes (int | None): C; None takes it from the logits. Defaults to None.

    Returns:
        dict: ``clips``, ``clip_acc``, ``frame_acc`` (None without frame logits: frames are every real step, each
        carrying its clip's label), ``per_class_acc`` (list, NaN for a class with no clip), ``confusion`` (C x C
        list, rows = true class, columns = predicted), ``loss`` (mean clip cross-entropy plus the per-clip sum of
        frame cross-entropies over real steps, as training's loss with frame weight 1; None when not finite).

    Raises:
        RuntimeInputError: no labels, or a label outside 0..C-1.
    """
    if outputs.labels is None:
        raise RuntimeInputError("accuracy needs the clips' labels")
    c = int(num_classes or outputs.clip_logits.shape[1])
    y = outputs.labels
    if y.size and (y.min() < 0 or y.max() >= c):
        raise RuntimeInputError(f"labels must be class indices in 0..{c - 1}, got {int(y.min())}..{int(y.max())}")
    pred = outputs.clip_logits.argmax(-1) if outputs.clips else np.zeros(0, np.int64)
    confusion = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    totals = confusion.sum(1)
    loss = _cross_entropy(outputs.clip_logits, y).mean() if outputs.clips else float("nan")
    frame_acc = None
    if outputs.frame_logits is not None:
        mask = _real_steps(outputs)
        hits = (outputs.frame_logits.argmax(-1) == y[:, None]) & mask
        frame_acc = float(hits.sum() / max(int(mask.sum()), 1))
        per_step = _cross_entropy(outputs.frame_logits, np.broadcast_to(y[:, None], mask.shape))
        loss = loss + float((per_step * mask).sum() / max(outputs.clips, 1))
    return {
        "clips": outputs.clips,
        "clip_acc": float(np.trace(confusion) / max(outputs.clips, 1)),
        "frame_acc": frame_acc,
        "per_class_acc": [float(confusion[i, i] / totals[i]) if totals[i] else float("nan") for i in range(c)],
        "confusion": confusion.tolist(),
        "loss": float(loss) if np.isfinite(loss) else None,
    }


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]


def agreement(outputs: ClipOutputs, reference: ClipOutputs) -> dict:
    """How closely ``outputs`` follow ``reference`` on the same clips: the numbers a deployment is gated on.

    Returns:
        dict: ``clips``; ``clip_agreement`` and ``frame_agreement`` (top-1 agreement of clips and of real frames;
        the latter None without frame logits); ``max_abs_dlogit`` (largest |clip logit difference|) and
        ``max_abs_dframe_logit`` (over real frames, or None); ``clip_logits_rel`` and ``frame_logits_rel`` (norm-
        relative errors, :func:`compare`); ``differing_clips`` (indices of the clips whose top-1 class differs);
        ``finite`` (whether ``outputs`` hold no NaN/Inf).

    Raises:
        RuntimeInputError: the two cover different clips (count, lengths) or classes.
    """
    if outputs.clip_logits.shape != reference.clip_logits.shape:
        raise RuntimeInputError(f"cannot compare outputs of {outputs.clip_logits.shape} (clips, classes) with a "
                                f"reference of {reference.clip_logits.shape}: evaluate both on the same clips")
    top, ref_top = outputs.clip_logits.argmax(-1), reference.clip_logits.argmax(-1)
    clip = compare(outputs.clip_logits, reference.clip_logits)
    result = {
        "clips": outputs.clips,
        "clip_agreement": float((top == ref_top).mean()) if outputs.clips else float("nan"),
        "frame_agreement": None, "max_abs_dlogit": clip["max_abs"], "max_abs_dframe_logit": None,
        "clip_logits_rel": clip["rel"], "frame_logits_rel": None,
        "differing_clips": np.flatnonzero(top != ref_top).tolist(),
        "finite": bool(np.isfinite(outputs.clip_logits).all()),
    }
    if outputs.frame_logits is not None and reference.frame_logits is not None:
        if not np.array_equal(outputs.lengths, reference.lengths):
            raise RuntimeInputError("cannot compare frame outputs of clips of other lengths than the reference's")
        mask = _real_steps(outputs)
        t = min(outputs.frame_logits.shape[1], reference.frame_logits.shape[1])
        got, ref = outputs.frame_logits[:, :t][mask[:, :t]], reference.frame_logits[:, :t][mask[:, :t]]
        frame = compare(got, ref)
        result.update(frame_agreement=float((got.argmax(-1) == ref.argmax(-1)).mean()) if len(got) else float("nan"),
                      max_abs_dframe_logit=frame["max_abs"], frame_logits_rel=frame["rel"],
                      finite=result["finite"] and bool(np.isfinite(got).all()))
    return result


def compare(got, ref) -> dict:
    """``{"max_abs", "rel"}``: largest absolute difference and ``||got - ref|| / ||ref||`` (float64; both inf when
    ``got`` holds NaN/Inf, or when the shapes differ, with ``shape`` and ``ref_shape`` added)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return {"max_abs": float("inf"), "rel": float("inf"), "shape": list(got.shape), "ref_shape": list(ref.shape)}
    if got.size == 0:
        return {"max_abs": 0.0, "rel": 0.0}
    diff = got - ref
    denom = float(np.linalg.norm(ref)) or 1.0
    finite = bool(np.isfinite(got).all())
    return {
        "max_abs": float(np.abs(diff).max()) if finite else float("inf"),
        "rel": float(np.linalg.norm(diff)) / denom if finite else float("inf"),
    }


def averaged_scores(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Clip scores of videos scored by several windows each: log of each video's mean window probabilities.

    Args:
        probabilities (Sequence[np.ndarray]): per video, (windows, C) class probabilities.

    Returns:
        np.ndarray: (videos, C) float32 log-probabilities (their softmax is the average; argmax is its top class).
    """
    mean = np.stack([np.asarray(p, np.float64).mean(0) for p in probabilities])
    # A probability that underflowed to 0 scores log(float32 tiny) = -87.3, not -inf: differences stay finite.
    return np.log(np.maximum(mean, np.finfo(np.float32).tiny)).astype(np.float32)
