"""``python -m benchmarks.ddp_throughput``: training samples per second of ``python -m train`` under torchrun with 1
and 2 (or more) processes, interleaved round by round, the load average beside every run.

Each run is the real command (``torchrun --nproc_per_node N -m train --preset demo ...``, synthetic clips made on
the fly, evaluation off the clock): the throughput of an epoch is the clips it trained (every rank's) over its
training time from ``metrics.json``; the first epoch is the warm-up and is not counted. Threads: by default the cores
are shared out (``OMP_NUM_THREADS`` = cores / N per process), so every world size uses the same cores and only the
data-parallel overhead (gradient all-reduce over gloo, the extra processes) separates them; ``--threads`` fixes the
threads per process instead. On a machine shared with other work the scheduler gives each runnable thread a share,
so more processes also take a larger share of the CPU: read the load averages beside the numbers. This CLI runs the command as a user
would and imports nothing from ``train``.

Example:
    python -m benchmarks.ddp_throughput --nprocs 1,2 --rounds 3 --out benchmarks/results --prefix DATE-cpu-ddp
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.environment import command_line, environment, load_average
from benchmarks.outputs import Outputs
from benchmarks.timing import Task, time_interleaved
from benchmarks.triton_server import free_port

REPO = Path(__file__).resolve().parents[1]


def run_once(nproc: int, train_args: Sequence[str], threads: int, work: Path) -> dict:
    """One ``torchrun -m train`` run; returns its per-epoch training clips/s and the load averages around it."""
    out = work / f"run-{nproc}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "train", *train_args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    load_before = load_average()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    records = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))["args"]
    per_epoch = config["train_clips"] - config["train_clips"] % nproc  # every rank's clips (the remainder is left out)
    return {"nproc": nproc, "threads_per_process": threads, "wall_s": round(wall, 2),
            "epoch_train_s": [round(r["train_time"], 3) for r in records],
            "clips_per_s": [per_epoch / r["train_time"] for r in records[1:]],
            "load_before": load_before, "load_after": load_average()}


def measure(nprocs: Sequence[int], rounds: int, train_args: Sequence[str], cores: int, threads: int = 0) -> dict:
    """``rounds`` interleaved rounds (:func:`benchmarks.timing.time_interleaved`), each running every world size
    once in a fresh random order; ``threads`` per process, or (0) the cores shared out."""
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        def task(n: int) -> Task:
            def fn(_):
                run = run_once(n, train_args, threads or max(1, cores // n), Path(tmp))
                print(f"{n} process(es): {statistics.median(run['clips_per_s']):.1f} clips/s (load "
                      f"{run['load_before'][0]:.1f} -> {run['load_after'][0]:.1f})", file=sys.stderr)
                return run
            return Task(fn=fn)

        timed = time_interleaved({str(n): task(n) for n in nprocs}, rounds, warmup=0, keep_results=True)
    runs = [{"round": r, **timed.results[str(n)][r]} for r in range(rounds) for n in nprocs]
    summary = {}
    for n in nprocs:
        rates = [x for run in runs if run["nproc"] == n for x in run["clips_per_s"]]
        summary[str(n)] = {"median_clips_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                           "epochs_counted": len(rates)}
    return {"runs": runs, "summary": summary}


def _markdown(res: dict, env: dict, command: str) -> str:
    lines = ["# Data-parallel training throughput: python -m train under torchrun, gloo on CPU", "",
             f"{env['date']}; {env['host_cpu']}; torch {env['torch']}; python {env['python']}; package "
             f"{env['package']}", "", f"Command: `{command}`", "",
             f"Each run: `{' '.join(res['train_args'])}`", "",
             "| processes | threads each | median clips/s | min | max | epochs counted |", "|---|---|---|---|---|---|"]
    for n, s in res["result"]["summary"].items():
        threads = next(r["threads_per_process"] for r in res["result"]["runs"] if str(r["nproc"]) == n)
        lines.append(f"| {n} | {threads} | {s['median_clips_per_s']:.1f} | {s['min']:.1f} | {s['max']:.1f} | "
                     f"{s['epochs_counted']} |")
    lines += ["", "| round | processes | clips/s per counted epoch | load average before (1, 5, 15 min) | after |",
              "|---|---|---|---|---|"]
    for r in res["result"]["runs"]:
        lines.append(f"| {r['round'] + 1} | {r['nproc']} | {', '.join(f'{x:.1f}' for x in r['clips_per_s'])} | "
                     f"{r['load_before']} | {r['load_after']} |")
    return "\n".join(lines) + "\n"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ddp_throughput", add_help=add_help,
                                description="Training clips/s of python -m train under torchrun, per world size.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nprocs", default="1,2", help="world sizes to compare (processes on this machine)")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds; each runs every world size once, in a fresh random order")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    p.add_argument("--train-clips", type=int, default=256, help="training clips per epoch (all ranks together)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch per process")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS per process (0: the usable cores divided by the process count)")
    p.add_argument("--out", default="runs/ddp-throughput", help="folder for PREFIX.json and PREFIX.md")
    p.add_argument("--prefix", default="ddp-throughput", help="file name stem")
    p.add_argument("--force", action="store_true", help="replace files these tools did not write")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure and write PREFIX.json and PREFIX.md; 0 on success, 2 on bad input, 1 when a run failed."""
    from benchmarks.environment import usable_cpus

    args = get_args_parser().parse_args(argv)
    try:
        try:
            nprocs = [int(x) for x in args.nprocs.split(",")]
        except ValueError:
            raise ValueError(f"--nprocs takes comma-separated process counts (1,2), got {args.nprocs!r}") from None
        if not nprocs or min(nprocs) < 1 or min(args.rounds, args.epochs - 1, args.train_clips, args.batch_size) < 1 \
                or args.threads < 0:
            raise ValueError("--nprocs must be positive integers, --rounds, --train-clips and --batch-size >= 1, "
                             "--epochs >= 2, --threads >= 0")
        outputs = Outputs(args.out, args.prefix, plots=(), force=args.force)
        outputs.check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train_args = ["--preset", "demo", "--train-clips", str(args.train_clips), "--val-clips", "32", "--epochs",
                  str(args.epochs), "--batch-size", str(args.batch_size), "--device", "cpu", "--no-progress",
                  "--no-eval-shuffled", "--dist-backend", "gloo"]
    env = environment("cpu")
    try:
        result = measure(nprocs, args.rounds, train_args, usable_cpus(), args.threads)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    command = command_line("benchmarks.ddp_throughput", argv)
    res = {"environment": env, "train_args": train_args, "command": command, "result": result}
    text = _markdown(res, env, command)
    outputs.write(text, res)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
