"""The latency suite's results, parsed: a pytest-benchmark JSON of ``pytest benchmarks`` as rows, with each row's
speedup over eager fp32 and its compute floor. :mod:`benchmarks.report` tabulates them, :mod:`benchmarks.plots`
draws them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks.contenders import BASELINE, CONTENDERS
from benchmarks.flops import stated_peak
from benchmarks.workloads import WORKLOADS


class ReportError(ValueError):
    """A results file is not a pytest-benchmark JSON of this suite (the message says what is wrong)."""


@dataclass(frozen=True)
class Row:
    """One benchmark of one file."""

    workload: str
    batch: int
    time: int
    contender: str
    precision: str
    median_ms: float
    p90_ms: Optional[float]
    p99_ms: Optional[float]
    gflop: Optional[float]
    rounds: Optional[int]
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.batch, self.time


@dataclass
class Results:
    """A parsed results file."""

    path: Path
    label: str
    env: dict
    datetime: str
    commit: str
    rows: list
    skipped: list

    @property
    def device_name(self) -> str:
        return str(self.env.get("device_name", "unknown device"))

    def row(self, workload: str, batch: int, time: int, contender: str) -> Optional[Row]:
        for r in self.rows:
            if (r.workload, r.batch, r.time, r.contender) == (workload, batch, time, contender):
                return r
        return None

    def contenders(self) -> list[str]:
        present = {r.contender for r in self.rows}
        return [c for c in CONTENDERS if c in present] + sorted(present - set(CONTENDERS))

    def shapes(self, workload: str) -> list[tuple[int, int]]:
        return sorted({r.shape for r in self.rows if r.workload == workload})

    def workloads(self) -> list[str]:
        present = {r.workload for r in self.rows}
        return [w for w in WORKLOADS if w in present] + sorted(present - set(WORKLOADS))


def load_results(path: str | os.PathLike, label: Optional[str] = None) -> Results:
    """Parse a ``--benchmark-json`` file written by ``pytest benchmarks``.

    Args:
        path (str | PathLike): the JSON file.
        label (str, optional): name in comparison tables. Defaults to the device name and file name.

    Returns:
        Results: rows (one per benchmark), environment, date, skipped contenders.

    Raises:
        ReportError: missing file, not JSON, not a pytest-benchmark file, no benchmarks, or benchmarks lacking the
            suite's ``extra_info``.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path} is not JSON ({e}); pass a file written by `pytest benchmarks "
                          "--benchmark-json=FILE`") from e
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path} is not a pytest-benchmark JSON file (no top-level 'benchmarks' list); pass a file "
                          "written by `pytest benchmarks --benchmark-json=FILE`")
    if not data["benchmarks"]:
        raise ReportError(f"{path} holds no benchmarks (all skipped, or run with --benchmark-disable)")
    rows, env = [], {}
    for i, b in enumerate(data["benchmarks"]):
        name = b.get("fullname") or b.get("name") or f"#{i}"
        stats, extra = b.get("stats"), b.get("extra_info") or {}
        if not isinstance(stats, dict) or "median" not in stats:
            raise ReportError(f"{path}: benchmark {name} has no stats.median; is this a pytest-benchmark file?")
        missing = [k for k in ("contender", "workload", "batch", "time") if k not in extra]
        if missing:
            raise ReportError(f"{path}: benchmark {name} lacks extra_info {missing}; only results of "
                              "benchmarks/test_latency.py can be reported")
        env = env or dict(extra.get("env") or {})
        rows.append(Row(
            workload=str(extra["workload"]), batch=int(extra["batch"]), time=int(extra["time"]),
            contender=str(extra["contender"]), precision=str(extra.get("precision", "?")),
            median_ms=float(stats["median"]) * 1e3, p90_ms=_opt_float(extra.get("p90_ms")),
            p99_ms=_opt_float(extra.get("p99_ms")), gflop=_opt_float(extra.get("gflop")),
            rounds=stats.get("rounds"), extra=extra,
        ))
    if not env:
        env = {"device_name": (data.get("machine_info") or {}).get("cpu", {}).get("brand_raw", "unknown device")}
    commit = (data.get("commit_info") or {}).get("id") or ""
    label = label or f"{env.get('device_name', 'unknown')} ({path.name})"
    return Results(path=path, label=label, env=env, datetime=str(data.get("datetime", "")), commit=str(commit)[:12],
                   rows=rows, skipped=list(data.get("cnn_bilstm_skipped") or []))


def _opt_float(v) -> Optional[float]:
    return None if v is None else float(v)


def speedup(results: Results, row: Row) -> Optional[float]:
    """Median of eager fp32 at the same (workload, B, T) divided by this row's median (None without a baseline)."""
    base = results.row(row.workload, row.batch, row.time, BASELINE)
    return None if base is None else base.median_ms / row.median_ms


def floor_ms(results: Results, row_or_gflop) -> Optional[float]:
    """Compute floor in ms: FLOPs / the device's peak (see :func:`benchmarks.flops.stated_peak`)."""
    gflop = row_or_gflop.gflop if isinstance(row_or_gflop, Row) else row_or_gflop
    if gflop is None:
        return None
    peak, _, _ = stated_peak(results.device_name)
    return gflop * 1e9 / peak * 1e3
