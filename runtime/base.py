"""BaseRunner: one lifecycle and one input check for every backend (Polygraphy's runner pattern).

Subclasses implement ``activate_impl``, ``infer_impl`` and ``deactivate_impl``; users call ``activate``, ``infer``
and ``deactivate`` (or use the runner as a context manager). ``infer`` validates the input against the runner's
:class:`~runtime.spec.InputSpec` before a backend sees it, so every backend reports bad input the same way.

Input and output types: numpy in -> numpy out. torch tensors in -> torch tensors out, on the input's device (a
backend that cannot read a CUDA tensor in place copies it; one that can, does not).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import RuntimeInputError
from .inputs import Feed, check_flag, check_input, is_torch, to_numpy
from .spec import InputSpec, ModelMetadata

logger = logging.getLogger(__name__)


@dataclass
class Classification:
    """What :meth:`BaseRunner.classify` returns (top-k per clip and per frame).

    Attributes:
        labels (list[list[str]]): per clip, the top-k class names, best first.
        probs (np.ndarray): (B, k) softmax probabilities of those classes.
        indices (np.ndarray): (B, k) class indices.
        frame_labels (list[list[list[str]]]): per clip, per real frame (lengths[b] of them), the top-k names.
        frame_probs (np.ndarray): (B, T, k); rows beyond a clip's length carry no meaning.
        frame_indices (np.ndarray): (B, T, k).
    """

    labels: list
    probs: np.ndarray
    indices: np.ndarray
    frame_labels: list
    frame_probs: np.ndarray
    frame_indices: np.ndarray


class BaseRunner:
    """Common lifecycle, validation and conveniences of every runner.

    Attributes:
        backend_name (str): "tensorrt" | "onnxruntime" | "torch".
        metadata (ModelMetadata): class names, mean/std, frame size, precision, graph kind.
        input_spec (InputSpec): input name, trailing shape, dtype and allowed (batch, time) profiles.
        check_finite (bool): refuse NaN/Inf at the real steps of every call (see :meth:`check_input`); on unless
            the runner was made with ``check_finite=False``.

    Threading: ``infer`` may be called from several threads. Backends whose inference reuses state between calls
    (static buffers, CUDA graphs, one TensorRT execution context) set ``_serialize = True`` and calls then run one at
    a time under a per-runner lock; the others run concurrently. ``deactivate`` waits for the calls in flight and
    holds new ones back until it is done (they then activate the runner again), so it never frees what a running
    call uses.
    """

    backend_name = "base"
    _serialize = True

    def __init__(self, metadata: ModelMetadata, input_spec: InputSpec, *, check_finite: bool = True,
                 name: Optional[str] = None) -> None:
        check_flag(check_finite, "check_finite")
        self.metadata = metadata
        self.input_spec = input_spec
        self.check_finite = bool(check_finite)
        self.name = name or f"{self.backend_name}:{metadata.graph}"
        self.is_active = False
        self._lazily_activated = False  # by infer(), not by activate() or a with block
        self._lock = threading.Lock()
        self._activate_lock = threading.Lock()
        self._calls = threading.Condition()  # guards the two below
        self._in_flight = 0  # infer() calls between activation check and return
        self._closing = False  # deactivate() is waiting for them or releasing resources
        self._caller = threading.local()  # .depth: this thread's calls in flight (deactivate() inside one is refused)

    # --- lifecycle -----------------------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        """Which part of the model this runner serves: "model" | "cnn" | "bilstm"."""
        return self.metadata.graph

    def activate(self) -> "BaseRunner":
        """Acquire the backend's resources (session, engine context, device buffers). A no-op when active.

        Returns:
            BaseRunner: self.
        """
        self._activate(lazily=False)
        return self

    def _activate(self, *, lazily: bool) -> None:
        with self._activate_lock:
            if not self.is_active:
                self.activate_impl()
                self.is_active = True
                self._lazily_activated = lazily

    def deactivate(self) -> None:
        """Release the backend's resources. A no-op when not active. Waits for the calls in flight.

        Raises:
            RuntimeError: called from inside one of this runner's own calls (it would wait for itself).
        """
        if getattr(self._caller, "depth", 0):
            raise RuntimeError(f"{self.name}: deactivate() called from inside one of its own infer() calls, which it "
                               "would wait for forever; call it after the call returns")
        with self._activate_lock:
            try:
                with self._calls:
                    self._closing = True
                    self._calls.wait_for(lambda: self._in_flight == 0)
                if self.is_active:
                    self.deactivate_impl()
                else:
                    self.release_idle_impl()
            finally:  # also on KeyboardInterrupt during the wait: later calls must not stay blocked
                self.is_active = False
                with self._calls:
                    self._closing = False
                    self._calls.notify_all()

    def release_idle_impl(self) -> None:
        """Free what a runner that was never activated (or already deactivated) still holds; most hold nothing."""

    def _begin_call(self) -> None:
        """Count a call in flight, activating first if needed (after any deactivate() under way)."""
        while True:
            with self._calls:
                self._calls.wait_for(lambda: not self._closing)
                if self.is_active:
                    self._in_flight += 1
                    self._caller.depth = getattr(self._caller, "depth", 0) + 1
                    return
            logger.debug("%s: activating on first infer()", self.name)
            self._activate(lazily=True)  # then check again: a deactivate() may have come in between

    def _end_call(self) -> None:
        self._caller.depth -= 1
        with self._calls:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._calls.notify_all()

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def __del__(self) -> None:
        if getattr(self, "is_active", False):
            # Activated by its first infer() (documented, lazy use): releasing it now is expected. Activated
            # explicitly: the caller meant to deactivate it and did not.
            level = logging.DEBUG if getattr(self, "_lazily_activated", False) else logging.WARNING
            logger.log(level, "%s was activated but never deactivated; use it as a context manager or call "
                       "deactivate() to release its resources", getattr(self, "name", type(self).__name__))
            try:
                self.deactivate()
            except Exception:  # interpreter shutdown: modules may already be gone
                pass

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(stage={self.stage!r}, backend={self.backend_name!r}, "
                f"active={self.is_active})")

    # --- inference -----------------------------------------------------------------------------------------------
    def infer(self, x: Any, lengths: Any = None, *, check_finite: Optional[bool] = None) -> dict:
        """Run the model on a batch.

        Args:
            x (np.ndarray | torch.Tensor): float32 frames (B, T, 3, H, W) for the model and cnn stages, or features
                (B, T, F) for the bilstm stage.
            lengths (array-like | None): (B,) integers in 1..T, real frames per clip; None means all T. Defaults to
                None. Ignored by nothing: the cnn stage rejects it (frames are independent there).
            check_finite (bool | None): refuse NaN/Inf at the real steps of ``x`` (see :meth:`check_input`); None
                uses the runner's setting (on by default). Defaults to None.

        Returns:
            dict[str, np.ndarray | torch.Tensor]: "frame_logits" (B, T, C) and "clip_logits" (B, C), or "features"
            (B, T, F) for the cnn stage. numpy in -> numpy out; torch in -> torch out on the input's device.

        Raises:
            RuntimeInputError: the input does not fit :attr:`input_spec` (the message says what would).
        """
        check_flag(check_finite, "check_finite", allow_none=True)
        feed = self.check_input(x, lengths, check_finite=self.check_finite if check_finite is None else check_finite)
        self._begin_call()
        try:
            if self._serialize:
                with self._lock:
                    out = self.infer_impl(feed)
            else:
                out = self.infer_impl(feed)
        finally:
            self._end_call()
        return self._match_output_kind(out, x if feed.is_torch else None)

    def check_input(self, x: Any, lengths: Any = None, *, check_finite: bool = True) -> Feed:
        """Validate ``x`` and ``lengths`` against :attr:`input_spec` (what :meth:`infer` does first).

        Finite check (``check_finite``, on by default in every backend): NaN or Inf at a real step of a clip (step
        t < lengths[b], every step without lengths) is refused, naming the clip and its first such step; padding
        beyond lengths may hold anything. Its cost is one vectorised pass over ``x``: ``np.isfinite`` reduced per
        step for numpy arrays and CPU tensors (measured on the shared 2-core dev VM: 0.8 ms for a B=1, T=16 clip of
        224x224 frames, 0.02 ms at 32x32); one sum reduction on the device and one synchronisation for CUDA tensors (the
        per-step scan runs only when that sum is not finite).

        Returns:
            Feed: the input as backends take it (nothing reshaped or cast; non-contiguous inputs made contiguous).

        Raises:
            RuntimeInputError: wrong type, rank, trailing shape, dtype, batch/time outside the profiles, bad lengths,
                NaN/Inf when ``check_finite``.
        """
        return check_input(self.input_spec, x, lengths, check_finite)

    @staticmethod
    def _match_output_kind(out: dict, like: Any) -> dict:
        """numpy in -> numpy out; torch in -> torch out on the input's device."""
        result = {}
        for k, v in out.items():
            if like is None:
                result[k] = to_numpy(v)
            elif is_torch(v):
                result[k] = v if v.device == like.device else v.to(like.device)
            else:
                import torch

                result[k] = torch.from_numpy(np.asarray(v)).to(like.device)
        return result

    def classify(self, x: Any, lengths: Any = None, top_k: int = 1, *,
                 check_finite: Optional[bool] = None) -> Classification:
        """Labels and softmax probabilities of the top-k classes, per clip and per frame.

        Args:
            x (np.ndarray | torch.Tensor): as for :meth:`infer` (frames, or features for the bilstm stage).
            lengths (array-like | None): as for :meth:`infer`. Defaults to None.
            top_k (int): how many classes to return, 1..C. Defaults to 1.
            check_finite (bool | None): as for :meth:`infer`. Defaults to None (the runner's setting).

        Returns:
            Classification: see its attributes.

        Raises:
            RuntimeInputError: the cnn stage (it has no classes), top_k outside 1..C, or bad input.
        """
        if self.stage == "cnn":
            raise RuntimeInputError("classify needs a model or bilstm runner; the cnn stage outputs features only")
        c = self.metadata.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= c:
            raise RuntimeInputError(f"top_k must be an integer in 1..{c} (the number of classes), got {top_k!r}")
        out = self.infer(x, lengths, check_finite=check_finite)
        clip = to_numpy(out["clip_logits"]).astype(np.float64)
        frame = to_numpy(out["frame_logits"]).astype(np.float64)
        names = self.metadata.class_names
        probs, idx = _topk_softmax(clip, top_k)
        fprobs, fidx = _topk_softmax(frame, top_k)
        b, t = frame.shape[:2]
        lens = np.full(b, t) if lengths is None else to_numpy(lengths)
        return Classification(
            labels=[[names[i] for i in row] for row in idx],
            probs=probs.astype(np.float32),
            indices=idx,
            frame_labels=[[[names[i] for i in fidx[bi, ti]] for ti in range(int(lens[bi]))] for bi in range(b)],
            frame_probs=fprobs.astype(np.float32),
            frame_indices=fidx,
        )

    # --- for subclasses ------------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: Feed) -> dict:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed in float64 (float16 logits of an FP16 engine included)."""
    z = np.exp(np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _topk_softmax(logits: np.ndarray, k: int) -> tuple:
    p = softmax(logits).astype(logits.dtype, copy=False)  # the probabilities keep the logits' dtype
    idx = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(p, idx, axis=-1), idx
