"""A quick latency look at B=1, T=16 for ``make demo``: a few rounds per available contender, not a benchmark.

    python -m benchmarks.quick CHECKPOINT [--onnx-dir DIR] [--rounds N] [--device cpu|cuda]

Each contender's output is checked against eager fp32 first (the relative error is printed). For numbers to quote,
run the suite: ``pytest benchmarks --benchmark-json=runs/bench.json`` then ``python -m benchmarks.report``.

Exit status: 0 when every contender agrees with eager fp32, 1 when one does not, 2 for bad input (one ``error:``
line on stderr; an ``--onnx-dir`` of another checkpoint says so), 3 for ``--device cuda`` without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.contenders import CONTENDERS, ORT_CONTENDERS
from benchmarks.context import BenchContext
from benchmarks.environment import GpuUnavailableError, check_bench_device, environment
from benchmarks.paired import compare_paired
from benchmarks.timing import default_gap_s
from runtime.inputs import check_count

logger = logging.getLogger(__name__)


def quick_look(checkpoint: str | Path, *, onnx_dir: Optional[str | Path] = None,
               int8_dir: Optional[str | Path] = None, rounds: int = 5,
               device: Optional[str] = None, batch: int = 1, time_steps: int = 16) -> tuple[list[dict], list[tuple]]:
    """Time every available contender on the whole model for a few rounds.

    Contenders are timed in interleaved rounds (see :func:`benchmarks.timing.time_interleaved`); the speedup is
    the median of per-round ratios against eager fp32.

    Args:
        checkpoint (str | Path): the ``.pt`` checkpoint.
        onnx_dir (str | Path, optional): folder with the fp32 ``model.onnx`` (and friends) of that checkpoint; without
            it the ONNX Runtime contenders are skipped (exporting here would dwarf the look). Defaults to None.
        int8_dir (str | Path, optional): its ``export.quantize`` folder; without it ``ort-int8`` is skipped.
            Defaults to None.
        rounds (int): timed rounds per contender (after one warm-up call). Defaults to 5.
        device (str, optional): "cpu" or "cuda[:i]"; None picks CUDA when available. Defaults to None.
        batch (int): B. Defaults to 1.
        time_steps (int): T. Defaults to 16.

    Returns:
        tuple: (rows: dicts with contender, precision, p50/p90 ms, speedup, rel_error; skipped: (contender, reason)).

    Raises:
        ValueError: rounds, batch or time_steps not an integer >= 1, a device that is not "cpu", "cuda" or
            "cuda:N", an ``onnx_dir``/``int8_dir`` exported from another checkpoint, a damaged checkpoint or graph.
        GpuUnavailableError: a CUDA device asked for, but torch sees no CUDA GPU.
    """
    for name, value in (("rounds", rounds), ("batch", batch), ("time_steps", time_steps)):
        check_count(value, name)
    device = check_bench_device(device)
    contenders = [c for c in CONTENDERS if c != "torch-compile"]  # compiling takes minutes: --bench-compile
    skipped = []
    for contender, (precision, _) in ORT_CONTENDERS.items():
        if (int8_dir if precision == "int8" else onnx_dir) is None:  # exporting or quantizing here would dwarf it
            flag = "--int8-dir (python -m export.quantize)" if precision == "int8" else "--onnx-dir"
            skipped.append((contender, f"no {flag} given"))
            contenders.remove(contender)
    with tempfile.TemporaryDirectory(prefix="quick-bench-") as work:
        ctx = BenchContext(Path(checkpoint), device, Path(work),
                           onnx_dir=Path(onnx_dir) if onnx_dir is not None else None,
                           int8_dir=Path(int8_dir) if int8_dir is not None else None)
        try:
            result = compare_paired(ctx, contenders, batch=batch, time_steps=time_steps, rounds=rounds, warmup=1,
                                    gap_s=default_gap_s(device), strict=False)
        finally:
            ctx.close()
    rows = [{**r, "speedup": r["speedup"]["median"]} for r in result["rows"]]
    return rows, skipped + result["skipped"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Quick latency look at B=1, T=16 (not a benchmark)",
                                     add_help=add_help)
    parser.add_argument("checkpoint", help=".pt checkpoint")
    parser.add_argument("--onnx-dir", default=None, help="folder with the fp32 model.onnx of the checkpoint")
    parser.add_argument("--int8-dir", default=None, help="folder of its int8 export (python -m export.quantize)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (default 5)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = check_bench_device(args.device)
        rows, skipped = quick_look(args.checkpoint, onnx_dir=args.onnx_dir, int8_dir=args.int8_dir,
                                   rounds=args.rounds, device=device)
    except ValueError as e:  # CheckpointError, RuntimeInputError and bad arguments are all ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except GpuUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    env = environment(device)
    print(f"QUICK LOOK, not a benchmark: whole model at B=1, T=16, {args.rounds} interleaved rounds after 1 warm-up, on "
          f"{env['device_name']}.")
    print("Full suite: `make bench`; a paired ratio to quote: python -m benchmarks.paired.")
    print(f"{'contender':<20}{'precision':<10}{'median ms':>10}{'p90 ms':>9}{'vs eager':>10}{'rel.err':>10}  check")
    for r in rows:
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"{r['contender']:<20}{r['precision']:<10}{r['p50_ms']:>10.2f}{r['p90_ms']:>9.2f}{sp:>10}"
              f"{r['rel_error']:>10.1e}  {'ok' if r['ok'] else 'MISMATCH'}")
    for r in rows:
        if r["precision"] == "int8-data":
            info = r.get("info", {})
            print(f"  {r['contender']}: its error on random frames is not gated; the export passed its top-1 agreement "
                  f"gate ({info.get('int8_clip_agreement')} on {info.get('int8_verified_clips')} held-out clips)")
    for contender, reason in skipped:
        print(f"  skipped {contender}: {reason}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
