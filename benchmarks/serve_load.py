"""Load benchmark of a served model: requests/s, clips/s and p50/p90/p99 latency per concurrency.

    python -m benchmarks.serve_load URL [--concurrency 1,4,16] [--duration 5] [--rounds 3] [--out DIR]
    python -m benchmarks.serve_load --compare EXPORT_DIR [--concurrency 1,8,16] [--protocol grpc] [--out DIR]

``URL`` is a model served by Triton (``grpc://127.0.0.1:PORT/NAME`` or ``http://...``), loaded with
``runtime.load(URL)``: one remote runner per client thread. ``--compare EXPORT_DIR`` measures, in one run, the
embedded runner (``runtime.load(EXPORT_DIR/model.onnx)`` in this process, shared by N client threads) against the
same export served by the bundled ``tritonserver`` (python kind, this CPU) with the dynamic batcher on and off: the
benchmark generates the two repositories and starts and stops both servers itself (the server's environment comes
from ``make triton-env``: ``--server-python`` or the environment variable ``TRITON_SERVER_PYTHON``).

How it measures (see :func:`measure`):
- Each request is one clip (``--batch`` clips) of T frames, T drawn from ``--lengths`` (default ``1-16``: uniform
  over 1..16, seeded, mean 8.5) from a pool of pre-generated random inputs. Served clients are remote runners, as a
  user's would be: they pad each clip to its time bucket, except for a model that batches ragged clips (the python
  kind), which gets each clip at its own T, as the embedded runner does.
- A run is N client threads sending requests back to back for ``--duration`` seconds (at most ``--max-requests``).
  Rounds are interleaved: every round runs every target at every concurrency once, targets in a fresh random order
  per concurrency, with an untimed pause (``--gap-ms``) before each run, so a slow phase of the shared machine hits
  all targets alike. Throughput is the median over rounds; latency percentiles pool every round's requests; the
  served/embedded throughput and p99 ratios are medians of per-round ratios with bootstrap 95% intervals.
- Server statistics (``inference_count`` vs ``execution_count`` of the model, before and after each run) give the
  clips per execution: above 1, the dynamic batcher batched requests.
- CPU time per clip: this process's (client threads; the embedded runner's ONNX Runtime threads) and, for the
  servers ``--compare`` starts, the server's and its model stubs' (Linux ``/proc``), over each run. On a machine the
  clients and server share, it tells whether serving costs more CPU per clip or only waits longer.
- Load goes only to this machine (a URL whose host is not loopback is refused) and is bounded: concurrency at most
  :data:`MAX_CONCURRENCY`, each run at most ``--duration`` seconds and ``--max-requests`` requests, and the whole plan
  within ``--time-limit`` (checked before anything starts).

Writes (with ``--out``) ``PREFIX.json`` (every run, the summary, the environment), ``PREFIX.md`` and ``PREFIX.png``
(clips/s and latency per concurrency), atomically; existing files are replaced only when an earlier output of these
tools, or with ``--force``. Exit status: 0, 1 when requests failed or a target could not be set up, 2 for bad
arguments, 3 when the bundled server cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

from benchmarks.outputs import check_outputs
from benchmarks.timing import paired_speedup, percentiles
from runtime._io import atomic_write_json, atomic_write_text
from runtime.errors import RemoteServerError

logger = logging.getLogger(__name__)

MAX_CONCURRENCY = 64
DEFAULT_LENGTHS = "1-16"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EMBEDDED = "embedded"
SERVED_BATCHING = "served-batching"
SERVED_NO_BATCHING = "served-no-batching"
# The target at concurrency 8-16: served throughput >= 0.95x the embedded runner's, with a lower p99.
TARGET_RATIO = 0.95
TARGET_CONCURRENCY = (8, 16)
TITLE = "# Serving load: "  # first line of PREFIX.md (benchmarks.outputs recognises it as ours)


class ServeLoadError(RuntimeError):
    """A target that could not be set up or measured (a server that did not start, a warm-up request that failed)."""


# --- what is sent ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipLengths:
    """The distribution of clip lengths T: uniform over ``choices`` (a value listed twice is drawn twice as often)."""

    choices: tuple

    @classmethod
    def parse(cls, text: str) -> "ClipLengths":
        """``"1-16"`` (every T from 1 to 16), ``"8"`` (always 8) or ``"4,8,16"`` (one of those).

        Raises:
            ValueError: anything else, or a T below 1; the message gives the valid forms.
        """
        forms = "valid forms: LOW-HIGH (uniform over LOW..HIGH, e.g. 1-16), T (e.g. 8) or T,T,... (e.g. 4,8,16)"
        try:
            text = str(text).strip()
            if "-" in text:
                low, high = (int(v) for v in text.split("-"))
                choices = tuple(range(low, high + 1))
            else:
                choices = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--lengths {text!r} is not a length distribution; {forms}") from None
        if not choices or min(choices) < 1:
            raise ValueError(f"--lengths {text!r} must give lengths >= 1 (and LOW <= HIGH); {forms}")
        return cls(choices)

    @property
    def max(self) -> int:
        return max(self.choices)

    def describe(self) -> str:
        c = sorted(self.choices)
        mean = sum(c) / len(c)
        if len(set(c)) == 1:
            return f"T = {c[0]}"
        if c == list(range(c[0], c[-1] + 1)):
            return f"T uniform over {c[0]}..{c[-1]} (mean {mean:.1f})"
        return f"T uniform over {{{', '.join(map(str, self.choices))}}} (mean {mean:.1f})"


def make_requests(lengths: ClipLengths, frame_size: Sequence[int], *, batch: int = 1, pool: int = 64,
                  seed: int = 0) -> list:
    """A pool of random requests ``(frames, lengths)``: frames float32 ``(batch, T, 3, H, W)`` with T the longest of
    the batch's drawn lengths, ``lengths`` int32 ``(batch,)``. Random normal frames (never zeros), seeded."""
    import numpy as np

    if batch < 1 or pool < 1:
        raise ValueError(f"need batch >= 1 and pool >= 1, got batch={batch}, pool={pool}")
    rng = np.random.default_rng(seed)
    h, w = frame_size
    requests = []
    for _ in range(pool):
        ts = rng.choice(np.asarray(lengths.choices), size=batch).astype(np.int32)
        frames = rng.standard_normal((batch, int(ts.max()), 3, h, w), dtype=np.float32)
        requests.append((frames, ts))
    return requests


def check_loopback_url(url: str) -> None:
    """Refuse a URL this benchmark may not load: not ``grpc://`` / ``http://``, no model name, or a host other than
    this machine (the benchmark sends load only to 127.0.0.1).

    Raises:
        ValueError: naming what was wrong and what is valid.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "http"):
        raise ValueError(f"URL {url!r}: the scheme must be grpc:// or http:// (e.g. grpc://127.0.0.1:8001/cnn_bilstm)")
    if parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"URL {url!r}: this benchmark sends load only to this machine; the host must be one of "
                         f"{', '.join(LOOPBACK_HOSTS)}, got {parts.hostname!r}")
    if not parts.path.strip("/"):
        raise ValueError(f"URL {url!r} names no model; add it as the path, e.g. {parts.scheme}://{parts.netloc}/"
                         "cnn_bilstm")


# --- targets --------------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One thing to put under load.

    Attributes:
        name (str): label in the tables.
        open_client (callable): returns a runner (anything with ``infer(frames, lengths)``).
        shared (bool): one runner for every client thread (the embedded runner) instead of one per thread (remote
            runners: a client connection each, as separate users would have).
        stats (callable, optional): ``() -> (inference_count, execution_count)`` of the served model.
        info (dict): facts recorded with the results (URL, repository settings).
        server_pid (int, optional): the serving process on this machine, whose CPU time (its descendants' too) each
            run records.
    """

    name: str
    open_client: Callable[[], Any]
    shared: bool = False
    stats: Optional[Callable[[], tuple]] = None
    info: dict = field(default_factory=dict)
    server_pid: Optional[int] = None
    _runners: list = field(default_factory=list, repr=False)

    def runner(self) -> Any:
        """The first runner (opened now if needed): its ``input_spec`` tells the frame size to send."""
        self.clients(1)
        return self._runners[0]

    def clients(self, n: int) -> list:
        """``n`` infer callables (made on first need and kept for later runs, so no run times a connection set-up)."""
        want = 1 if self.shared else n
        while len(self._runners) < want:
            self._runners.append(self.open_client())
        runners = self._runners[:1] * n if self.shared else self._runners[:n]
        return [r.infer for r in runners]

    def close(self) -> None:
        for runner in self._runners:
            with contextlib.suppress(Exception):  # a runner of a server already stopped
                runner.deactivate()
        self._runners.clear()


def process_tree_cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds of process ``pid`` and its living descendants, from Linux's ``/proc``; None where
    there is none, or the process is gone."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat(5))
            for task in Path(f"/proc/{p}").joinpath("task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            if p == pid:
                return None
    return total


def model_stats(url: str, timeout: float = 10.0) -> tuple:
    """``(inference_count, execution_count)`` of the model a Triton URL names, summed over its versions (from the
    statistics endpoint: HTTP directly, gRPC through ``tritonclient``)."""
    parts = urlsplit(url)
    name = parts.path.strip("/")
    if parts.scheme == "http":
        with urllib.request.urlopen(f"http://{parts.netloc}/v2/models/{name}/stats", timeout=timeout) as r:
            data = json.load(r)
    else:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(parts.netloc)
        try:
            data = client.get_inference_statistics(name, as_json=True, client_timeout=timeout)
        finally:
            client.close()
    stats = data.get("model_stats", [])
    return (sum(int(s.get("inference_count", 0)) for s in stats), sum(int(s.get("execution_count", 0)) for s in stats))


def server_version(url: str, timeout: float = 10.0) -> Optional[str]:
    """The Triton server's version string from its metadata (None when it cannot be read)."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "http":
            with urllib.request.urlopen(f"http://{parts.netloc}/v2", timeout=timeout) as r:
                return json.load(r).get("version")
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(parts.netloc)
        try:
            return client.get_server_metadata(as_json=True, client_timeout=timeout).get("version")
        finally:
            client.close()
    except Exception as e:  # the version is a fact worth recording, not worth failing the run for
        logger.warning("cannot read the server version at %s: %s", url, e)
        return None


def url_target(url: str, name: Optional[str] = None, **info) -> Target:
    """A served model: one ``runtime.load(url)`` remote runner per client thread, with the model's statistics."""
    check_loopback_url(url)
    return Target(name or url, _remote_opener(url), shared=False, stats=lambda: model_stats(url),
                  info={"url": url, **info})


def embedded_target(model_path: str | os.PathLike, name: str = EMBEDDED, **options) -> Target:
    """The embedded runner: one ``runtime.load(model_path)`` in this process, shared by every client thread."""
    import runtime

    return Target(name, lambda: runtime.load(model_path, **options), shared=True,
                  info={"model": Path(model_path).name, **options})


# --- one run, many rounds -------------------------------------------------------------------------------------------
def run_load(clients: Sequence[Callable], requests: Sequence, *, duration_s: float,
             max_requests: Optional[int] = None) -> dict:
    """One run: ``len(clients)`` threads, each sending requests back to back with its own client until
    ``duration_s`` has passed or ``max_requests`` requests have been started in all.

    A thread stops at its first failed request (a server that is down must not be hammered in a tight loop); the
    failures are counted and the first message kept.

    Returns:
        dict: ``requests`` (completed), ``clips``, ``errors``, ``first_error``, ``elapsed_s`` (from the common start
        until the last thread finished its last request), ``requests_per_s``, ``clips_per_s``, ``latency_ms`` (every
        completed request, in completion order per thread).

    Raises:
        ValueError: no clients, no requests, duration_s <= 0 or max_requests < 1.
    """
    if not clients or not requests:
        raise ValueError("need at least one client and one request")
    if duration_s <= 0 or (max_requests is not None and max_requests < 1):
        raise ValueError(f"need duration_s > 0 and max_requests >= 1, got {duration_s} and {max_requests}")
    n = len(clients)
    tickets = itertools.count()  # next() on it is atomic under the GIL: the request budget of all threads
    latencies: list[list] = [[] for _ in range(n)]
    clips = [0] * n
    errors: list[str] = []
    start = threading.Barrier(n + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        infer, lat = clients[i], latencies[i]
        k = (i * len(requests)) // n  # threads start at different places in the pool
        start.wait()
        while time.perf_counter() < deadline[0] and (max_requests is None or next(tickets) < max_requests):
            frames, lengths = requests[k % len(requests)]
            k += 1
            t0 = time.perf_counter()
            try:
                infer(frames, lengths)
            except Exception as e:  # recorded, the run reports it; see the docstring
                errors.append(f"{type(e).__name__}: {e}")
                return
            lat.append((time.perf_counter() - t0) * 1e3)
            clips[i] += len(lengths)

    threads = [threading.Thread(target=worker, args=(i,), name=f"serve-load-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline[0] = t_start + duration_s
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    done = [x for lat in latencies for x in lat]
    return {"requests": len(done), "clips": sum(clips), "errors": len(errors),
            "first_error": errors[0] if errors else None, "elapsed_s": elapsed,
            "requests_per_s": len(done) / elapsed, "clips_per_s": sum(clips) / elapsed, "latency_ms": done}


def schedule(targets: Sequence[str], concurrencies: Sequence[int], rounds: int, seed: int = 0) -> list:
    """The order of the runs: ``(round, concurrency, target)``, every round running every target at every
    concurrency once; per (round, concurrency) the targets come back to back in a fresh random order, so the runs
    compared with each other are minutes apart at most and no target always goes first."""
    rng = random.Random(seed)
    plan = []
    for r in range(rounds):
        for c in concurrencies:
            order = list(targets)
            rng.shuffle(order)
            plan.extend((r, c, name) for name in order)
    return plan


def planned_seconds(n_targets: int, n_concurrencies: int, rounds: int, duration_s: float, warmup_s: float,
                    gap_s: float) -> float:
    """How long :func:`measure` runs at most (without set-up): warm-ups, then every run and its pause."""
    return n_targets * warmup_s + rounds * n_concurrencies * n_targets * (duration_s + gap_s)


def _load_average() -> Optional[float]:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def measure(targets: Sequence[Target], requests: Sequence, concurrencies: Sequence[int], *, rounds: int = 3,
            duration_s: float = 5.0, warmup_s: float = 2.0, gap_s: float = 0.2, max_requests: Optional[int] = None,
            seed: int = 0, baseline: Optional[str] = None,
            progress: Optional[Callable[[int, int, tuple], None]] = None) -> dict:
    """Warm every target up, then run :func:`schedule`'s plan and summarise it.

    Args:
        targets (Sequence[Target]): what to load (distinct names).
        requests (Sequence): the request pool (:func:`make_requests`).
        concurrencies (Sequence[int]): client threads per run, each in 1..MAX_CONCURRENCY.
        rounds (int): rounds (>= 1). Defaults to 3.
        duration_s (float): seconds per run. Defaults to 5.
        warmup_s (float): untimed seconds per target first, at the highest concurrency (sessions load, the server's
            model instances warm up, clients connect). Defaults to 2.
        gap_s (float): untimed pause before each run (client threads and ONNX Runtime's spinning threads of the run
            before go quiet). Defaults to 0.2.
        max_requests (int, optional): requests per run at most. Defaults to None (the duration bounds it).
        seed (int): schedule and bootstrap seed. Defaults to 0.
        baseline (str, optional): the target the others are compared with (the embedded runner). Defaults to None.
        progress (callable, optional): ``(done, total, (round, concurrency, target))`` after each run.

    Returns:
        dict: ``runs`` (one per run, without the raw latencies), ``summary`` (:func:`summarize`) and the parameters.

    Raises:
        ValueError: bad parameters. ServeLoadError: a request failed during the warm-up (the message gives it).
    """
    names = [t.name for t in targets]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"need targets with distinct names, got {names}")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline {baseline!r} is none of the targets {names}")
    bad = [c for c in concurrencies if not 1 <= c <= MAX_CONCURRENCY]
    if not concurrencies or bad:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {list(concurrencies)}")
    if rounds < 1 or warmup_s < 0 or gap_s < 0:
        raise ValueError(f"need rounds >= 1, warmup_s >= 0 and gap_s >= 0, got {rounds}, {warmup_s}, {gap_s}")
    by_name = {t.name: t for t in targets}
    top = max(concurrencies)
    for t in targets:
        clients = t.clients(top)
        if warmup_s:
            warm = run_load(clients, requests, duration_s=warmup_s, max_requests=max_requests)
            if warm["errors"]:
                raise ServeLoadError(f"{t.name}: a warm-up request failed: {warm['first_error']}")
    plan = schedule(names, concurrencies, rounds, seed)
    runs, samples = [], {}
    for done, (r, c, name) in enumerate(plan, 1):
        target = by_name[name]
        clients = target.clients(c)
        if gap_s:
            time.sleep(gap_s)
        load = _load_average()
        before = target.stats() if target.stats else None
        cpu_before = time.process_time(), _server_cpu_s(target)
        run = run_load(clients, requests, duration_s=duration_s, max_requests=max_requests)
        cpu_after = time.process_time(), _server_cpu_s(target)
        after = target.stats() if target.stats else None
        latency_ms = run.pop("latency_ms")
        samples.setdefault((name, c), []).extend(latency_ms)
        run.update({"round": r, "concurrency": c, "target": name, "load_average_1min": load,
                    **percentiles_or_none(latency_ms)})
        if before is not None:
            run["inferences"], run["executions"] = after[0] - before[0], after[1] - before[1]
        run["client_cpu_s"] = round(cpu_after[0] - cpu_before[0], 4)
        if cpu_before[1] is not None and cpu_after[1] is not None:
            run["server_cpu_s"] = round(cpu_after[1] - cpu_before[1], 4)
        runs.append(run)
        if progress is not None:
            progress(done, len(plan), (r, c, name))
    return {"targets": names, "baseline": baseline, "concurrencies": list(concurrencies), "rounds": rounds,
            "duration_s": duration_s, "warmup_s": warmup_s, "gap_s": gap_s, "max_requests": max_requests,
            "seed": seed, "runs": runs, "summary": summarize(runs, samples, baseline=baseline, seed=seed),
            "info": {t.name: t.info for t in targets}}


def _server_cpu_s(target: Target) -> Optional[float]:
    return None if target.server_pid is None else process_tree_cpu_s(target.server_pid)


def percentiles_or_none(samples_ms: Sequence[float]) -> dict:
    """:func:`benchmarks.timing.percentiles` keys, None for a run that completed no request."""
    if len(samples_ms) == 0:
        return {k: None for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")}
    stats = percentiles(samples_ms)
    stats.pop("samples")
    return stats


def summarize(runs: Sequence[dict], samples: dict, *, baseline: Optional[str] = None, seed: int = 0) -> dict:
    """Per (target, concurrency): the median, min and max over rounds of requests/s and clips/s, latency
    percentiles over every round's requests, errors, and clips per execution (inferences / executions over all
    rounds; > 1 means the server batched). With a ``baseline``, the :func:`compare_rounds` ratios.

    Args:
        runs (Sequence[dict]): :func:`run_load` results with ``round``, ``concurrency``, ``target`` and ``p99_ms``.
        samples (dict): ``(target, concurrency) -> latencies (ms)`` of all rounds.
        baseline (str, optional): the target to compare with. Defaults to None (no ratios).
        seed (int): bootstrap seed. Defaults to 0.

    Returns:
        dict: ``rows`` and ``ratios`` (lists of dicts).
    """
    import numpy as np

    rows = []
    keys = list(dict.fromkeys((r["target"], r["concurrency"]) for r in runs))
    for name, c in keys:
        mine = [r for r in runs if r["target"] == name and r["concurrency"] == c]
        rps = [r["requests_per_s"] for r in mine]
        cps = [r["clips_per_s"] for r in mine]
        inferences = sum(r.get("inferences", 0) for r in mine)
        executions = sum(r.get("executions", 0) for r in mine)
        clips = sum(r.get("clips", 0) for r in mine)
        server_cpu = [r["server_cpu_s"] for r in mine if r.get("server_cpu_s") is not None]
        rows.append({"target": name, "concurrency": c, "rounds": len(mine),
                     "requests_per_s": float(np.median(rps)), "requests_per_s_min": min(rps),
                     "requests_per_s_max": max(rps),
                     "clips_per_s": float(np.median(cps)), "clips_per_s_min": min(cps), "clips_per_s_max": max(cps),
                     "requests": sum(r["requests"] for r in mine), "errors": sum(r["errors"] for r in mine),
                     "inferences": inferences if executions else None, "executions": executions or None,
                     "clips_per_execution": inferences / executions if executions else None,
                     "client_cpu_ms_per_clip": (1e3 * sum(r.get("client_cpu_s", 0.0) for r in mine) / clips
                                                if clips else None),
                     "server_cpu_ms_per_clip": (1e3 * sum(server_cpu) / clips
                                                if clips and len(server_cpu) == len(mine) else None),
                     **percentiles_or_none(samples.get((name, c), []))})
    ratios = compare_rounds(runs, rows, baseline, seed=seed) if baseline is not None else []
    return {"rows": rows, "ratios": ratios}


def compare_rounds(runs: Sequence[dict], rows: Sequence[dict], baseline: str, *, seed: int = 0) -> list:
    """Per target other than ``baseline`` and concurrency, from the runs of the same rounds:

    - ``throughput_ratio``: target/baseline requests/s, the median of per-round ratios with a bootstrap 95%
      interval ``ci95`` (:func:`benchmarks.timing.paired_speedup` on the per-round time per request);
    - ``p99_ratio``: target/baseline p99, the median of per-round ratios with ``p99_ci95``. Per round, like the
      throughput, because a round that other processes slowed down lifts the p99 pooled over all rounds for
      whichever target it hit; ``p99_ratio_pooled`` is the ratio of the pooled p99s of ``rows``;
    - ``meets_target``: throughput ratio >= :data:`TARGET_RATIO` and p99 ratio < 1 (None outside
      :data:`TARGET_CONCURRENCY`).
    """
    by_key = {(r["target"], r["concurrency"]): r for r in rows}
    rounds: dict = {}
    for r in runs:
        rounds.setdefault((r["target"], r["concurrency"]), {})[r["round"]] = r
    ratios = []
    for row in rows:
        name, c = row["target"], row["concurrency"]
        base = by_key.get((baseline, c))
        if name == baseline or base is None:
            continue
        common = sorted(set(rounds[(name, c)]) & set(rounds[(baseline, c)]))
        pairs = [(rounds[(baseline, c)][i], rounds[(name, c)][i]) for i in common]
        pairs = [(b, t) for b, t in pairs if b["requests"] and t["requests"]]  # a run that completed nothing
        if not pairs:
            continue
        # Time per request (1000 / requests_per_s): baseline / target = target's throughput / baseline's.
        sp = paired_speedup([1e3 / b["requests_per_s"] for b, _ in pairs],
                            [1e3 / t["requests_per_s"] for _, t in pairs], seed=seed)
        p99 = paired_speedup([t["p99_ms"] for _, t in pairs], [b["p99_ms"] for b, _ in pairs], seed=seed)
        pooled = row["p99_ms"] / base["p99_ms"] if row["p99_ms"] and base["p99_ms"] else None
        ratios.append({"target": name, "baseline": baseline, "concurrency": c,
                       "throughput_ratio": sp["median"], "ci95": sp["ci95"], "per_round": sp["per_round"],
                       "p99_ratio": p99["median"], "p99_ci95": p99["ci95"], "p99_per_round": p99["per_round"],
                       "p99_ratio_pooled": pooled,
                       "meets_target": (bool(sp["median"] >= TARGET_RATIO and p99["median"] < 1.0)
                                        if in_target_range(c) else None)})
    return ratios


def in_target_range(concurrency: int) -> bool:
    """Whether the issue's target applies at ``concurrency`` (:data:`TARGET_CONCURRENCY`, inclusive)."""
    return TARGET_CONCURRENCY[0] <= concurrency <= TARGET_CONCURRENCY[1]


# --- outputs --------------------------------------------------------------------------------------------------------
def result_markdown(result: dict, env: dict, *, title: str, setup: str) -> str:
    """The results as markdown: the environment, how it was measured, one table per target and concurrency, and
    (with a baseline) the ratios with the issue's target."""
    s = result["summary"]
    load = env.get("load_average_1min")
    lines = [f"{TITLE}{title}", "",
             f"{env.get('device_name', env.get('host_cpu', '?'))}; python {env.get('python')}, onnxruntime "
             f"{env.get('onnxruntime')}, numpy {env.get('numpy')}, tritonclient {env.get('tritonclient', '-')}, "
             f"tritonserver {env.get('tritonserver', '-')}"
             + (f" (its python models: {_versions(env['server_environment'])})" if env.get("server_environment")
                else "") + f"; {env.get('date', '')}", "",
             f"1-min load average: {load} at the start, {env.get('load_average_1min_end', '?')} at the end "
             f"(per run: {_load_range(result['runs'])}); a load above the core count means other processes shared "
             "the CPU with this run.", "",
             setup, "",
             f"{result['rounds']} interleaved rounds of {result['duration_s']:g} s per target and concurrency "
             f"(targets in a fresh random order per concurrency, {1e3 * result['gap_s']:.0f} ms pause before each "
             f"run, {result['warmup_s']:g} s warm-up per target). Requests/s and clips/s: median over rounds "
             "(min-max); latency percentiles over every round's requests; clips per execution from the server's "
             "statistics over all rounds (inferences / executions; with one clip per request, above 1 means the "
             "dynamic batcher batched requests). CPU ms per clip: this process's CPU time (client threads, and the "
             "embedded runner's own threads) + the server's and its model stubs' where this benchmark started the "
             "server, over all rounds.", "",
             "| target | concurrency | requests/s | clips/s | p50 ms | p90 ms | p99 ms | clips per execution | "
             "CPU ms per clip (this process + server) | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        cpe = ("-" if r["clips_per_execution"] is None else
               f"{r['clips_per_execution']:.2f} ({r['inferences']}/{r['executions']})")
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['requests_per_s']:.1f} "
                     f"({r['requests_per_s_min']:.1f}-{r['requests_per_s_max']:.1f}) | {r['clips_per_s']:.1f} | "
                     f"{_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} | {cpe} | {_cpu(r)} | "
                     f"{r['errors']} |")
    if s["ratios"]:
        lines += ["", f"Against {result['baseline']} (throughput and p99: median of per-round ratios, bootstrap "
                  f"95% intervals; the p99s pooled over all rounds for comparison; target at concurrency "
                  f"{TARGET_CONCURRENCY[0]}-{TARGET_CONCURRENCY[1]}: throughput >= {TARGET_RATIO}x with a lower p99, "
                  "both per round):", "",
                  "| target | concurrency | throughput ratio | 95% interval | p99 ratio | 95% interval | "
                  "p99 ratio of pooled p99s | target |",
                  "|---|---|---|---|---|---|---|---|"]
        for q in s["ratios"]:
            verdict = {True: "met", False: "not met", None: "-"}[q["meets_target"]]
            pooled = "-" if q["p99_ratio_pooled"] is None else f"{q['p99_ratio_pooled']:.2f}"
            lines.append(f"| {q['target']} | {q['concurrency']} | {q['throughput_ratio']:.2f}x | "
                         f"{q['ci95'][0]:.2f}-{q['ci95'][1]:.2f} | {q['p99_ratio']:.2f} | "
                         f"{q['p99_ci95'][0]:.2f}-{q['p99_ci95'][1]:.2f} | {pooled} | {verdict} |")
    failed = [r for r in result["runs"] if r["errors"]]
    for r in failed[:5]:
        lines.append(f"\nRound {r['round'] + 1}, {r['target']} at concurrency {r['concurrency']}: {r['errors']} "
                     f"failed request(s), first: {r['first_error']}")
    return "\n".join(lines) + "\n"


def _versions(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _cpu(row: dict) -> str:
    """``client + server = total`` CPU ms per clip, or the client's alone when the server's is unknown."""
    client, server = row.get("client_cpu_ms_per_clip"), row.get("server_cpu_ms_per_clip")
    if client is None:
        return "-"
    if server is None:
        return f"{client:.2f}"
    return f"{client:.2f} + {server:.2f} = {client + server:.2f}"


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def _load_range(runs: Sequence[dict]) -> str:
    loads = [r["load_average_1min"] for r in runs if r.get("load_average_1min") is not None]
    return f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-"


def plot_serve_load(result: dict, path: str | os.PathLike, title: str) -> Optional[Path]:
    """Clips/s per concurrency (median, min-max over rounds as error bars; left) and p50/p99 latency (right); None
    without matplotlib."""
    from benchmarks.outputs import pyplot, save_figure

    plt = pyplot("plot")
    if plt is None:
        return None

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    rows = result["summary"]["rows"]
    for name in result["targets"]:
        mine = sorted((r for r in rows if r["target"] == name), key=lambda r: r["concurrency"])
        if not mine:
            continue
        cs = [r["concurrency"] for r in mine]
        low = [r["clips_per_s"] - r["clips_per_s_min"] for r in mine]
        high = [r["clips_per_s_max"] - r["clips_per_s"] for r in mine]
        color = left.errorbar(cs, [r["clips_per_s"] for r in mine], yerr=[low, high], marker="o", capsize=3,
                              label=name)[0].get_color()
        right.plot(cs, [r["p99_ms"] for r in mine], marker="o", color=color, label=f"{name} p99")
        right.plot(cs, [r["p50_ms"] for r in mine], marker=".", linestyle="--", color=color, label=f"{name} p50")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["concurrencies"], [str(c) for c in result["concurrencies"]])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("concurrent clients")
        if ax.has_data():
            ax.legend(fontsize=8)
    left.set(ylabel="clips/s (median over rounds)", title="throughput")
    right.set(ylabel="latency (ms)", title="latency per request")
    right.set_yscale("log")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def write_outputs(out: Path, prefix: str, result: dict, env: dict, text: str, title: str) -> None:
    """``PREFIX.json``, ``.md`` and ``.png`` in ``out``, each written atomically."""
    atomic_write_json(out / f"{prefix}.json", {"environment": env, "result": result})
    atomic_write_text(out / f"{prefix}.md", text)
    plot_serve_load(result, out / f"{prefix}.png", title)


def environment_facts(server_url: Optional[str] = None) -> dict:
    """:func:`benchmarks.environment.environment` on the CPU, plus tritonclient's and the server's version, the
    date, and the 1-min load average now."""
    from importlib.metadata import PackageNotFoundError, version

    from benchmarks.environment import environment

    env = dict(environment("cpu"))
    try:
        env["tritonclient"] = version("tritonclient")
    except PackageNotFoundError:
        env["tritonclient"] = "not installed"
    if server_url is not None:
        env["tritonserver"] = server_version(server_url)
    env["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env["load_average_1min"] = _load_average()
    return env


# --- the comparison's servers ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def compare_targets(export_dir: Path, work: Path, *, protocol: str = "grpc", server_python: Optional[str] = None,
                    max_queue_delay_us: Optional[int] = None, max_batch_size: int = 16,
                    max_time: int = 16, instances: int = 1) -> Iterator[tuple]:
    """The comparison's three targets: the embedded runner on ``export_dir/model.onnx`` and the same export served
    by two bundled ``tritonserver`` processes (python kind, ``instances`` CPU instances, no stream model), with the
    dynamic batcher and without it. The repositories are generated in ``work`` by
    :func:`export.triton_repo.write_repository` and the servers' logs written there; both servers are stopped on exit.

    Yields:
        tuple: (targets, facts): the three :class:`Target` objects and a dict of what was set up (each repository's
        settings, the server version).

    Raises:
        ServeLoadError: a repository that cannot be generated, or a server that does not start (with the reason).
    """
    from benchmarks.triton_server import LocalTritonServer
    from export.triton_repo import DEFAULT_MAX_QUEUE_DELAY_US, RepoOptions, write_repository

    delay = DEFAULT_MAX_QUEUE_DELAY_US if max_queue_delay_us is None else max_queue_delay_us
    servers, settings = {}, {}
    for name, batching in ((SERVED_BATCHING, True), (SERVED_NO_BATCHING, False)):
        opts = RepoOptions(kind="python", max_batch_size=max_batch_size, max_time=max_time, instances=instances,
                           max_queue_delay_us=delay, dynamic_batching=batching, stream=False)
        try:
            write_repository(export_dir, work / name, opts)
        except ValueError as e:  # ExportError, RepositoryError, OutputPathError
            raise ServeLoadError(f"{name}: cannot generate the repository from {export_dir}: {e}") from e
        servers[name] = LocalTritonServer(work / name, python=server_python, log_file=work / f"{name}.log")
        settings[name] = {"kind": "python", "name": opts.name, "instances": instances, "max_batch_size": max_batch_size,
                          "max_time": max_time, "dynamic_batching": batching,
                          "max_queue_delay_us": delay if batching else None, "protocol": protocol}
    targets = [embedded_target(export_dir / "model.onnx")]
    facts: dict = {"repositories": settings, "server_environment": server_python_versions(server_python)}
    with contextlib.ExitStack() as stack:
        stack.callback(_in_parallel, [s.stop for s in servers.values()])  # also after a failed start
        stack.callback(lambda: [t.close() for t in targets])  # runners first (LIFO), then the servers
        failures = _in_parallel([s.start for s in servers.values()])  # the two start-ups overlap
        for name, error in zip(servers, failures, strict=True):
            if error is not None:  # ServerError (with the log's last lines), OSError
                raise ServeLoadError(f"{name}: the bundled tritonserver did not start: {error}") from error
        for name, server in servers.items():
            base = server.grpc_url if protocol == "grpc" else server.http_url
            model = settings[name]["name"]
            stats_url = f"{server.http_url}/{model}"  # statistics over HTTP whatever the protocol under test
            targets.append(Target(name, _remote_opener(f"{base}/{model}"), shared=False,
                                  stats=lambda u=stats_url: model_stats(u), info=settings[name],
                                  server_pid=server.pid))
            if "tritonserver" not in facts:  # both servers run the same binary: ask one
                facts["tritonserver"] = server_version(server.http_url)
        yield targets, facts


def _in_parallel(calls: Sequence[Callable[[], Any]]) -> list:
    """Run the calls in threads at once; the exception each raised (None when it returned)."""
    errors: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            calls[i]()
        except Exception as e:  # handed to the caller
            errors[i] = e
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def server_python_versions(python: Optional[str]) -> dict:
    """Versions of what runs inside the server's python models (their own environment): python, numpy,
    onnxruntime, nvidia-pytriton; ``{}`` when the interpreter cannot be asked."""
    import subprocess

    from benchmarks.triton_server import default_python

    code = ("import json, platform; from importlib.metadata import version as v; print(json.dumps({'python': "
            "platform.python_version(), **{p: v(p) for p in ('numpy', 'onnxruntime', 'nvidia-pytriton')}}))")
    try:
        out = subprocess.run([python or default_python(), "-c", code], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        logger.warning("cannot read the server environment's versions: %s", e)
        return {}


def _remote_opener(url: str) -> Callable[[], Any]:
    def open_client():
        import runtime

        return runtime.load(url)
    return open_client


# --- CLI ------------------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers (e.g. 1,4,16)") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one concurrency (e.g. 1,4,16)")
    return values


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Load benchmark of a model served by Triton (requests/s, clips/s, "
                                     "p50/p90/p99 per concurrency), or --compare: the embedded runner against the "
                                     "same export served by the bundled tritonserver with and without dynamic "
                                     "batching, interleaved round by round", add_help=add_help)
    parser.add_argument("url", nargs="?", default=None, help="served model, grpc://127.0.0.1:PORT/NAME or "
                        "http://127.0.0.1:PORT/NAME (loopback only)")
    parser.add_argument("--compare", metavar="EXPORT_DIR", default=None, help="instead of URL: an ONNX export "
                        "folder (model.onnx, cnn.onnx, bilstm.onnx); runs it embedded and served (python kind) with "
                        "and without dynamic batching")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 4, 16],
                        help=f"comma list of client threads per run, each 1..{MAX_CONCURRENCY} (default 1,4,16)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed seconds per target first (default 2)")
    parser.add_argument("--gap-ms", type=float, default=200.0, help="untimed pause before each run (default 200)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="requests per run at most (default 100000)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="refuse a plan whose warm-ups and runs "
                        "would take longer, seconds (default 900)")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="clip lengths T: LOW-HIGH (uniform), T, or "
                        f"T,T,... (default {DEFAULT_LENGTHS}: uniform over 1..16)")
    parser.add_argument("--batch", type=int, default=1, help="clips per request (default 1)")
    parser.add_argument("--pool", type=int, default=64, help="distinct pre-generated requests, cycled (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="inputs, schedule and bootstrap seed (default 0)")
    g = parser.add_argument_group("--compare")
    g.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="how the served targets are "
                   "called (default grpc)")
    g.add_argument("--server-python", default=None, help="interpreter of the server's environment (default: the "
                   "environment variable TRITON_SERVER_PYTHON, which `make triton-env` sets up)")
    g.add_argument("--max-batch-size", type=int, default=16, help="the repositories' max_batch_size (default 16)")
    g.add_argument("--max-time", type=int, default=16, help="the repositories' longest clip (default 16; at least "
                   "the longest --lengths)")
    g.add_argument("--max-queue-delay-us", type=int, default=None, help="the dynamic batcher's queue delay "
                   "(default: the generator's)")
    g.add_argument("--instances", type=int, default=1, help="model instances per server (instance_group count; "
                   "default 1)")
    parser.add_argument("--model-name", default=None, help="label of the model in the title (default: the URL's "
                        "model name or the export folder's name)")
    parser.add_argument("--out", default=None, help="folder for PREFIX.json/.md/.png (default: print only)")
    parser.add_argument("--prefix", default=None, help="file name stem (default serve-load or serve-compare)")
    parser.add_argument("--force", action="store_true", help="replace existing --out files that these tools did "
                        "not write")
    return parser


def _check_args(args) -> Optional[str]:
    if (args.url is None) == (args.compare is None):
        return "give either a URL (a served model) or --compare EXPORT_DIR (embedded vs served), not both or neither"
    if args.url is not None:
        try:
            check_loopback_url(args.url)
        except ValueError as e:
            return str(e)
    if args.compare is not None and not (Path(args.compare) / "model.onnx").is_file():
        return (f"--compare {args.compare} has no model.onnx; give an ONNX export folder "
                "(python -m export.to_onnx CKPT --out DIR, then DIR/fp32)")
    bad = [c for c in args.concurrency if not 1 <= c <= MAX_CONCURRENCY]
    if bad:
        return f"--concurrency must be 1..{MAX_CONCURRENCY} per run, got {bad}"
    for name in ("duration", "warmup", "gap_ms", "time_limit"):
        v = getattr(args, name)
        if v < 0 or (name in ("duration", "time_limit") and v == 0):
            return f"--{name.replace('_', '-')} must be {'> 0' if name in ('duration', 'time_limit') else '>= 0'}, " \
                   f"got {v:g}"
    for name in ("rounds", "max_requests", "batch", "pool", "max_batch_size", "max_time"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    try:
        lengths = ClipLengths.parse(args.lengths)
    except ValueError as e:
        return str(e)
    if args.compare is not None and lengths.max > args.max_time:
        return f"--lengths reach T={lengths.max}, beyond --max-time {args.max_time} of the generated repositories"
    if args.compare is not None and not 1 <= args.instances <= 8:
        return f"--instances must be 1..8, got {args.instances}"
    if args.compare is not None and args.batch > args.max_batch_size:
        return f"--batch {args.batch} exceeds --max-batch-size {args.max_batch_size}"
    n_targets = 3 if args.compare is not None else 1
    plan = planned_seconds(n_targets, len(args.concurrency), args.rounds, args.duration, args.warmup,
                           args.gap_ms / 1e3)
    if plan > args.time_limit:
        return (f"the plan takes {plan:.0f} s ({n_targets} target(s) x {len(args.concurrency)} concurrencies x "
                f"{args.rounds} rounds x ({args.duration:g} s + pause), plus warm-ups), over --time-limit "
                f"{args.time_limit:g} s; shorten it or raise the limit")
    if args.out is not None:
        try:
            check_outputs(args.out, [_prefix(args) + s for s in (".json", ".md", ".png")], force=args.force)
        except ValueError as e:
            return str(e)
    return None


def _prefix(args) -> str:
    return args.prefix if args.prefix is not None else ("serve-compare" if args.compare else "serve-load")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    lengths = ClipLengths.parse(args.lengths)

    def progress(done: int, total: int, step: tuple) -> None:
        if sys.stderr.isatty():
            r, c, name = step
            print(f"\r  run {done}/{total} (round {r + 1}, {name}, concurrency {c})    ",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)

    options = dict(rounds=args.rounds, duration_s=args.duration, warmup_s=args.warmup, gap_s=args.gap_ms / 1e3,
                   max_requests=args.max_requests, seed=args.seed, progress=progress)
    try:
        if args.compare is not None:
            result, env, title, setup = _run_compare(args, lengths, options)
        else:
            result, env, title, setup = _run_url(args, lengths, options)
    except _CannotRunHere as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ServeLoadError, ValueError, RemoteServerError) as e:
        # RuntimeInputError (a bad URL, model or export) is a ValueError; RemoteServerError: a server down, not
        # ready or timing out.
        print(f"error: {e}", file=sys.stderr)
        return 1
    env["load_average_1min_end"] = _load_average()
    result.update(title=title, setup_text=setup)  # so that the markdown can be rendered again from the JSON
    text = result_markdown(result, env, title=title, setup=setup)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        try:
            write_outputs(out, _prefix(args), result, env, text, title)
        except OSError as e:  # checked before the run, but the folder may have changed since
            print(f"error: cannot write the results to {out}: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out / _prefix(args)}.{{json,md,png}}")
    return 1 if any(r["errors"] for r in result["runs"]) else 0


class _CannotRunHere(RuntimeError):
    """The bundled server cannot run on this machine (exit 3)."""


def _setup_line(meta, args, lengths: ClipLengths, how: str) -> str:
    return (f"Model: {describe_model(meta)}. Each request: {args.batch} clip(s) of random frames, "
            f"{lengths.describe()}, drawn per clip (a pool of {args.pool} requests, seed {args.seed}, cycled). {how}")


def describe_model(meta) -> str:
    """One line about a model from its metadata, e.g. ``resnet18 (imagenet stem), 24x24 frames, BiLSTM 1x64, 4
    classes, fp32``."""
    c = meta.model_config or {}
    h, w = meta.frame_size
    return (f"{c.get('backbone', '?')} ({c.get('stem', '?')} stem), {h}x{w} frames, BiLSTM {c.get('num_layers', '?')}"
            f"x{c.get('hidden_size', '?')}, {len(meta.class_names)} classes, {meta.precision}")


def _run_url(args, lengths: ClipLengths, options: dict) -> tuple:
    name = urlsplit(args.url).path.strip("/")
    target = url_target(args.url)
    try:
        target_meta = target.runner().metadata
        requests = make_requests(lengths, target_meta.frame_size, batch=args.batch, pool=args.pool, seed=args.seed)
        env = environment_facts(args.url)
        result = measure([target], requests, args.concurrency, **options)
    finally:
        target.close()
    how = "One remote runner (runtime.load(URL)) per client thread, in this process."
    return result, env, f"{args.model_name or name} at {args.url}", _setup_line(target_meta, args, lengths, how)


def _run_compare(args, lengths: ClipLengths, options: dict) -> tuple:
    from benchmarks.triton_server import server_unavailable_reason

    python = args.server_python or os.environ.get("TRITON_SERVER_PYTHON")
    why = server_unavailable_reason(python)
    if why:
        raise _CannotRunHere(f"the bundled tritonserver cannot run here: {why} (make triton-env sets it up)")
    export_dir = Path(args.compare)
    with tempfile.TemporaryDirectory(prefix="serve-compare-") as work:
        with compare_targets(export_dir, Path(work), protocol=args.protocol, server_python=python,
                             max_queue_delay_us=args.max_queue_delay_us, max_batch_size=args.max_batch_size,
                             max_time=args.max_time, instances=args.instances) as (targets, facts):
            meta = targets[0].runner().metadata
            requests = make_requests(lengths, meta.frame_size, batch=args.batch, pool=args.pool, seed=args.seed)
            env = environment_facts()
            env["tritonserver"] = facts.get("tritonserver")
            env["server_environment"] = facts.get("server_environment")
            result = measure(targets, requests, args.concurrency, baseline=EMBEDDED, **options)
            result["setup"] = {**facts, "model": {"precision": meta.precision, "frame_size": list(meta.frame_size),
                                                  "classes": len(meta.class_names), "model_config": meta.model_config,
                                                  "checkpoint_sha256": meta.extra.get("checkpoint_sha256")}}
    model = args.model_name or export_dir.resolve().name
    how = (f"{EMBEDDED}: runtime.load(model.onnx) in this process, one runner shared by the client threads; served: "
           f"the same export in the bundled tritonserver {env.get('tritonserver')} (python kind, "
           f"{args.instances} instance{'s' if args.instances > 1 else ''}, "
           f"ONNX Runtime on this CPU), called over {args.protocol} by one remote runner per client thread from this "
           "process (so clients and server share the CPU), with the dynamic batcher "
           f"({SERVED_BATCHING}) and without it ({SERVED_NO_BATCHING}).")
    return result, env, f"{model}, embedded vs served", _setup_line(meta, args, lengths, how)


if __name__ == "__main__":
    raise SystemExit(main())
