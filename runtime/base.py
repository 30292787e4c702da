"""BaseRunner: one lifecycle and one input check for every backend (Polygraphy's runner pattern).

Subclasses implement ``activate_impl``, ``infer_impl`` and ``deactivate_impl``; users call ``activate``, ``infer``
and ``deactivate`` (or use the runner as a context manager). ``infer`` validates the input against the runner's
:class:`~runtime.spec.InputSpec` before a backend sees it, so every backend reports bad input the same way.

Input and output types: numpy in -> numpy out. torch tensors in -> torch tensors out, on the input's device (a
backend that cannot read a CUDA tensor in place copies it; one that can, does not).
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import RuntimeInputError
from .spec import InputSpec, ModelMetadata

logger = logging.getLogger(__name__)


@dataclass
class Feed:
    """A validated input as a backend receives it.

    Attributes:
        x: float32 C-contiguous np.ndarray, or a float32 contiguous torch tensor (CPU or CUDA).
        lengths: (B,) int32 np.ndarray with values in 1..T, or None (every clip has T frames).
        batch (int): B.
        time (int): T.
        profile (int): index of the input spec profile that holds (B, T).
        is_torch (bool): whether ``x`` is a torch tensor.
    """

    x: Any
    lengths: Optional[np.ndarray]
    batch: int
    time: int
    profile: int
    is_torch: bool

    def lengths_or_full(self) -> np.ndarray:
        """``lengths``, or T for every clip when None (for graphs whose ``lengths`` input is required)."""
        if self.lengths is not None:
            return self.lengths
        return np.full((self.batch,), self.time, dtype=np.int32)


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


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch imported -> x cannot be a tensor
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def check_device(device) -> None:
    """Accept None, "cpu", "cuda", "cuda:N", an int N (a CUDA index) or a torch.device; anything else is an error.

    Raises:
        RuntimeInputError: another value (``"gpu"``, ``"cuda:x"``, ``-1``), naming the valid forms.
    """
    if device is None or (isinstance(device, int) and not isinstance(device, bool) and device >= 0):
        return
    if type(device).__name__ == "device" and hasattr(device, "type"):  # torch.device, without importing torch
        device = str(device)
    if isinstance(device, str):
        kind, sep, index = device.partition(":")
        if (kind == "cpu" and not sep) or (kind == "cuda" and (not sep or index.isdigit())):
            return
    raise RuntimeInputError(f"device must be 'cpu', 'cuda', 'cuda:N', a CUDA index N >= 0 or None (the backend's "
                            f"default), got {device!r}")


def check_flag(value, name: str, *, allow_none: bool = False) -> None:
    """Accept only True or False (and None where the default is chosen later): no truthy strings or numbers.

    Raises:
        RuntimeInputError: another value, naming the option.
    """
    if isinstance(value, (bool, np.bool_)) or (allow_none and value is None):
        return
    valid = "True, False or None" if allow_none else "True or False"
    raise RuntimeInputError(f"{name} must be {valid}, got {value!r}")


def check_count(value, name: str, *, allow_none: bool = False) -> None:
    """Accept only an integer >= 1 (and None where the default is chosen later): no bools, floats or strings.

    Raises:
        RuntimeInputError: another value, naming the option.
    """
    if allow_none and value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RuntimeInputError(f"{name} must be an integer >= 1{' (or None)' if allow_none else ''}, got {value!r}")


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
        spec = self.input_spec
        is_torch = _is_torch(x)
        if not is_torch and not isinstance(x, np.ndarray):
            raise RuntimeInputError(f"{spec.input_name} must be a numpy array or a torch tensor, got {type(x).__name__}")
        shape = tuple(x.shape)
        want = "(B, T, " + ", ".join(str(s) for s in spec.item_shape) + ")"
        dtype = str(x.dtype).replace("torch.", "")
        if dtype != spec.dtype:
            hint = ""
            if dtype == "uint8" and spec.input_name == "frames":
                hint = "; uint8 decoder frames (T, H, W, 3) go through runtime.preprocess_frames first"
            elif dtype in ("float64", "float16", "bfloat16"):
                hint = "; convert it explicitly (x.astype(np.float32) or x.float())"
            raise RuntimeInputError(f"{spec.input_name} must be {spec.dtype}, got {dtype}{hint}")
        if len(shape) != 2 + len(spec.item_shape):
            hint = ""
            if len(shape) == 1 + len(spec.item_shape) and shape[1:] == tuple(spec.item_shape):
                hint = "; for a single clip add the batch axis (x[None])"
            if spec.input_name == "frames" and shape and shape[-1] == 3:
                hint = "; frames look channels-last (H, W, 3): use runtime.preprocess_frames"
            raise RuntimeInputError(f"{spec.input_name} must have {2 + len(spec.item_shape)} dims {want}, "
                                    f"got {len(shape)} dims {shape}{hint}")
        if shape[2:] != tuple(spec.item_shape):
            if spec.input_name == "frames":
                if shape[2] != 3:
                    msg = f"frames must have 3 channels at axis 2 {want}, got shape {shape}"
                    if shape[-1] == 3:
                        msg += "; channels-last frames go through runtime.preprocess_frames"
                else:
                    msg = (f"frames are {shape[3]}x{shape[4]} (H x W) but this model takes {spec.item_shape[1]}x"
                           f"{spec.item_shape[2]}; resize in the decoder or use preprocess_frames(..., resize=True)")
            else:
                msg = f"features must be {want} (F = {spec.item_shape[0]}), got shape {shape}"
            raise RuntimeInputError(msg)
        batch, time = int(shape[0]), int(shape[1])
        if batch < 1 or time < 1:
            raise RuntimeInputError(f"{spec.input_name} must hold at least one clip and one frame, got shape {shape}")
        profile = spec.find_profile(batch, time)
        lengths_np = self._check_lengths(lengths, batch, time)
        if is_torch:
            if not x.is_contiguous():
                x = x.contiguous()
        elif not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        check_flag(check_finite, "check_finite")
        if check_finite:
            self._check_finite(x, lengths_np, is_torch)
        return Feed(x=x, lengths=lengths_np, batch=batch, time=time, profile=profile, is_torch=is_torch)

    def _check_finite(self, x: Any, lengths: Optional[np.ndarray], is_torch: bool) -> None:
        bad = _non_finite_steps(x, lengths, is_torch)
        if bad is None:
            return
        clips = np.flatnonzero(bad.any(axis=1))
        b = int(clips[0])
        t = int(np.flatnonzero(bad[b])[0])
        others = f" ({len(clips) - 1} more of the batch's {bad.shape[0]} clips do too)" if len(clips) > 1 else ""
        raise RuntimeInputError(f"{self.input_spec.input_name} of clip {b} hold NaN or Inf at step {t}, its first such "
                                f"real step{others}; every real step (t < lengths[b]) must be finite, padding may hold "
                                "anything. Fix the source of the values; check_finite=False skips this check for "
                                "callers that guarantee finite input")

    def _check_lengths(self, lengths: Any, batch: int, time: int) -> Optional[np.ndarray]:
        if lengths is None:
            return None
        if not self.input_spec.takes_lengths:
            raise RuntimeInputError("the cnn stage takes no lengths (frames are independent); pass lengths to the "
                                    "bilstm or model stage")
        arr = _to_numpy(lengths)
        if arr.shape != (batch,) and arr.size == 0:  # an empty list is float64 to numpy: say what is missing
            raise RuntimeInputError(f"lengths must have shape ({batch},), one per clip of the batch, got an empty "
                                    f"{arr.shape} array")
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise RuntimeInputError(f"lengths must be integers (frames per clip, 1..T={time}), got dtype {arr.dtype}")
        if arr.shape != (batch,):
            raise RuntimeInputError(f"lengths must have shape ({batch},), one per clip of the batch, got shape "
                                    f"{arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 1 or hi > time:
            raise RuntimeInputError(f"lengths must lie in 1..T={time} (the input's time axis), got min {lo} and max "
                                    f"{hi}; pad the clips to the longest one instead of truncating them")
        return np.ascontiguousarray(arr, dtype=np.int32)

    @staticmethod
    def _match_output_kind(out: dict, like: Any) -> dict:
        """numpy in -> numpy out; torch in -> torch out on the input's device."""
        result = {}
        for k, v in out.items():
            if like is None:
                result[k] = _to_numpy(v)
            elif _is_torch(v):
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
        clip = _to_numpy(out["clip_logits"]).astype(np.float64)
        frame = _to_numpy(out["frame_logits"]).astype(np.float64)
        names = self.metadata.class_names
        probs, idx = _topk_softmax(clip, top_k)
        fprobs, fidx = _topk_softmax(frame, top_k)
        b, t = frame.shape[:2]
        lens = np.full(b, t) if lengths is None else _to_numpy(lengths)
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


def _non_finite_steps(x: Any, lengths: Optional[np.ndarray], is_torch: bool) -> Optional[np.ndarray]:
    """(B, T) bool mask of the real steps that hold NaN/Inf, or None when there is none (the usual case).

    One pass over ``x``: a CUDA tensor is summed on its device (NaN and Inf survive a sum; an overflow to Inf only
    sends it to the exact per-step scan); numpy arrays and CPU tensors are scanned per step with ``np.isfinite``.
    """
    b, t = int(x.shape[0]), int(x.shape[1])
    if is_torch and x.is_cuda:
        import torch

        if bool(torch.isfinite(x.sum())):
            return None
        finite = torch.isfinite(x).reshape(b, t, -1).all(dim=2).cpu().numpy()
    else:
        xn = x.detach().numpy() if is_torch else x
        finite = np.isfinite(xn).reshape(b, t, -1).all(axis=2)
    if lengths is not None:
        finite |= np.arange(t)[None, :] >= lengths[:, None]  # padding may hold anything
    return None if finite.all() else ~finite


def _topk_softmax(logits: np.ndarray, k: int) -> tuple:
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(p, idx, axis=-1), idx
