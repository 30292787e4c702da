"""Where the time goes inside ONNX Runtime: per-node CPU time of one ONNX graph, with each node's arithmetic rate.

    python -m benchmarks.op_profile [MODEL.onnx] [--batch 1] [--time 16] [--runs 20] [--threads N] [--out DIR]

Runs the graph with ONNX Runtime's own profiler (CPU execution provider, the runtime's latency-tuned session options)
and reports, per node of the optimized graph, the median kernel time over ``--runs`` calls, its output shape, its
FLOPs (Conv, MatMul, Gemm, LSTM) and the GFLOP/s it reached; then the share of each operator type. Without MODEL the
reference model (ResNet-34 cifar stem, 32x32, BiLSTM 2x256, seeded random weights) is exported to a temporary folder
first. ``--disable NAME`` turns off one of ONNX Runtime's graph transformers (e.g. ``NchwcTransformer``) to see what
it was worth.

FLOPs are those of the shapes ONNX Runtime ran. Its NCHWc layout (x86) pads channel counts to its block size (8 or
16), so a layer whose channels are not a multiple of it is counted, and run, with the padded channels: more FLOPs
than the model's own. The report says so when NCHWc nodes are present.

The profiler adds a little time per node; quote latencies from the benchmark suite, and use this to see which layers
are slow and how close they run to the machine's arithmetic peak.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks.environment import cpu_name, load_average
from benchmarks.outputs import Outputs

logger = logging.getLogger(__name__)

SYMBOLIC_DIMS = {"batch": "batch", "time": "time_steps"}  # export's dynamic axes -> profile_onnx's arguments


def example_feeds(inputs, batch: int, time_steps: int, seed: int = 0) -> dict:
    """Random inputs for a session's inputs: ``batch`` and ``time`` axes set, full-length ``lengths``.

    Args:
        inputs: ``session.get_inputs()``.
        batch (int): B.
        time_steps (int): T.
        seed (int): numpy seed. Defaults to 0.

    Returns:
        dict: name -> array.

    Raises:
        ValueError: an input with a dynamic axis other than batch/time, or of a type this tool cannot fill.
    """
    import numpy as np

    sizes = {"batch": batch, "time": time_steps}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in inputs:
        shape = []
        for dim in inp.shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in sizes:
                shape.append(sizes[dim])
            else:
                raise ValueError(f"input {inp.name!r} has dynamic axis {dim!r}; this tool sets only "
                                 f"{sorted(sizes)} (the export's axes)")
        if inp.name == "lengths":
            dtype = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}.get(inp.type)
            if dtype is None:
                raise ValueError(f"input 'lengths' has type {inp.type}; expected tensor(int32) or tensor(int64)")
            feeds[inp.name] = np.full(shape, time_steps, dtype=dtype)
            continue
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has type {inp.type}; this tool fills float and float16 inputs "
                             "and the integer 'lengths'")
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _shapes(entries: Sequence[dict]) -> list[list[int]]:
    """ONNX Runtime's ``[{"float": [dims]}, ...]`` profile entries as a list of shapes."""
    return [list(next(iter(e.values()))) for e in entries]


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def node_flops(op: str, input_shapes: Sequence[Sequence[int]], output_shapes: Sequence[Sequence[int]]) -> Optional[int]:
    """Multiply-add FLOPs (2 per MAC) of one executed node from the shapes the profiler recorded; None if unknown.

    Conv (also ONNX Runtime's fused and NCHWc forms): 2 * outputs * (C_in / groups) * kernel area, with C_in / groups
    read off the weight. MatMul: 2 * outputs * K. Gemm: 2 * M * N * K. LSTM: 2 * T * B * directions * 4H * (I + H),
    with H and the directions read off its output Y.
    """
    try:
        if op in ("Conv", "FusedConv") and len(input_shapes) >= 2 and output_shapes:
            weight = input_shapes[1]
            return 2 * _prod(output_shapes[0]) * _prod(weight[1:])
        if op in ("MatMul", "FusedMatMul") and input_shapes and output_shapes:  # B may be pre-packed (absent)
            return 2 * _prod(output_shapes[0]) * int(input_shapes[0][-1])
        if op == "Gemm" and len(input_shapes) >= 2 and output_shapes:
            m, n = output_shapes[0][-2:]
            return 2 * int(m) * int(n) * _gemm_k(input_shapes[0], int(m))
        if op == "LSTM" and input_shapes and output_shapes and len(output_shapes[0]) == 4:
            # Y is (T, directions, B, H); W and R are pre-packed by the kernel, so they are not among the inputs
            steps, batch, features = input_shapes[0]
            _, directions, _, hidden = output_shapes[0]
            return 2 * int(steps) * int(batch) * int(directions) * 4 * int(hidden) * (int(features) + int(hidden))
    except (ValueError, TypeError, IndexError):
        return None
    return None


def _gemm_k(a_shape: Sequence[int], m: int) -> int:
    """Gemm's inner size from A's shape (A may be transposed): the dimension that is not M."""
    rows, cols = int(a_shape[-2]), int(a_shape[-1])
    return cols if rows == m else rows


def profile_onnx(path: str | Path, *, batch: int = 1, time_steps: int = 16, runs: int = 20, warmup: int = 3,
                 threads: Optional[int] = None, disabled: Sequence[str] = (), seed: int = 0) -> dict[str, Any]:
    """Profile one ONNX graph on ONNX Runtime's CPU execution provider.

    Args:
        path (str | Path): the ``.onnx`` file.
        batch (int): B. Defaults to 1.
        time_steps (int): T. Defaults to 16.
        runs (int): profiled calls (after ``warmup``). Defaults to 20.
        warmup (int): calls first, dropped from the result. Defaults to 3.
        threads (int | None): intra-op threads; None lets ONNX Runtime use every core. Defaults to None.
        disabled (Sequence[str]): graph transformers to turn off (ONNX Runtime names, e.g. "NchwcTransformer").
        seed (int): input seed. Defaults to 0.

    Returns:
        dict: ``model``, ``batch``, ``time_steps``, ``threads``, ``disabled``, ``runs``, ``call_ms`` (median wall time
        of a profiled call), ``node_ms_total``, ``nodes`` (name, op, output_shape, ms, gflop, gflops_per_s, share;
        slowest first) and ``ops`` (op -> ms and share).

    Raises:
        ValueError: bad counts, or inputs this tool cannot fill.
    """
    import onnxruntime as ort

    from runtime.backends.ort_session import session_options

    for name, value, low in (("batch", batch, 1), ("time_steps", time_steps, 1), ("runs", runs, 1),
                             ("warmup", warmup, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or None), got {threads}")
    load = load_average()  # above the core count: a busy shared machine
    opts = session_options(ort, intra_op_threads=threads, allow_spinning=True)
    with tempfile.TemporaryDirectory(prefix="op-profile-") as work:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(work) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(disabled))
        feeds = example_feeds(session.get_inputs(), batch, time_steps, seed)
        call_s = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            session.run(None, feeds)
            if i >= warmup:
                call_s.append(time.perf_counter() - start)
        events = json.loads(Path(session.end_profiling()).read_text())

    nodes, total, ops = _node_table(events, runs)
    return {"model": str(path), "batch": batch, "time_steps": time_steps, "threads": threads,
            "disabled": list(disabled), "runs": runs, "onnxruntime": ort.__version__, "host_cpu": cpu_name(),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "load_average_1min": load[0] if load else None,
            "call_ms": statistics.median(call_s) * 1e3, "node_ms_total": total, "nodes": nodes,
            "ops": ops}


def _node_table(events: list[dict], runs: int) -> tuple[list[dict], float, dict[str, dict]]:
    """(nodes slowest first, their total ms, ms and share per op) from ONNX Runtime's profile events of ``runs``
    profiled calls (earlier warm-up calls are in the events too)."""
    per_node: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_node[event["name"][: -len("_kernel_time")]].append(event)
    nodes = []
    for name, node_events in per_node.items():
        node_events.sort(key=lambda e: e["ts"])
        timed = node_events[-runs:]  # each call runs every node once: the last `runs` are the profiled calls
        args = timed[-1]["args"]
        outputs = _shapes(args.get("output_type_shape", []))
        flops = node_flops(args.get("op_name", "?"), _shapes(args.get("input_type_shape", [])), outputs)
        ms = statistics.median(e["dur"] for e in timed) / 1e3
        nodes.append({"name": name, "op": args.get("op_name", "?"), "output_shape": outputs[0] if outputs else None,
                      "ms": ms, "gflop": flops / 1e9 if flops is not None else None,
                      "gflops_per_s": flops / 1e6 / ms if flops is not None and ms > 0 else None})
    nodes.sort(key=lambda n: -n["ms"])
    total = sum(n["ms"] for n in nodes)
    ops: dict[str, float] = defaultdict(float)
    for n in nodes:
        n["share"] = n["ms"] / total if total else 0.0
        ops[n["op"]] += n["ms"]
    return nodes, total, {op: {"ms": ms, "share": ms / total if total else 0.0}
                          for op, ms in sorted(ops.items(), key=lambda kv: -kv[1])}


def profile_markdown(result: dict, top: int = 25) -> str:
    """The profile as markdown: the call, the operator types, the ``top`` slowest nodes."""
    flop_nodes = [n for n in result["nodes"] if n["gflop"] is not None]
    counted_ms = sum(n["ms"] for n in flop_nodes)
    counted_gflop = sum(n["gflop"] for n in flop_nodes)
    lines = [
        f"# ONNX Runtime profile: {Path(result['model']).name}, B={result['batch']}, T={result['time_steps']}",
        "",
        f"- {result['host_cpu']}, {result['date_utc']} UTC, 1-min load average {result['load_average_1min']} at "
        "the start",
        f"- ONNX Runtime {result['onnxruntime']}, CPU execution provider, intra-op threads "
        f"{result['threads'] or 'all cores'}, transformers turned off: {', '.join(result['disabled']) or 'none'}",
        f"- {result['runs']} profiled calls: median call {result['call_ms']:.2f} ms; node kernel times add up to "
        f"{result['node_ms_total']:.2f} ms",
    ]
    if counted_ms > 0:
        lines.append(f"- nodes with known FLOPs: {counted_gflop:.2f} GFLOP executed in {counted_ms:.2f} ms = "
                     f"{counted_gflop / counted_ms * 1e3:.0f} GFLOP/s")
    if any(n["name"].endswith("_nchwc") for n in result["nodes"]):
        lines.append("- NCHWc layout: its convolutions run with channel counts padded to ONNX Runtime's block size, "
                     "and their FLOPs are counted as run (more than the model's where channels are not a multiple "
                     "of the block)")
    lines += ["", "| operator | ms | share |", "|---|---|---|"]
    lines += [f"| {op} | {v['ms']:.2f} | {100 * v['share']:.1f}% |" for op, v in result["ops"].items()]
    lines += ["", f"Slowest {min(top, len(result['nodes']))} nodes (median over the calls):", "",
              "| node | operator | output | ms | GFLOP | GFLOP/s |", "|---|---|---|---|---|---|"]
    for n in result["nodes"][:top]:
        gflop = f"{n['gflop']:.3f}" if n["gflop"] is not None else "-"
        rate = f"{n['gflops_per_s']:.0f}" if n["gflops_per_s"] is not None else "-"
        lines.append(f"| `{n['name']}` | {n['op']} | {n['output_shape']} | {n['ms']:.2f} | {gflop} | {rate} |")
    return "\n".join(lines) + "\n"


def plot_profile(result: dict, plt, top: int = 40) -> Any:
    """Bar chart of the ``top`` slowest nodes in graph order of cost, coloured by operator, drawn with ``plt``."""
    nodes = result["nodes"][:top]
    ops = sorted({n["op"] for n in nodes})
    colours = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(ops)}
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(nodes) + 1.5))
    ys = range(len(nodes))
    ax.barh(list(ys), [n["ms"] for n in nodes], color=[colours[n["op"]] for n in nodes])
    ax.set_yticks(list(ys), [_short_label(n["name"]) for n in nodes], fontsize=7)
    ax.invert_yaxis()
    for y, n in enumerate(nodes):
        if n["gflops_per_s"] is not None:
            ax.text(n["ms"], y, f" {n['gflops_per_s']:.0f} GFLOP/s", va="center", fontsize=6)
    ax.set_xlabel("median kernel time per call (ms)")
    ax.set_title(f"{Path(result['model']).name}, B={result['batch']}, T={result['time_steps']}: "
                 f"call {result['call_ms']:.1f} ms", fontsize=9)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[op]) for op in ops], labels=ops, fontsize=7,
              loc="lower right")
    return fig


def _short_label(name: str, width: int = 48) -> str:
    """A node name cut to its last ``width`` characters at a "/" (deep export scopes repeat their prefix)."""
    if len(name) <= width:
        return name
    tail = name[-width:]
    return "..." + (tail[tail.index("/"):] if "/" in tail else tail)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Per-node ONNX Runtime CPU profile of one ONNX graph",
                                     add_help=add_help)
    parser.add_argument("model", nargs="?", default=None, help="the .onnx file (default: the reference model's "
                        "model.onnx, exported here with seeded random weights)")
    parser.add_argument("--batch", type=int, default=1, help="B (default 1)")
    parser.add_argument("--time", type=int, default=16, help="T (default 16)")
    parser.add_argument("--runs", type=int, default=20, help="profiled calls (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="calls first, not counted (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every core)")
    parser.add_argument("--disable", action="append", default=[], metavar="TRANSFORMER",
                        help="turn off one ONNX Runtime graph transformer, e.g. NchwcTransformer (repeatable)")
    parser.add_argument("--top", type=int, default=25, help="nodes listed in the markdown (default 25)")
    parser.add_argument("--out", default=None, help="folder for PREFIX.md/.json/.png (default: print only)")
    parser.add_argument("--prefix", default=None, help="file name stem (default profile-<model>-B{b}-T{t})")
    parser.add_argument("--force", action="store_true", help="replace existing --out files that these tools did "
                        "not write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("batch", "time", "runs", "top"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        print("error: --warmup must be >= 0 and --threads >= 1", file=sys.stderr)
        return 2
    if args.model is not None and (not Path(args.model).is_file() or Path(args.model).suffix != ".onnx"):
        print(f"error: {args.model} is not an .onnx file", file=sys.stderr)
        return 2
    outputs = Outputs(args.out, _prefix(args), force=args.force) if args.out is not None else None
    if outputs is not None:  # before the profile, not after it
        try:
            outputs.check()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="op-profile-model-") as work:
        model = args.model
        if model is None:
            from benchmarks.workloads import reference_config, write_random_checkpoint
            from export.to_onnx import export_onnx

            print("exporting the reference model (seeded random weights) ...", file=sys.stderr)
            checkpoint = write_random_checkpoint(Path(work) / "reference.pt", reference_config())
            export_onnx(checkpoint, Path(work) / "onnx", "fp32")
            model = str(Path(work) / "onnx" / "model.onnx")
        try:
            result = profile_onnx(model, batch=args.batch, time_steps=args.time, runs=args.runs,
                                  warmup=args.warmup, threads=args.threads, disabled=args.disable)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.model is None:
            result["model"] = "reference-model.onnx"
    text = profile_markdown(result, top=args.top)
    print(text)
    if outputs is not None:
        try:
            written = outputs.write(text, result, {"": lambda plt: plot_profile(result, plt)})
        except OSError as e:  # checked before the profile, but the folder may have changed since
            print(f"error: cannot write the profile to {args.out}: {e}", file=sys.stderr)
            return 2
        print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return 0


def _prefix(args) -> str:
    stem = Path(args.model).stem if args.model is not None else "reference-model"
    return args.prefix if args.prefix is not None else f"profile-{stem}-B{args.batch}-T{args.time}"


if __name__ == "__main__":
    sys.exit(main())
