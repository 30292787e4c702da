"""A runner's input and options, checked the same way for every backend before a backend sees them.

:func:`check_input` turns ``x`` and ``lengths`` into a :class:`Feed` or raises a
:class:`~runtime.errors.RuntimeInputError` that says what would fit; ``check_device``, ``check_flag`` and
``check_count`` refuse option values no backend could mean.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import RuntimeInputError
from .spec import InputSpec


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


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch imported -> x cannot be a tensor
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


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


def pad_time(x: np.ndarray, t: int) -> np.ndarray:
    """``x`` (B, T', ...) with zeros after its own T' steps up to ``t`` (itself when T' == t); with the true lengths
    beside it, padding is exact in every backend."""
    if x.shape[1] == t:
        return x
    padded = np.zeros((x.shape[0], t) + x.shape[2:], x.dtype)
    padded[:, :x.shape[1]] = x
    return padded


def check_count(value, name: str, *, allow_none: bool = False) -> None:
    """Accept only an integer >= 1 (and None where the default is chosen later): no bools, floats or strings.

    Raises:
        RuntimeInputError: another value, naming the option.
    """
    if allow_none and value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RuntimeInputError(f"{name} must be an integer >= 1{' (or None)' if allow_none else ''}, got {value!r}")


def check_input(spec: InputSpec, x: Any, lengths: Any, check_finite: bool) -> Feed:
    """``x`` and ``lengths`` checked against ``spec``, as :meth:`runtime.base.BaseRunner.check_input` documents."""
    torch_input = is_torch(x)
    if not torch_input and not isinstance(x, np.ndarray):
        raise RuntimeInputError(f"{spec.input_name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    batch, time = _check_shape(spec, x)
    profile = spec.find_profile(batch, time)
    lengths_np = check_lengths(spec, lengths, batch, time)
    if torch_input:
        if not x.is_contiguous():
            x = x.contiguous()
    elif not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    check_flag(check_finite, "check_finite")
    if check_finite:
        refuse_non_finite(spec, x, lengths_np, torch_input)
    return Feed(x=x, lengths=lengths_np, batch=batch, time=time, profile=profile, is_torch=torch_input)


def _check_shape(spec: InputSpec, x: Any) -> tuple:
    """(B, T) of ``x`` after its dtype, rank and trailing shape are checked against ``spec``."""
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
    return batch, time


def refuse_non_finite(spec: InputSpec, x: Any, lengths: Optional[np.ndarray], torch_input: bool) -> None:
    """Raise when a real step of ``x`` (t < lengths[b]) holds NaN or Inf, naming the first such clip and step."""
    bad = _non_finite_steps(x, lengths, torch_input)
    if bad is None:
        return
    clips = np.flatnonzero(bad.any(axis=1))
    b = int(clips[0])
    t = int(np.flatnonzero(bad[b])[0])
    others = f" ({len(clips) - 1} more of the batch's {bad.shape[0]} clips do too)" if len(clips) > 1 else ""
    raise RuntimeInputError(f"{spec.input_name} of clip {b} hold NaN or Inf at step {t}, its first such "
                            f"real step{others}; every real step (t < lengths[b]) must be finite, padding may hold "
                            "anything. Fix the source of the values; check_finite=False skips this check for "
                            "callers that guarantee finite input")


def check_lengths(spec: InputSpec, lengths: Any, batch: int, time: int) -> Optional[np.ndarray]:
    """``lengths`` as a (B,) int32 array with values in 1..T, or None; refused for the cnn stage."""
    if lengths is None:
        return None
    if not spec.takes_lengths:
        raise RuntimeInputError("the cnn stage takes no lengths (frames are independent); pass lengths to the "
                                "bilstm or model stage")
    arr = to_numpy(lengths)
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


def _non_finite_steps(x: Any, lengths: Optional[np.ndarray], torch_input: bool) -> Optional[np.ndarray]:
    """(B, T) bool mask of the real steps that hold NaN/Inf, or None when there is none (the usual case).

    One pass over ``x``: a CUDA tensor is summed on its device (NaN and Inf survive a sum; an overflow to Inf only
    sends it to the exact per-step scan); numpy arrays and CPU tensors are scanned per step with ``np.isfinite``.
    """
    b, t = int(x.shape[0]), int(x.shape[1])
    if torch_input and x.is_cuda:
        import torch

        if bool(torch.isfinite(x.sum())):
            return None
        finite = torch.isfinite(x).reshape(b, t, -1).all(dim=2).cpu().numpy()
    else:
        xn = x.detach().numpy() if torch_input else x
        finite = np.isfinite(xn).reshape(b, t, -1).all(axis=2)
    if lengths is not None:
        finite |= np.arange(t)[None, :] >= lengths[:, None]  # padding may hold anything
    return None if finite.all() else ~finite
