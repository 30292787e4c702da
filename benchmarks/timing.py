"""Timing and statistics: latency samples from inside the timed call, interleaved rounds, paired speedups.

A contender is timed by a :class:`LatencyRecorder` *inside* the benchmarked call: CUDA events on the current stream
for PyTorch contenders (the end event is synchronised before the call returns, so pytest-benchmark's own wall clock
is honest too), ``time.perf_counter`` around a synchronous call for the others (ONNX Runtime returns host arrays;
TensorRT runners synchronise their own stream, and the recorder adds a device sync when asked). Inputs come from a
small pool of pre-generated random inputs (never zeros) that is cycled between calls, so no cache holds the answer.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from benchmarks.contenders import Prepared


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min and max of latency samples in milliseconds (linear interpolation)."""
    import numpy as np

    if len(samples_ms) == 0:
        raise ValueError("no latency samples to summarise")
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "max_ms": float(a.max()), "samples": int(a.size)}


class LatencyRecorder:
    """Times calls from inside the benchmarked call: CUDA events (device time) or ``perf_counter`` (host time).

    Args:
        timer (str): "cuda-events" or "perf-counter".
        sync (callable, optional): called after the work and before the clock stops with "perf-counter" (e.g.
            ``torch.cuda.synchronize`` for a contender that may return before its device work ends). Defaults to None.
    """

    def __init__(self, timer: str, sync: Optional[Callable[[], None]] = None) -> None:
        if timer not in ("cuda-events", "perf-counter"):
            raise ValueError(f"unknown timer {timer!r}; valid: cuda-events, perf-counter")
        self.timer = timer
        self.sync = sync
        self._host: list[float] = []
        self._events: list[tuple[Any, Any]] = []

    def __call__(self, fn: Callable[[Any], Any], x: Any) -> None:
        if self.timer == "cuda-events":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()  # the call does not return before the device is done
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            fn(x)
            if self.sync is not None:
                self.sync()
            self._host.append((time.perf_counter() - t0) * 1e3)

    def samples_ms(self) -> list[float]:
        """All recorded latencies in call order, milliseconds."""
        if self.timer == "cuda-events":
            return [s.elapsed_time(e) for s, e in self._events]
        return list(self._host)

    def reset(self) -> None:
        self._host.clear()
        self._events.clear()


def default_gap_s(device: str) -> float:
    """The untimed pause :func:`time_interleaved` takes before every call by default on ``device``: 0.1 s on a CPU
    (longer than thread pools spin after their work), none on CUDA (the host threads there do not compete)."""
    return 0.0 if str(device).startswith("cuda") else 0.1


def time_interleaved(prepared: dict[str, Prepared], rounds: int, *, warmup: int = 1, seed: int = 0,
                     gap_s: float = 0.0,
                     progress: Optional[Callable[[int, int], None]] = None) -> dict[str, list[float]]:
    """Time every contender once per round, in a fresh random order each round (paired samples).

    pytest-benchmark times one contender after another, so a noisy minute on a shared machine lands on one of them
    and the ratio of their medians swings with it. Interleaving exposes all contenders to the same phases; sample
    ``i`` of every contender comes from round ``i``, which :func:`paired_speedup` uses.

    Back-to-back calls are not independent on a CPU: thread pools busy-wait after their work (ONNX Runtime's
    intra-op threads, OpenMP's), and a contender started right after another one shares the cores with those
    spinning threads. On the 2-core CI VM this made eager PyTorch ~15% slower right after an ONNX Runtime call, which
    inflated ONNX Runtime's speedup from ~1.1x to ~1.3x. ``gap_s`` sleeps (untimed) before every call so that each
    one starts on quiet cores.

    Args:
        prepared (dict[str, Prepared]): contenders by name, ready for the same (workload, B, T).
        rounds (int): timed rounds (>= 1).
        warmup (int): untimed rounds first. Defaults to 1.
        seed (int): seed of the per-round order. Defaults to 0.
        gap_s (float): untimed sleep before every call, seconds (0.1 is plenty on a CPU). Defaults to 0.
        progress (callable, optional): called with (rounds done, rounds) after each round. Defaults to None.

    Returns:
        dict[str, list[float]]: latency samples in milliseconds per contender, in round order.

    Raises:
        ValueError: rounds < 1, warmup < 0, gap_s < 0 or no contenders.
    """
    import random

    if rounds < 1 or warmup < 0 or gap_s < 0:
        raise ValueError(f"need rounds >= 1, warmup >= 0 and gap_s >= 0, got rounds={rounds}, warmup={warmup}, "
                         f"gap_s={gap_s}")
    if not prepared:
        raise ValueError("no contenders to time")
    recorders = {name: LatencyRecorder(p.timer, p.sync) for name, p in prepared.items()}
    inputs = {name: cycle(p.inputs) for name, p in prepared.items()}
    order = list(prepared)
    rng = random.Random(seed)
    for _ in range(warmup):
        for name in order:
            recorders[name](prepared[name].fn, next(inputs[name]))
    for rec in recorders.values():
        rec.reset()
    for done in range(1, rounds + 1):
        rng.shuffle(order)
        for name in order:
            if gap_s:
                time.sleep(gap_s)
            recorders[name](prepared[name].fn, next(inputs[name]))
        if progress is not None:
            progress(done, rounds)
    return {name: rec.samples_ms() for name, rec in recorders.items()}


def paired_speedup(baseline_ms: Sequence[float], contender_ms: Sequence[float], *, resamples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Speedup of a contender over the baseline from paired samples: the median of per-round ratios.

    Args:
        baseline_ms (Sequence[float]): baseline latencies, one per round.
        contender_ms (Sequence[float]): the contender's latencies of the same rounds.
        resamples (int): bootstrap resamples for the 95% interval of that median. Defaults to 2000.
        seed (int): bootstrap seed. Defaults to 0.

    Returns:
        dict: ``median`` (baseline/contender, > 1 means faster), ``ci95`` (low, high), ``per_round`` ratios,
        ``faster_rounds`` (fraction of rounds where the contender was faster).

    Raises:
        ValueError: different numbers of samples, none, or a non-positive latency.
    """
    import numpy as np

    base = np.asarray(baseline_ms, dtype=np.float64)
    other = np.asarray(contender_ms, dtype=np.float64)
    if base.shape != other.shape or base.ndim != 1 or base.size == 0:
        raise ValueError(f"paired samples need two equally long non-empty series, got {base.shape} and {other.shape}")
    if (base <= 0).any() or (other <= 0).any():
        raise ValueError("latencies must be positive")
    ratios = base / other
    rng = np.random.default_rng(seed)
    boot = np.median(ratios[rng.integers(0, ratios.size, size=(resamples, ratios.size))], axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"median": float(np.median(ratios)), "ci95": (float(low), float(high)),
            "per_round": [float(r) for r in ratios], "faster_rounds": float((ratios > 1).mean())}


def cycle(pool: Sequence[Any]):
    """Endless iterator over an input pool, starting after the first element (used by the correctness probe)."""
    it = itertools.cycle(pool)
    next(it)
    return it
