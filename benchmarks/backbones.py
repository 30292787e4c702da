"""Backbones side by side: CPU latency against held-out accuracy, one row per backbone (the chart to choose one by).

    python -m benchmarks.backbones --data-dir CIFAR10 --out benchmarks/results --prefix DATE-cpu-backbones

For each backbone (``--backbones``, default all six) the same training budget from scratch on CIFAR-10 clips
(``python -m train``, cifar stem; pretrained weights are a download away, so this compares architectures, not
ImageNet features), then its fp32 ONNX export and its int8 export (``python -m export.quantize`` calibrated on the
training split, gated by clip agreement with fp32, and scored on the same held-out clips as fp32). Then one
interleaved run times every backbone's eager PyTorch fp32, ONNX Runtime fp32 and int8 models at B=1, T=16 on the
CPU (:func:`benchmarks.timing.time_interleaved`: every round calls each of them once in a fresh random order, so a
noisy phase of the machine hits all of them alike), each checked against its eager fp32 outputs first.

Resumable: ``--work`` (default ``runs/PREFIX-work``) keeps each backbone's run folder (``train.log`` beside it),
export and int8 export; a rerun skips what is done and resumes a stopped training run. Writes ``PREFIX.json`` (the
environment, the command, the budget, every row with its latency samples), ``PREFIX.md`` (the table) and
``PREFIX.png`` (latency against accuracy, a point per backbone and runtime) into ``--out``
(:class:`benchmarks.outputs.Outputs`: checked before any work; an earlier output of this tool is replaced, another
file of that name only with ``--force``). The CIFAR-10 folder comes from ``--data-dir`` or the ``CNN_BILSTM_CIFAR10``
variable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.accuracy import TOLERANCES, rel_error
from benchmarks.contenders import prepare_contender
from benchmarks.context import BenchContext
from benchmarks.environment import command_line, environment
from benchmarks.outputs import Outputs
from benchmarks.timing import default_gap_s, paired_speedup, percentiles, time_interleaved
from runtime._io import atomic_write_json, sha256_file
from runtime.model import BACKBONES, backbone_width

DATA_ENV = "CNN_BILSTM_CIFAR10"
CONTENDERS = ("eager-fp32", "ort-fp32", "ort-int8")
HEADING = "# Backbones: CPU latency against held-out accuracy"
BUDGET = ("frames", "frame_size", "train_clips", "val_clips", "epochs", "batch_size", "lr", "hidden_size", "seed")


def train_command(args, backbone: str, run: Path) -> list[str]:
    """``python -m train`` for one backbone's budget; resumes a run that stopped (restarts one without an epoch)."""
    if (run / "last.pt").is_file():
        return [sys.executable, "-m", "train", "--resume", str(run), "--no-progress"]
    return [sys.executable, "-m", "train", "--data", args.data, *(["--data-dir", args.data_dir] if args.data_dir
                                                                   else []),
            "--backbone", backbone, "--stem", "cifar", "--frames", str(args.frames), "--frame-size",
            str(args.frame_size), "--train-clips", str(args.train_clips), "--val-clips", str(args.val_clips),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--hidden-size", str(args.hidden_size), "--num-layers", "1", "--seed", str(args.seed), "--device", "cpu",
            "--no-progress", "--no-eval-shuffled", "--out", str(run), "--force"]


def _run(cmd: list[str], log: Path, what: str) -> float:
    """Run a stage's CLI with its output in ``log``; its wall seconds.

    Raises:
        RuntimeError: it failed; the message holds the end of its log.
    """
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (exit {code}; {log}): {' | '.join(tail)}")
    return time.perf_counter() - t0


def _exported_from(folder: Path, checkpoint: Path) -> bool:
    """Whether ``folder`` holds a finished export of ``checkpoint`` (its report names the checkpoint's sha256)."""
    try:
        report = json.loads((folder / "export_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return report.get("ok", True) and report.get("checkpoint_sha256") == sha256_file(checkpoint)


def prepare_backbone(args, backbone: str, work: Path) -> dict:
    """Train (or resume), export and quantize one backbone; its row without latencies."""
    folder = work / backbone
    folder.mkdir(parents=True, exist_ok=True)
    run, fp32, int8, log = folder / "run", folder / "fp32", folder / "int8", folder / "train.log"
    seconds = _run(train_command(args, backbone, run), log, f"{backbone}: training")
    history = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    ckpt = run / "last.pt"
    if not _exported_from(fp32, ckpt):
        _run([sys.executable, "-m", "export.to_onnx", str(ckpt), "--out", str(fp32), "--force"], log,
             f"{backbone}: export")
    row = {"backbone": backbone, "seconds_this_call": round(seconds, 1), "epochs": len(history),
           "train_seconds": round(sum(r["time"] for r in history), 1), "clip_acc": history[-1]["val_clip_acc"],
           "frame_acc": history[-1]["val_frame_acc"], "checkpoint": str(ckpt), "fp32": str(fp32), "int8": None}
    if not _exported_from(int8, ckpt):
        cmd = [sys.executable, "-m", "export.quantize", str(fp32), "--out", str(int8), "--data", args.data,
               "--frames", str(args.frames), "--calibration-clips", str(args.calibration_clips), "--verify-clips",
               str(args.val_clips), "--min-agreement", str(args.min_agreement), "--seed", str(args.seed), "--force",
               *(["--data-dir", args.data_dir] if args.data_dir else [])]
        try:
            _run(cmd, log, f"{backbone}: int8")
        except RuntimeError as e:  # a failed gate is a result: the row says so and int8 is not timed
            row["int8_error"] = str(e)
            return row
    v = json.loads((int8 / "export_report.json").read_text(encoding="utf-8"))["verification"]
    row.update(int8=str(int8), int8_agreement=v["clip_agreement"], int8_clip_acc=v.get("clip_accuracy_int8"),
               fp32_clip_acc_check=v.get("clip_accuracy_fp32"))
    return row


def time_backbones(rows: list[dict], args, work: Path, progress=None) -> dict:
    """Check every backbone's contenders against its eager fp32 outputs, then time them all in one interleaved run.

    Returns:
        dict: ``samples`` ("BACKBONE CONTENDER" -> latency samples, ms), ``errors`` (same keys -> rel. error) and
        the load averages before and after the timed rounds.

    Raises:
        ValueError: a contender's outputs exceed its tolerance (timing a wrong answer is pointless).
    """
    contexts, prepared, errors = [], {}, {}
    try:
        for row in rows:
            ctx = BenchContext(Path(row["checkpoint"]), "cpu", work / row["backbone"] / "bench",
                               ort_threads=args.ort_threads, onnx_dir=Path(row["fp32"]),
                               int8_dir=Path(row["int8"]) if row["int8"] else None)
            contexts.append(ctx)
            reference = ctx.reference("model", args.batch, args.time)
            for contender in CONTENDERS if row["int8"] else CONTENDERS[:2]:
                key = f"{row['backbone']} {contender}"
                prepared[key] = prepare_contender(ctx, contender, "model", args.batch, args.time)
                errors[key] = rel_error(prepared[key].probe(), reference)
                if not errors[key] <= TOLERANCES[prepared[key].precision]:
                    raise ValueError(f"{key}: norm-relative error {errors[key]:.3g} against eager fp32 exceeds the "
                                     f"{prepared[key].precision} tolerance")
        timed = time_interleaved(prepared, args.rounds, warmup=args.warmup, seed=args.seed,
                                 gap_s=default_gap_s("cpu"), progress=progress)
    finally:
        for ctx in contexts:
            ctx.close()
    return {"samples": timed.wall_ms, "errors": errors, "load_average_before": timed.load_before,
            "load_average_after": timed.load_after}


def add_latencies(rows: list[dict], timed: dict) -> None:
    """Each row's median latencies and paired speedups over its own eager fp32, from one interleaved run."""
    samples = timed["samples"]
    for row in rows:
        base = samples[f"{row['backbone']} eager-fp32"]
        row["latency"] = {}
        for contender in CONTENDERS:
            key = f"{row['backbone']} {contender}"
            if key in samples:
                row["latency"][contender] = {**percentiles(samples[key]), "rel_error": timed["errors"][key],
                                             "speedup": paired_speedup(base, samples[key], seed=0),
                                             "samples_ms": samples[key]}


def _cell(row: dict, contender: str) -> str:
    lat = row.get("latency", {}).get(contender)
    if lat is None:
        return "-"
    speed = "" if contender == "eager-fp32" else f" ({lat['speedup']['median']:.2f}x)"
    return f"{lat['p50_ms']:.1f}{speed}"


def result_markdown(data: dict) -> str:
    """The table of one comparison (``data``: its JSON, with "environment", "command" and "result") with its
    environment line."""
    env, result = data["environment"], data["result"]
    b = result["budget"]
    lines = [HEADING, "", f"`{data['command']}`", "",
             f"{env['device_name']}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; torch threads "
             f"{env.get('torch_threads')}; load average (1, 5, 15 min) before the timed rounds "
             f"{result['load_average_before']}, after {result['load_average_after']}; {env.get('date')}", "",
             f"Training, the same for every backbone, from scratch ({result['data']}; no pretrained weights): "
             f"{b['epochs']} epochs of {b['train_clips']} clips of {b['frames']} frames at {b['frame_size']}x"
             f"{b['frame_size']}, cifar stem, BiLSTM 1x{b['hidden_size']}, batch {b['batch_size']}, lr {b['lr']}, "
             f"seed {b['seed']}. Accuracy: clip top-1 on {b['val_clips']} held-out clips after the last epoch. "
             f"Latency: median ms per call at B={result['batch']}, T={result['time']}, {result['rounds']} "
             "interleaved rounds (every model once per round, random order, 100 ms untimed pause before each call); "
             "in brackets the median per-round speedup over the same backbone's eager fp32.", "",
             "| backbone | feature width | clip acc fp32 | clip acc int8 (agreement) | eager fp32 ms | "
             "ORT fp32 ms | ORT int8 ms | training s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        int8 = (f"{r['int8_clip_acc']:.3f} ({r['int8_agreement']:.3f})" if r.get("int8_clip_acc") is not None
                else "failed its gate" if r.get("int8_error") else "-")
        lines.append(f"| {r['backbone']} | {r.get('feature_dim', '?')} | {r['clip_acc']:.3f} | {int8} | "
                     f"{_cell(r, 'eager-fp32')} | {_cell(r, 'ort-fp32')} | {_cell(r, 'ort-int8')} | "
                     f"{r['train_seconds']:.0f} |")
    lines += [f"\n{r['backbone']}: int8 not timed: {r['int8_error']}" for r in result["rows"] if r.get("int8_error")]
    return "\n".join(lines) + "\n"


def plot_backbones(result: dict, plt):
    """Latency (log scale) against held-out clip accuracy: a point per backbone and runtime (a marker per runtime,
    a colour and a line per backbone, both named in the legend).

    Args:
        result (dict): the JSON's "result".
        plt: ``matplotlib.pyplot``.

    Returns:
        the figure.
    """
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    markers = {"eager-fp32": "o", "ort-fp32": "s", "ort-int8": "^"}
    for r in result["rows"]:
        points = [(lat["p50_ms"], r["int8_clip_acc"] if c == "ort-int8" else r["clip_acc"], c)
                  for c, lat in r.get("latency", {}).items() if c != "ort-int8" or r.get("int8_clip_acc") is not None]
        # In the legend by colour (labels beside the points overlap where backbones score alike).
        color = ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=0.8,
                        label=r["backbone"])[0].get_color()
        for x, y, c in points:
            ax.scatter([x], [y], marker=markers[c], color=color)
    for c, m in markers.items():
        ax.scatter([], [], marker=m, color="gray", label=c)
    ax.set(xscale="log", xlabel=f"median latency, ms (B={result['batch']}, T={result['time']}, CPU)",
           ylabel="held-out clip accuracy", title="Backbones: latency against accuracy (same training budget)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbones", add_help=add_help,
                                description="CPU latency against held-out accuracy, one row per backbone")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma list (default: all)")
    p.add_argument("--data", choices=("cifar10", "synthetic"), default="cifar10", help="training data (default cifar10)")
    p.add_argument("--data-dir", default=os.environ.get(DATA_ENV),
                   help=f"CIFAR-10 folder (ImageFolder train/ and test/; default: ${DATA_ENV})")
    budget = p.add_argument_group("training budget, the same for every backbone")
    budget.add_argument("--frames", type=int, default=4, help="clip length T for training (default 4)")
    budget.add_argument("--frame-size", type=int, default=32, help="frame height and width (default 32)")
    budget.add_argument("--train-clips", type=int, default=512, help="training clips per epoch (default 512)")
    budget.add_argument("--val-clips", type=int, default=256, help="held-out clips (default 256)")
    budget.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    budget.add_argument("--batch-size", type=int, default=32, help="clips per batch (default 32)")
    budget.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    budget.add_argument("--hidden-size", type=int, default=128, help="LSTM hidden size (default 128)")
    budget.add_argument("--calibration-clips", type=int, default=64, help="int8 calibration clips (default 64)")
    budget.add_argument("--min-agreement", type=float, default=0.98, help="int8 gate (default 0.98)")
    timing = p.add_argument_group("timing")
    timing.add_argument("--batch", type=int, default=1, help="B of the timed calls (default 1)")
    timing.add_argument("--time", type=int, default=16, help="T of the timed calls (default 16)")
    timing.add_argument("--rounds", type=int, default=30, help="timed interleaved rounds (default 30)")
    timing.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    timing.add_argument("--ort-threads", type=int, default=None, help="ONNX Runtime threads (default: usable cores)")
    p.add_argument("--seed", type=int, default=0, help="data, weights and order seed (default 0)")
    p.add_argument("--out", required=True, help="folder for PREFIX.json/.md/.png")
    p.add_argument("--prefix", default="backbones", help="file name stem (default backbones)")
    p.add_argument("--work", default=None, help="folder for the runs and exports of this budget (default "
                   "runs/PREFIX-work); a rerun skips what is done there, and refuses another budget")
    p.add_argument("--force", action="store_true", help="replace --out files these tools did not write")
    return p


def _check_args(args, outputs: Outputs) -> None:
    """Before any work: the options, then the output files.

    Raises:
        ValueError: the first problem (an OutputPathError for the outputs).
    """
    unknown = [b for b in args.backbones.split(",") if b not in BACKBONES]
    if unknown or not args.backbones:
        raise ValueError(f"--backbones {args.backbones}: valid names are {', '.join(BACKBONES)}")
    for name in ("frames", "frame_size", "train_clips", "val_clips", "epochs", "batch_size", "hidden_size",
                 "calibration_clips", "batch", "time", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.data == "cifar10" and not (args.data_dir and Path(args.data_dir).is_dir()):
        raise ValueError(f"--data cifar10 needs the CIFAR-10 folder: give --data-dir DIR or set {DATA_ENV} (got "
                         f"{args.data_dir!r})")
    outputs.check()


def compare(args, work: Path) -> dict:
    """Train, export and quantize every backbone in ``work`` (resuming what is there), then time them all in one
    interleaved run; the JSON's "result".

    Raises:
        RuntimeError: a stage failed (its log is named).
        ValueError: a contender's outputs exceed its tolerance.
    """
    rows = []
    for backbone in args.backbones.split(","):
        print(f"{backbone}: training, export, int8 (log: {work / backbone / 'train.log'})", file=sys.stderr)
        rows.append({**prepare_backbone(args, backbone, work), "feature_dim": backbone_width(backbone)})
    print(f"timing {len(rows)} backbones, {args.rounds} interleaved rounds", file=sys.stderr)
    timed = time_backbones(rows, args, work)
    add_latencies(rows, timed)
    return {"data": args.data, "batch": args.batch, "time": args.time, "rounds": args.rounds,
            "load_average_before": timed["load_average_before"], "load_average_after": timed["load_average_after"],
            "budget": {k: getattr(args, k) for k in BUDGET}, "rows": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the comparison; 0 when written, 2 for bad input, 1 when a stage fails (its log is named)."""
    args = get_args_parser().parse_args(argv)
    outputs = Outputs(args.out, args.prefix, force=args.force)
    try:
        _check_args(args, outputs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path("runs") / f"{args.prefix}-work"
    budget = {k: getattr(args, k) for k in (*BUDGET, "data", "calibration_clips")}
    saved = work / "budget.json"
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != budget:
        print(f"error: {work} holds runs of another training budget ({saved}); give another --work (or the same "
              "options)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, budget)
    env = environment("cpu")  # before the work: the date and load average at the start
    try:
        result = compare(args, work)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    data = {"environment": env, "result": result,
            "command": command_line("benchmarks.backbones", argv)}
    text = result_markdown(data)
    written = outputs.write(text, data, {"": lambda plt: plot_backbones(result, plt)})
    print(text, end="")
    print("".join(f"wrote {path}\n" for path in written.values()), end="", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
