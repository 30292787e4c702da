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
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.contenders import BASELINE
from benchmarks.flops import stated_peak
from benchmarks.outputs import Outputs
from benchmarks.plots import plot_latency, plot_speedup
from benchmarks.suite_results import ReportError, Results, floor_ms, load_results, speedup
from runtime._io import OutputPathError

logger = logging.getLogger(__name__)


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
        OutputPathError: an output that cannot or may not be written (see :func:`benchmarks.outputs.check_outputs`),
            checked first.
    """
    if not paths:
        raise ReportError("give at least one results file (pytest benchmarks --benchmark-json=FILE)")
    outputs = Outputs(out_dir, prefix, with_json=False, plots=("-latency", "-speedup") if plots else (), force=force)
    outputs.check()
    all_results = [load_results(p) for p in paths]
    first = all_results[0]

    def markdown(drawn: dict) -> str:
        parts = ["# Latency report: CNN + BiLSTM", "",
                 "Median latency per call (ms) and speedup over eager PyTorch fp32 at the same (B, T); the compute "
                 "floor is model FLOPs / device peak. Produced by `python -m benchmarks.report` from the "
                 "pytest-benchmark JSON of `pytest benchmarks`.", ""]
        parts += [f"![{key}]({drawn[key].name})\n" for key in ("latency", "speedup") if key in drawn]
        parts += [results_markdown(r) for r in all_results]
        parts += [compare_markdown(first, other) for other in all_results[1:]]
        return "\n".join(parts).rstrip() + "\n"

    return outputs.write(markdown, plots={"-latency": lambda plt: plot_latency(first, plt),
                                          "-speedup": lambda plt: plot_speedup(first, plt)} if plots else None)


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
