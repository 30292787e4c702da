"""Paired, interleaved latency comparison: the speedup ratio that holds up on a noisy shared machine.

    python -m benchmarks.paired [--checkpoint PT] [--onnx-dir DIR] [--contenders eager-fp32,ort-fp32]
                                [--workload model] [--batch 1] [--time 16] [--rounds 40] [--out DIR]

The pytest-benchmark suite times contenders one after another. On a shared VM a slow phase then lands on one
contender only, and the ratio of two medians swings with it. Here every round calls each contender once, in a fresh
random order, so slow phases hit all of them alike; the speedup is the median of the per-round ratios with a bootstrap
95% interval. On a CPU every call starts after an untimed pause (``--gap-ms``, default 100) so that no contender runs
beside the spinning threads of the one before (see :func:`benchmarks.timing.time_interleaved`).
Outputs are checked against eager fp32 first, as in the suite.

Writes (with ``--out``) ``PREFIX.json`` (every sample, the environment), ``PREFIX.md`` and ``PREFIX.png`` (latency
per round and the per-round speedup), atomically. The outputs are checked before anything is timed: ``--out`` must
be a writable folder (or creatable), and an existing file of those names is replaced only when it is an earlier
output of these tools (recognised by its content) or with ``--force``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks.accuracy import TOLERANCES, rel_error
from benchmarks.contenders import BASELINE, CONTENDERS, FAST_VARIANTS, parse_contender, prepare_contender
from benchmarks.context import BenchContext
from benchmarks.environment import GpuUnavailableError, Unavailable, check_bench_device, environment
from benchmarks.outputs import Outputs
from benchmarks.timing import default_gap_s, paired_speedup, percentiles, time_interleaved, tty_progress
from benchmarks.workloads import STREAM_WINDOW, reference_config, write_random_checkpoint

logger = logging.getLogger(__name__)


def compare_paired(ctx: BenchContext, contenders: Sequence[str], *, workload: str = "model", batch: int = 1,
                   time_steps: int = 16, rounds: int = 40, warmup: int = 2, seed: int = 0, gap_s: float = 0.0,
                   strict: bool = True, progress=None) -> dict[str, Any]:
    """Check and time contenders interleaved on one (workload, B, T); the baseline is always included.

    Args:
        ctx (BenchContext): checkpoint, device and exported graphs.
        contenders (Sequence[str]): names from :data:`benchmarks.contenders.CONTENDERS`, or runtime-fast variants
            (``runtime-fast+fp16-all``; see :data:`benchmarks.contenders.FAST_VARIANTS`).
        workload (str): model, cnn, bilstm or stream. Defaults to "model".
        batch (int): B. Defaults to 1.
        time_steps (int): T (the window for ``stream``). Defaults to 16.
        rounds (int): timed rounds. Defaults to 40.
        warmup (int): untimed rounds first. Defaults to 2.
        seed (int): order and bootstrap seed. Defaults to 0.
        gap_s (float): untimed pause before every call (see :func:`time_interleaved`). Defaults to 0.
        strict (bool): raise when a contender's outputs exceed its tolerance (timing a wrong answer is pointless);
            False times it anyway and marks its row ``ok: False``. Defaults to True.
        progress (callable, optional): ``(done, rounds)`` after each round. Defaults to None.

    Returns:
        dict: ``rows`` (per contender: precision, rel_error, ok, latency stats, ``speedup`` dict from
        :func:`paired_speedup`, ``samples_ms``), ``skipped`` ((name, reason) pairs) and the run's parameters.

    Raises:
        ValueError: unknown contender, or (``strict``) a contender's outputs exceed its tolerance; the message names
            the contender and the error.
    """
    for name in contenders:
        parse_contender(name)  # ValueError naming what is valid
    names = [BASELINE] + [c for c in dict.fromkeys(contenders) if c != BASELINE]
    if workload == "stream":
        time_steps = ctx.window
    reference = ctx.reference(workload, batch, time_steps)
    prepared, errors, skipped = {}, {}, []
    for name in names:
        try:
            prepared[name] = prepare_contender(ctx, name, workload, batch, time_steps)
        except Unavailable as e:
            if name == BASELINE:
                raise
            skipped.append((name, str(e)))
            continue
        errors[name] = rel_error(prepared[name].probe(), reference)
        tolerance = TOLERANCES[prepared[name].precision]
        if strict and not errors[name] <= tolerance:
            raise ValueError(f"{name} {workload} B={batch} T={time_steps}: norm-relative error {errors[name]:.3g} "
                             f"against eager fp32 exceeds the {prepared[name].precision} tolerance {tolerance:g}")
    samples = time_interleaved(prepared, rounds, warmup=warmup, seed=seed, gap_s=gap_s, progress=progress).wall_ms
    rows = []
    for name, p in prepared.items():
        rows.append({"contender": name, "precision": p.precision, "rel_error": errors[name],
                     "ok": errors[name] <= TOLERANCES[p.precision], "timer": p.timer,
                     **percentiles(samples[name]),
                     "speedup": paired_speedup(samples[BASELINE], samples[name], seed=seed),
                     "samples_ms": samples[name], "info": p.info})
    return {"workload": workload, "batch": batch, "time": time_steps, "rounds": rounds, "warmup": warmup,
            "seed": seed, "gap_s": gap_s, "rows": rows, "skipped": skipped}


def result_markdown(result: dict, env: dict) -> str:
    """A markdown table of one :func:`compare_paired` result with its environment line."""
    shape = (f"B={result['batch']}, window {result['time']}" if result["workload"] == "stream"
             else f"B={result['batch']}, T={result['time']}")
    lines = [f"# Paired latency: {result['workload']}, {shape}", "",
             f"{env['device_name']}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}"
             + (f" (+ onnxruntime-ep-openvino {env['onnxruntime_ep_openvino']})" if "onnxruntime_ep_openvino" in env
                else "") + ", python "
             f"{env.get('python')}; torch threads {env.get('torch_threads')}, 1-min load average "
             f"{env.get('load_average_1min')} at the start; {env.get('date', '')}", "",
             f"{result['rounds']} interleaved rounds (random order per round, {result['warmup']} warm-up rounds, "
             + (f"{1e3 * result['gap_s']:.0f} ms untimed pause before every call, so each call is timed from idle "
                "cores: single-request latency, not back-to-back throughput). " if result["gap_s"] else
                "calls back to back). ") +
             "Speedup = median over rounds of (eager fp32 latency / contender latency) in the same round, with a "
             "bootstrap 95% interval" + (" (coarse with fewer than 20 rounds)" if result["rounds"] < 20 else "")
             + ".", "",
             "| contender | precision | median ms | min ms | p90 ms | speedup vs eager fp32 | 95% interval | "
             "rounds faster | rel. error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sp = r["speedup"]
        if r["contender"] == BASELINE:
            ratio = "1.00x (baseline) | - | -"
        else:
            ratio = (f"{sp['median']:.2f}x | {sp['ci95'][0]:.2f}-{sp['ci95'][1]:.2f} | "
                     f"{100 * sp['faster_rounds']:.0f}%")
        flag = "" if r["ok"] else " (over tolerance)"
        lines.append(f"| {r['contender']} | {r['precision']} | {r['p50_ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {ratio} | {r['rel_error']:.1e}{flag} |")
    for name, reason in result["skipped"]:
        lines.append(f"\nSkipped {name}: {reason}")
    return "\n".join(lines) + "\n"


def plot_paired(result: dict, plt) -> Any:
    """Latency per round (left) and per-round speedup with its median (right), drawn with ``plt`` (pyplot)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    for r in result["rows"]:
        color = left.plot(range(1, len(r["samples_ms"]) + 1), r["samples_ms"], marker=".",
                          label=r["contender"])[0].get_color()  # the same colour for a contender in both panels
        if r["contender"] != BASELINE:
            sp = r["speedup"]
            right.plot(range(1, len(sp["per_round"]) + 1), sp["per_round"], marker=".", color=color,
                       label=f"{r['contender']} (median {sp['median']:.2f}x)")
            right.axhline(sp["median"], color=color, linestyle="--", linewidth=1)
    right.axhline(1.0, color="k", linewidth=0.8)
    left.set(xlabel="round", ylabel="latency (ms)", title="latency per round (same rounds for all)")
    right.set(xlabel="round", ylabel="eager fp32 / contender", title="per-round speedup")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"{result['workload']} B={result['batch']} T={result['time']}, interleaved rounds", fontsize=11)
    return fig


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Paired, interleaved latency comparison against eager fp32",
                                     add_help=add_help)
    parser.add_argument("--checkpoint", default=None, help="checkpoint to time (default: the reference model, "
                        "ResNet-34 cifar stem + BiLSTM 2x256, random seeded weights)")
    parser.add_argument("--onnx-dir", default=None, help="fp32 ONNX graphs of --checkpoint (default: exported here)")
    parser.add_argument("--int8-dir", default=None, help="int8 export of --checkpoint (python -m export.quantize; "
                        "default: quantized here, calibrated on N(0,1) frames)")
    parser.add_argument("--contenders", default=None,
                        help=f"comma list of {','.join(CONTENDERS)}, or runtime-fast+VARIANT[+VARIANT] with "
                             f"VARIANT in {','.join(FAST_VARIANTS)} (default: all but torch-compile; eager fp32 is "
                             "always included as the baseline)")
    parser.add_argument("--workload", default="model", choices=["model", "cnn", "bilstm", "stream"])
    parser.add_argument("--batch", type=int, default=1, help="B (default 1)")
    parser.add_argument("--time", type=int, default=16, help="T (default 16; ignored for stream)")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="order and bootstrap seed (default 0)")
    parser.add_argument("--gap-ms", type=float, default=None, help="untimed pause before every call, ms (default "
                        "100 on CPU, where thread pools spin after their work; 0 on CUDA)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    parser.add_argument("--ort-threads", type=int, default=None, help="ONNX Runtime intra-op threads "
                        "(default: the cores this process may use)")
    parser.add_argument("--no-strict", dest="strict", action="store_false", help="time a contender whose outputs "
                        "exceed its tolerance anyway (its row says so) instead of stopping with an error")
    parser.add_argument("--out", default=None, help="folder for PREFIX.json/.md/.png (default: print only)")
    parser.add_argument("--prefix", default=None, help="file name stem (default paired-WORKLOAD-B{b}-T{t})")
    parser.add_argument("--force", action="store_true", help="replace existing --out files that these tools did "
                        "not write")
    return parser


def output_prefix(args) -> str:
    """The file name stem of the outputs (T is the streaming window for the stream workload)."""
    t = STREAM_WINDOW if args.workload == "stream" else args.time
    return args.prefix if args.prefix is not None else f"paired-{args.workload}-B{args.batch}-T{t}"


def _contenders(args) -> list[str]:
    if args.contenders is None:
        return [c for c in CONTENDERS if c != "torch-compile"]
    return [c.strip() for c in args.contenders.split(",") if c.strip()]


def _check_args(args) -> Optional[str]:
    for name in ("batch", "time", "rounds"):
        if getattr(args, name) < 1:
            return f"--{name} must be >= 1, got {getattr(args, name)}"
    if args.warmup < 0:
        return f"--warmup must be >= 0, got {args.warmup}"
    if args.gap_ms is not None and args.gap_ms < 0:
        return f"--gap-ms must be >= 0, got {args.gap_ms}"
    if args.ort_threads is not None and args.ort_threads < 1:
        return f"--ort-threads must be >= 1, got {args.ort_threads}"
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        return f"--checkpoint {args.checkpoint} is not a file"
    if args.onnx_dir is not None and not (Path(args.onnx_dir) / "model.onnx").is_file():
        return f"--onnx-dir {args.onnx_dir} has no model.onnx (export with python -m export.to_onnx)"
    if args.int8_dir is not None and not (Path(args.int8_dir) / "model.onnx").is_file():
        return f"--int8-dir {args.int8_dir} has no model.onnx (quantize with python -m export.quantize)"
    if (args.onnx_dir is not None or args.int8_dir is not None) and args.checkpoint is None:
        return "--onnx-dir and --int8-dir need the --checkpoint they were exported from"
    if args.contenders is not None and not _contenders(args):
        return f"--contenders names none; give a comma list of {','.join(CONTENDERS)}"
    if args.out is not None:
        try:
            _outputs(args).check()
        except ValueError as e:
            return str(e)
    return None


def _outputs(args) -> Outputs:
    return Outputs(args.out, output_prefix(args), force=args.force)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        device = check_bench_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except GpuUnavailableError as e:  # cannot run on this machine
        print(f"error: {e}", file=sys.stderr)
        return 3
    gap_ms = args.gap_ms if args.gap_ms is not None else 1e3 * default_gap_s(device)
    contenders = _contenders(args)

    with tempfile.TemporaryDirectory(prefix="paired-bench-") as work:
        checkpoint = Path(args.checkpoint) if args.checkpoint else write_random_checkpoint(
            Path(work) / "reference.pt", reference_config())
        ctx = None
        try:
            ctx = BenchContext(checkpoint, device, Path(work), ort_threads=args.ort_threads,
                               onnx_dir=Path(args.onnx_dir) if args.onnx_dir else None,
                               int8_dir=Path(args.int8_dir) if args.int8_dir else None)
            result = compare_paired(ctx, contenders, workload=args.workload, batch=args.batch,
                                    time_steps=args.time, rounds=args.rounds, warmup=args.warmup, seed=args.seed,
                                    gap_s=gap_ms / 1e3, strict=args.strict, progress=tty_progress)
        except (ValueError, Unavailable) as e:  # unknown contender, a wrong answer, a bad checkpoint, no baseline
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            if ctx is not None:
                ctx.close()
    env = environment(device)
    text = result_markdown(result, env)
    print(text, end="")
    if args.out:
        return _write_outputs(args, result, env, text)
    return 0


def _write_outputs(args, result: dict, env: dict, text: str) -> int:
    checkpoint = "reference model, random weights (seed 0)" if args.checkpoint is None else Path(args.checkpoint).name
    try:
        written = _outputs(args).write(text, {"environment": env, "result": result, "checkpoint": checkpoint},
                                       {"": lambda plt: plot_paired(result, plt)})
    except OSError as e:  # checked before the run, but the folder may have changed since
        print(f"error: cannot write the results to {args.out}: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
