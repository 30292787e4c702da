"""A batch cut to what a runner accepts: an engine's profiles and a served model's ``max_batch_size`` bound the clips
per call, and a caller with more clips than that (the command line's clips, a timeline's windows, a chunk of frames
for the CNN) runs them here in as many calls as it takes instead of failing.

Splitting along the batch axis is exact: every clip (and every frame in the cnn stage) is computed on its own. A
last piece smaller than a profile's minimum batch is padded with copies of its last clip, whose outputs are dropped.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .spec import InputSpec


def batch_limits(spec: InputSpec, time: int) -> Optional[tuple]:
    """(min, max) batch of the profile that takes the most clips of ``time`` steps (max None: unbounded), or None
    when no profile holds that time (``runner.infer`` then says so)."""
    fitting = [p.batch for p in spec.profiles if p.time[0] <= time and (p.time[1] is None or time <= p.time[1])]
    if not fitting:
        return None
    return max(fitting, key=lambda b: (b[1] is None, b[1] or 0))


def infer_batches(runner, x: np.ndarray, lengths: Any = None, *, check_finite: Optional[bool] = None) -> dict:
    """``runner.infer(x, lengths)`` over numpy ``x`` (B, T, ...) in pieces of a batch the runner accepts; the
    outputs of the pieces concatenated in order, as one call would return them.

    Args:
        runner (runtime.base.BaseRunner): any runner.
        x (np.ndarray): its input, (B, T, ...).
        lengths (array-like | None): (B,) real steps per clip, or None. Defaults to None.
        check_finite (bool | None): as for ``runner.infer``. Defaults to None.

    Returns:
        dict[str, np.ndarray]: every output of ``runner.infer``, B rows each.

    Raises:
        RuntimeInputError: what ``runner.infer`` raises for a piece (a time no profile holds, bad input).
    """
    b, t = int(x.shape[0]), int(x.shape[1])
    limits = batch_limits(runner.input_spec, t)
    if limits is None or (limits[0] <= b and (limits[1] is None or b <= limits[1])):
        return runner.infer(x, lengths, check_finite=check_finite)
    lo, hi = limits
    step = hi if hi is not None else b
    lengths = None if lengths is None else np.asarray(lengths).reshape(-1)
    pieces = []
    for start in range(0, b, step):
        xs = x[start:start + step]
        ls = None if lengths is None else lengths[start:start + step]
        real = len(xs)
        if real < lo and not any(p.contains(real, t) for p in runner.input_spec.profiles):
            extra = lo - real  # copies of the last clip, computed on their own and dropped
            xs = np.concatenate([xs, np.repeat(xs[-1:], extra, axis=0)])
            ls = None if ls is None else np.concatenate([ls, np.repeat(ls[-1:], extra)])
        out = runner.infer(xs, ls, check_finite=check_finite)
        pieces.append({k: np.asarray(v)[:real] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
