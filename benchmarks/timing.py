"""Timing and statistics: latency samples from inside the timed call, the interleaved-rounds loop every CLI times
with, paired speedups.

A contender is timed by a :class:`LatencyRecorder` *inside* the benchmarked call: CUDA events on the current stream
for PyTorch contenders (the end event is synchronised before the call returns, so pytest-benchmark's own wall clock
is honest too), ``time.perf_counter`` around a synchronous call for the others (ONNX Runtime returns host arrays;
TensorRT runners synchronise their own stream, and the recorder adds a device sync when asked). Inputs come from a
small pool of pre-generated random inputs (never zeros) that is cycled between calls, so no cache holds the answer.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from benchmarks.environment import load_average


def tty_progress(done: int, total: int) -> None:
    """``progress`` for :func:`time_interleaved`: the round counter on stderr, where it is a terminal."""
    if sys.stderr.isatty():
        print(f"\r  round {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


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

    def __call__(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """``fn(x)``, timed; returns what it returned."""
        if self.timer == "cuda-events":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(x)
            end.record()
            end.synchronize()  # the call does not return before the device is done
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = fn(x)
        if self.sync is not None:
            self.sync()
        self._host.append((time.perf_counter() - t0) * 1e3)
        return out

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


@dataclass(kw_only=True)
class Task:
    """One thing :func:`time_interleaved` calls once per round.

    Attributes:
        fn (callable): the timed call, taking one element of ``inputs``.
        inputs (Sequence): the rotating input pool (already in the form ``fn`` wants). Defaults to ``(None,)``.
        timer (str): how :class:`LatencyRecorder` times it, "perf-counter" or "cuda-events". Defaults to
            "perf-counter".
        sync (callable, optional): device sync before the "perf-counter" clock stops. Defaults to None.
    """

    fn: Callable[[Any], Any]
    inputs: Sequence[Any] = (None,)
    timer: str = "perf-counter"
    sync: Optional[Callable[[], None]] = None


@dataclass
class Rounds:
    """What :func:`time_interleaved` measured, per task name, in round order (warm-up rounds left out).

    Attributes:
        wall_ms (dict[str, list[float]]): latency of each call (the task's timer).
        cpu_ms (dict[str, list[float]]): this process's CPU time (all its threads) over each call; empty lists unless
            asked for.
        results (dict[str, list]): what each call returned; empty lists unless asked for.
        load_before (list[float] | None): the 1, 5 and 15-minute load averages before the first round.
        load_after (list[float] | None): the same after the last round.
    """

    wall_ms: dict[str, list[float]]
    cpu_ms: dict[str, list[float]]
    results: dict[str, list[Any]]
    load_before: Optional[list[float]]
    load_after: Optional[list[float]]


def time_interleaved(tasks: dict[str, Task], rounds: int, *, warmup: int = 1, seed: int = 0, gap_s: float = 0.0,
                     cpu_time: bool = False, keep_results: bool = False,
                     progress: Optional[Callable[[int, int], None]] = None) -> Rounds:
    """Call every task once per round, in a fresh random order each round (paired samples): the one timing loop of
    the suite's CLIs.

    Timing contenders one after another, a noisy minute on a shared machine lands on one of them and the ratio of
    their medians swings with it. Interleaving exposes all tasks to the same phases; sample ``i`` of every task
    comes from round ``i``, which :func:`paired_speedup` uses.

    Back-to-back calls are not independent on a CPU: thread pools busy-wait after their work (ONNX Runtime's
    intra-op threads, OpenMP's), and a call started right after another one shares the cores with those spinning
    threads. On the 2-core CI VM this made eager PyTorch ~15% slower right after an ONNX Runtime call, which
    inflated ONNX Runtime's speedup from ~1.1x to ~1.3x. ``gap_s`` sleeps (untimed) before every call so that each
    one starts on quiet cores.

    Args:
        tasks (dict[str, Task]): by name (a :class:`benchmarks.context.Prepared` contender is a Task).
        rounds (int): timed rounds (>= 1).
        warmup (int): untimed rounds first. Defaults to 1.
        seed (int): seed of the per-round order. Defaults to 0.
        gap_s (float): untimed sleep before every call, seconds (0.1 is plenty on a CPU). Defaults to 0.
        cpu_time (bool): also record this process's CPU time over each call (less sensitive than wall time to
            other processes on a shared machine). Defaults to False.
        keep_results (bool): keep what each timed call returned. Defaults to False.
        progress (callable, optional): called with (rounds done, rounds) after each round. Defaults to None.

    Returns:
        Rounds: the samples, in round order.

    Raises:
        ValueError: rounds < 1, warmup < 0, gap_s < 0 or no tasks.
    """
    import random

    if rounds < 1 or warmup < 0 or gap_s < 0:
        raise ValueError(f"need rounds >= 1, warmup >= 0 and gap_s >= 0, got rounds={rounds}, warmup={warmup}, "
                         f"gap_s={gap_s}")
    if not tasks:
        raise ValueError("no contenders to time")
    recorders = {name: LatencyRecorder(t.timer, t.sync) for name, t in tasks.items()}
    inputs = {name: cycle(t.inputs) for name, t in tasks.items()}
    order, rng = list(tasks), random.Random(seed)
    for _ in range(warmup):
        for name in order:
            recorders[name](tasks[name].fn, next(inputs[name]))
    for rec in recorders.values():
        rec.reset()
    cpu: dict[str, list[float]] = {name: [] for name in tasks}
    results: dict[str, list[Any]] = {name: [] for name in tasks}
    load_before = load_average()
    for done in range(1, rounds + 1):
        rng.shuffle(order)
        for name in order:
            if gap_s:
                time.sleep(gap_s)
            c0 = time.process_time()
            out = recorders[name](tasks[name].fn, next(inputs[name]))
            if cpu_time:
                cpu[name].append((time.process_time() - c0) * 1e3)
            if keep_results:
                results[name].append(out)
        if progress is not None:
            progress(done, rounds)
    return Rounds({name: rec.samples_ms() for name, rec in recorders.items()}, cpu, results, load_before,
                  load_average())


def closed_loop(clients: Sequence[Callable], requests: Sequence, *, duration_s: float,
                max_requests: Optional[int] = None) -> dict:
    """A closed-loop load run: ``len(clients)`` threads, each calling ``client(*request)`` back to back with its own
    client until ``duration_s`` has passed or ``max_requests`` requests have started in all; ``request[1]`` holds one
    entry per clip. A thread stops at its first failed request (a server that is down is not hammered); the failures
    are counted and the first kept.

    Returns:
        dict: ``requests`` (completed), ``clips``, ``errors``, ``first_error``, ``elapsed_s``, ``requests_per_s``,
        ``clips_per_s``, ``latency_ms`` (every completed request) and, with one completed, :func:`percentiles`.

    Raises:
        ValueError: no clients or requests, ``duration_s`` <= 0 or ``max_requests`` < 1.
    """
    if not clients or not requests or duration_s <= 0 or (max_requests is not None and max_requests < 1):
        raise ValueError(f"need clients, requests, duration_s > 0 and max_requests >= 1 (or None), got "
                         f"{len(clients)} clients, {len(requests)} requests, {duration_s}, {max_requests}")
    n = len(clients)
    budget = iter(range(max_requests)) if max_requests else itertools.count()  # next() is atomic under the GIL
    latencies: list[list] = [[] for _ in range(n)]
    clips, errors, start = [0] * n, [], threading.Barrier(n + 1)

    def worker(i: int) -> None:
        k = (i * len(requests)) // n  # threads start at different places in the pool
        start.wait()
        while time.perf_counter() < deadline and next(budget, None) is not None:
            frames, lengths = requests[k % len(requests)]
            k, t0 = k + 1, time.perf_counter()
            try:
                clients[i](frames, lengths)
            except Exception as e:  # recorded, the run reports it
                errors.append(f"{type(e).__name__}: {e}")
                return
            latencies[i].append((time.perf_counter() - t0) * 1e3)
            clips[i] += len(lengths)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline = t_start + duration_s
    start.wait()
    for t in threads:
        t.join()
    elapsed, done = time.perf_counter() - t_start, [x for lat in latencies for x in lat]
    return {"requests": len(done), "clips": sum(clips), "errors": len(errors),
            "first_error": errors[0] if errors else None, "elapsed_s": elapsed, "requests_per_s": len(done) / elapsed,
            "clips_per_s": sum(clips) / elapsed, **(percentiles(done) if done else {}), "latency_ms": done}


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
