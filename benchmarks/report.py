"""Turn pytest-benchmark JSON files of the latency suite into markdown tables and PNG plots.

    python -m benchmarks.report RESULTS.json [MORE.json ...] [--out DIR] [--prefix NAME] [--no-plots]

Per file: an environment header, then one table per workload with the median latency of every contender per
(B, T), its speedup over eager fp32, and the compute floor (model FLOPs / the device's peak from
:data:`benchmarks.flops.PEAKS`). With two or more files, a side-by-side comparison of the first against each other
(same workload, B, T and contender) with the ratio. Plots: latency versus T per contender (log scale) for each
workload and B, and speedup bars per shape.

"Median" is pytest-benchmark's median of the wall-clock time of the timed call (which synchronises the device before
returning); p90/p99 come from the suite's own recorder (CUDA events on GPU, perf_counter on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.contenders import BASELINE, CONTENDERS
from benchmarks.flops import stated_peak
from benchmarks.outputs import check_outputs
from benchmarks.workloads import WORKLOADS
from runtime._io import (
    OutputPathError,
    atomic_write_text,
)

logger = logging.getLogger(__name__)


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


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


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


def environment_markdown(results: Results) -> str:
    env = results.env
    peak, key, source = stated_peak(results.device_name)
    lines = [
        f"- device: **{results.device_name}** (`{env.get('device', '?')}`); host CPU: {env.get('host_cpu', '?')}",
        f"- torch {env.get('torch', '?')}, CUDA (torch build) {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}, "
        f"ONNX Runtime {env.get('onnxruntime', '?')} (providers: {', '.join(env.get('onnxruntime_providers', [])) or '?'}"
        + (f"; OpenVINO plugin {env['onnxruntime_ep_openvino']}" if env.get("onnxruntime_ep_openvino") else "") + ")"
        f", TensorRT: {env.get('tensorrt', '?')}, Python {env.get('python', '?')}, package {env.get('package', '?')}",
        f"- date: {results.datetime or '?'}" + (f", commit {results.commit}" if results.commit else ""),
        f"- compute floor: model FLOPs / {peak / 1e12:g} TFLOP/s (peak key `{key}`: {source})",
    ]
    if env.get("load_average_1min") is not None:
        lines.append(f"- 1-minute load average when the run started: {env['load_average_1min']} (above the core count "
                     "means other processes shared the machine: latencies are then inflated and noisy)")
    if "tf32_cudnn" in env:
        lines.append(f"- TF32 in cuDNN (PyTorch default, affects eager fp32): {env['tf32_cudnn']}")
    first = results.rows[0].extra.get("model_config") if results.rows else None
    if first:
        lines.append(f"- model: {first.get('backbone')} {first.get('stem')} stem, {tuple(first.get('frame_size', []))} "
                     f"frames, BiLSTM {first.get('num_layers')}x{first.get('hidden_size')}, "
                     f"{first.get('num_classes')} classes")
    return "\n".join(lines)


def workload_table(results: Results, workload: str) -> str:
    """Markdown table of one workload: rows (B, T), a column per contender, floor beside."""
    contenders = [c for c in results.contenders() if any(r.contender == c and r.workload == workload
                                                          for r in results.rows)]
    t_name = "W" if workload == "stream" else "T"
    head = ["B", t_name, "GFLOP"] + [f"{c} ms" + ("" if c == BASELINE else " (speedup)") for c in contenders]
    head += ["floor ms", "best / floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, t in results.shapes(workload):
        rows = [results.row(workload, b, t, c) for c in contenders]
        gflop = next((r.gflop for r in rows if r is not None and r.gflop is not None), None)
        cells = [str(b), str(t), "-" if gflop is None else f"{gflop:.3g}"]
        for c, r in zip(contenders, rows, strict=True):
            if r is None:
                cells.append("-")
            elif c == BASELINE:
                cells.append(_fmt_ms(r.median_ms))
            else:
                s = speedup(results, r)
                cells.append(_fmt_ms(r.median_ms) + ("" if s is None else f" ({s:.2f}x)"))
        fl = floor_ms(results, gflop)
        best = min((r.median_ms for r in rows if r is not None), default=None)
        cells += [_fmt_ms(fl) if fl is not None else "-",
                  _fmt_ratio(best / fl) if best is not None and fl else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_ratio(x: float) -> str:
    """1.3x, 18x, 0.33x: two significant digits below 10 (an int8 run can beat the fp32 floor: 0x would hide it)."""
    return f"{x:.2g}x" if x < 10 else f"{x:.0f}x"


def results_markdown(results: Results) -> str:
    """The full markdown section of one results file."""
    parts = [f"## {results.label}", "", environment_markdown(results), ""]
    for workload in results.workloads():
        title = {"model": "whole model", "cnn": "CNN stage alone", "bilstm": "BiLSTM stage alone (+ heads)",
                 "stream": "one streaming step (new frame + BiLSTM over the window)"}.get(workload, workload)
        parts += [f"### {workload}: {title}", "", workload_table(results, workload), ""]
    precisions = sorted({(r.contender, r.precision) for r in results.rows})
    parts += ["Precisions: " + ", ".join(f"{c} = {p}" for c, p in precisions) + ".", ""]
    if results.skipped:
        reasons = sorted({(s.get("contender", "?"), s.get("reason", "?")) for s in results.skipped})
        parts += ["Skipped here:", ""] + [f"- {c}: {r}" for c, r in reasons] + [""]
    return "\n".join(parts)


def compare_markdown(a: Results, b: Results) -> str:
    """Side-by-side medians of two files for every (workload, B, T, contender) present in both, with A/B."""
    lines = [f"## Comparison: A = {a.label} vs B = {b.label}", "",
             "| workload | B | T | contender | A ms | B ms | A / B |", "|---|---|---|---|---|---|---|"]
    n = 0
    for ra in a.rows:
        rb = b.row(ra.workload, ra.batch, ra.time, ra.contender)
        if rb is None:
            continue
        n += 1
        lines.append(f"| {ra.workload} | {ra.batch} | {ra.time} | {ra.contender} | {_fmt_ms(ra.median_ms)} | "
                     f"{_fmt_ms(rb.median_ms)} | {ra.median_ms / rb.median_ms:.2f} |")
    if n == 0:
        lines.append("| (no benchmark in common) | | | | | | |")
    lines += ["", "A / B > 1 means B is faster.", ""]
    return "\n".join(lines)


def compact_table(results: Results) -> str:
    """Plain-text summary for terminals: one line per (workload, B, T), medians in ms and speedups."""
    contenders = results.contenders()
    width = max(12, *(len(c) + 2 for c in contenders))
    out = ["group".ljust(18) + " ".join(c.rjust(width) for c in contenders)]
    for workload in results.workloads():
        for b, t in results.shapes(workload):
            cells = []
            for c in contenders:
                r = results.row(workload, b, t, c)
                if r is None:
                    cells.append("-".rjust(width))
                    continue
                s = speedup(results, r)
                txt = _fmt_ms(r.median_ms) + ("" if s is None or c == BASELINE else f" {s:.1f}x")
                cells.append(txt.rjust(width))
            shape = f"B{b}-W{t}" if workload == "stream" else f"B{b}-T{t}"
            out.append(f"{workload}-{shape}".ljust(18) + " ".join(cells))
    return "\n".join(out)


# --- the whole report ------------------------------------------------------------------------------------------------


def report_names(prefix: str, plots: bool) -> list[str]:
    """The files :func:`build_report` may write into its folder."""
    return [f"{prefix}.md"] + ([f"{prefix}-latency.png", f"{prefix}-speedup.png"] if plots else [])


def build_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, prefix: str = "report",
                 plots: bool = True, force: bool = False) -> dict[str, Path]:
    """Write ``<prefix>.md`` (+ ``<prefix>-latency.png``, ``<prefix>-speedup.png`` of the first file) to ``out_dir``.

    Args:
        paths (Sequence[str | PathLike]): one or more results files; the first is the main one, the others are
            compared against it.
        out_dir (str | PathLike): output folder (created).
        prefix (str): file name stem. Defaults to "report".
        plots (bool): write the PNGs (needs matplotlib). Defaults to True.
        force (bool): replace existing files of those names that these tools did not write. Defaults to False.

    Returns:
        dict[str, Path]: "markdown", and "latency"/"speedup" when plotted.

    Raises:
        ReportError: no file given, or a file that is not a results file of this suite.
        OutputPathError: an output that cannot or may not be written (see :func:`check_outputs`), checked first.
    """
    if not paths:
        raise ReportError("give at least one results file (pytest benchmarks --benchmark-json=FILE)")
    check_outputs(out_dir, report_names(prefix, plots), force=force)
    all_results = [load_results(p) for p in paths]
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    main_results = all_results[0]
    parts = ["# Latency report: CNN + BiLSTM", "",
             "Median latency per call (ms) and speedup over eager PyTorch fp32 at the same (B, T); the compute floor "
             "is model FLOPs / device peak. Produced by `python -m benchmarks.report` from the pytest-benchmark "
             "JSON of `pytest benchmarks`.", ""]
    if plots:
        from benchmarks.plots import plot_latency, plot_speedup

        lat = plot_latency(main_results, out_dir / f"{prefix}-latency.png")
        spd = plot_speedup(main_results, out_dir / f"{prefix}-speedup.png")
        for key, p in (("latency", lat), ("speedup", spd)):
            if p is not None:
                written[key] = p
                parts += [f"![{key}]({p.name})", ""]
    for results in all_results:
        parts.append(results_markdown(results))
    for other in all_results[1:]:
        parts.append(compare_markdown(main_results, other))
    written["markdown"] = atomic_write_text(out_dir / f"{prefix}.md", "\n".join(parts).rstrip() + "\n")
    return written


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Markdown + PNG report of benchmark JSON files", add_help=add_help)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON file(s); the first is compared to the rest")
    parser.add_argument("--out", default="runs/bench-report", help="output folder (default runs/bench-report)")
    parser.add_argument("--prefix", default="report", help="file name stem of the outputs (default report)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--force", action="store_true", help="replace existing output files that these tools did "
                        "not write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = build_report(args.results, args.out, prefix=args.prefix, plots=not args.no_plots, force=args.force)
        summary = compact_table(load_results(args.results[0]))
    except (ReportError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the outputs were checked first, but the folder may have changed since
        print(f"error: cannot write the report to {args.out}: {e}", file=sys.stderr)
        return 2
    for key, path in written.items():
        print(f"wrote {key}: {path}")
    print()
    print(f"median ms per call (speedup over {BASELINE}):")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
