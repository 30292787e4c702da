"""``python -m benchmarks.timeline``: the video timeline with each frame's CNN once, against the whole model on every
window (the per-window path), in one interleaved run.

    python -m benchmarks.timeline --out benchmarks/results --prefix DATE-cpu-timeline
    python -m benchmarks.timeline --peak-memory --out benchmarks/results --prefix DATE-cpu-timeline-memory

Timing (the default): the reference model (ResNet-34 cifar stem, 32x32, BiLSTM 2x256; random weights unless
``--checkpoint``) exported to ONNX fp32 and int8, on ONNX Runtime on the CPU; a generated H.264 video
(:func:`benchmarks.workloads.write_test_video`: ``--video-frames``, default 240, at ``--video-size``, default
240x320, 25 fps); windows of ``--frames`` (16) frames, ``--steps`` (1 4 8 16) apart, classified by
:func:`runtime.timeline.window_probabilities` on the split path (the export's ``cnn.onnx`` once per frame,
``bilstm.onnx`` once per window) and on the whole path (``model.onnx`` on every window, as ``python -m runtime
classify --windows`` ran before the split path existed). Each call opens, decodes and classifies the video. A
``decode`` contender decodes every frame at the model's size (open, decode, RGB, resize) in the same rounds: its
time against the timeline's is the decode share. Every contender runs once per round in a fresh random order,
after an untimed pause (:func:`benchmarks.timing.time_interleaved`); the speedup is the median of per-round ratios
(:func:`benchmarks.timing.paired_speedup`). Before timing, both paths' probabilities are compared over every window
(max |difference|). Targets (per-window time / timeline time): STEP 1 >= 8x, STEP 4 >= 3x, STEP 16 >= 0.95x.

``--peak-memory`` measures memory instead (:mod:`benchmarks.timeline_memory`): the timeline of a short and a long
video (>= 5,000 frames at a small size), each in a fresh process.

Writes ``PREFIX.json`` (every sample, the environment, the command), ``PREFIX.md`` and ``PREFIX.png`` (frames per
second and speedup per STEP; none with ``--peak-memory``) into ``--out`` (:class:`benchmarks.outputs.Outputs`: checked
before any work; an earlier output of this tool is replaced, another file of that name only with ``--force``)."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.environment import Unavailable, command_line, environment
from benchmarks.outputs import Outputs
from benchmarks.timeline_memory import memory_markdown, run_memory
from benchmarks.timing import Task, paired_speedup, percentiles, time_interleaved
from benchmarks.workloads import write_test_video

logger = logging.getLogger(__name__)

TARGETS = {1: 8.0, 4: 3.0, 16: 0.95}  # minimum speedup of the timeline over the per-window path, by STEP
PATHS = ("timeline", "per-window")


def prepare_exports(checkpoint: Path, work: Path, precisions: Sequence[str], frame_size, *,
                    onnx_dir: Optional[Path] = None, int8_dir: Optional[Path] = None) -> dict[str, Path]:
    """precision -> export folder (model.onnx, cnn.onnx, bilstm.onnx), built once under ``work`` unless given."""
    from benchmarks.artifacts import Artifacts

    artifacts = Artifacts(checkpoint, work, tuple(frame_size), onnx_dir=onnx_dir, int8_dir=int8_dir)
    return {p: artifacts.onnx_dir(p) for p in precisions}


def _window_models(folders: dict[str, Path]) -> tuple[dict, list]:
    """(precision, path) -> WindowModel, and every runner to close."""
    from runtime.backends import load
    from runtime.stages import WindowModel

    models, runners = {}, []
    for precision, folder in folders.items():
        runner = load(folder / "model.onnx", device="cpu")
        runners.append(runner)
        split = WindowModel.for_runner(runner)
        if not split.split:
            raise Unavailable(f"{folder} has no split stages: {split.reason}")
        models[precision, "timeline"] = split
        models[precision, "per-window"] = WindowModel.for_runner(runner, split=False)
    return models, runners


def exactness(models: dict, video: Path, frames: int, steps: Sequence[int]) -> dict[str, float]:
    """Max |probability difference| between the timeline and the per-window path over every window, per
    "precision STEP"."""
    from runtime.timeline import window_probabilities
    from runtime.video import probe_video
    from runtime.video_sampling import window_starts

    n = probe_video(video).num_frames
    out = {}
    for precision in sorted({p for p, _ in models}):
        for step in steps:
            starts = window_starts(n, frames, step)
            a = window_probabilities(models[precision, "timeline"], video, starts, frames)
            b = window_probabilities(models[precision, "per-window"], video, starts, frames)
            out[f"{precision} {step}"] = float(np.abs(a - b).max())
    return out


def _tasks(models: dict, video: Path, frames: int, steps: Sequence[int], frame_size) -> dict[str, Task]:
    """Every timed call: ``decode`` (every frame at the model's size) and, per (path, precision, STEP), the whole
    video's windows."""
    from runtime.timeline import window_probabilities
    from runtime.video import VideoReader, probe_video
    from runtime.video_sampling import window_starts

    n = probe_video(video).num_frames

    def decode(_):
        with VideoReader(video, frame_size) as reader:
            for _frame in reader.iter_frames():
                pass

    tasks = {"decode": Task(fn=decode)}
    for (precision, path), model in models.items():
        for step in steps:
            starts = window_starts(n, frames, step)
            tasks[f"{path} {precision} step {step}"] = Task(
                fn=lambda _, m=model, s=starts: window_probabilities(m, video, s, frames))
    return tasks


def _rows(samples: dict, n: int, frames: int, steps: Sequence[int], precisions: Sequence[str]) -> list[dict]:
    from runtime.video_sampling import window_starts

    decode_ms = float(np.median(samples["decode"]))
    rows = []
    for precision in precisions:
        for step in steps:
            t, w = samples[f"timeline {precision} step {step}"], samples[f"per-window {precision} step {step}"]
            ratio = paired_speedup(w, t)
            target = TARGETS.get(step)
            rows.append({
                "precision": precision, "step": step, "windows": len(window_starts(n, frames, step)),
                "timeline_ms": percentiles(t), "per_window_ms": percentiles(w),
                "timeline_fps": round(n / np.median(t) * 1e3, 1), "per_window_fps": round(n / np.median(w) * 1e3, 1),
                "speedup": round(ratio["median"], 3), "speedup_ci95": [round(v, 3) for v in ratio["ci95"]],
                "faster_rounds": ratio["faster_rounds"], "target": target,
                "target_met": None if target is None else bool(ratio["median"] >= target),
                "decode_share_timeline": round(decode_ms / float(np.median(t)), 3),
                "decode_share_per_window": round(decode_ms / float(np.median(w)), 3)})
    return rows


def _setup(args, work: Path, precisions: Sequence[str]) -> tuple:
    """(model name, frame size, precision -> export folder) of the checkpoint the arguments name."""
    from benchmarks.workloads import reference_config, smoke_config, write_random_checkpoint
    from runtime.checkpoint import load_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else write_random_checkpoint(
        work / "model.pt", smoke_config() if args.smoke else reference_config())
    frame_size = tuple(load_checkpoint(checkpoint).config.frame_size)
    folders = prepare_exports(checkpoint, work, precisions, frame_size,
                              onnx_dir=Path(args.onnx_dir) if args.onnx_dir else None,
                              int8_dir=Path(args.int8_dir) if args.int8_dir else None)
    name = checkpoint.name if args.checkpoint else ("smoke" if args.smoke else "reference")
    return name, frame_size, folders


def run_timing(args, work: Path, progress=None) -> dict[str, Any]:
    """Export, write the video, check exactness, time interleaved; the result (not yet written)."""
    from runtime.video import probe_video

    name, frame_size, folders = _setup(args, work, args.precisions)
    video = write_test_video(work / "video.mp4", args.video_frames, args.video_size)
    info = probe_video(video)
    models, runners = _window_models(folders)
    try:
        exact = exactness(models, video, args.frames, args.steps)
        timed = time_interleaved(_tasks(models, video, args.frames, args.steps, frame_size), args.rounds,
                                 warmup=1, gap_s=args.gap, progress=progress)
    finally:
        for m in models.values():
            m.close()
        for r in runners:
            r.deactivate()
    return {"model": name, "frame_size": list(frame_size), "frames_per_window": args.frames, "rounds": args.rounds,
            "gap_s": args.gap, "video": {**info.to_dict(), "path": Path(info.path).name},
            "load_average_before": timed.load_before, "load_average_after": timed.load_after,
            "exactness_max_abs_dprob": exact, "decode_ms": percentiles(timed.wall_ms["decode"]),
            "rows": _rows(timed.wall_ms, info.num_frames, args.frames, args.steps, args.precisions),
            "samples_ms": timed.wall_ms}


def run_peak_memory(args, work: Path) -> dict[str, Any]:
    """Export fp32, write a short (``--video-frames``) and a long (``--long-frames``) video at ``--memory-size``,
    and measure the timeline's memory on each at the smallest of ``--steps``
    (:func:`benchmarks.timeline_memory.run_memory`)."""
    name, _, folders = _setup(args, work, ["fp32"])
    videos = {kind: write_test_video(work / f"{kind}.mp4", count, args.memory_size)
              for kind, count in (("short", args.video_frames), ("long", args.long_frames))}
    result = run_memory(folders["fp32"] / "model.onnx", videos, args.frames, min(args.steps))
    return {"model": name, "video_size": list(args.memory_size), **result}


def _markdown(data: dict) -> str:
    env, result = data["environment"], data["result"]
    v = result["video"]
    lines = [f"# Timeline: each frame's CNN once against the whole model per window ({env['date']})", "",
             f"`{data['command']}`", "",
             f"Machine: {env['host_cpu']}; onnxruntime {env.get('onnxruntime')}, torch "
             f"{env['torch']}, numpy {env['numpy']}, package {env['package']}; load average (1, 5, 15 min) before "
             f"the timed rounds {result['load_average_before']}, after {result['load_average_after']}. Model: "
             f"{result['model']}, frames {result['frame_size'][0]}x{result['frame_size'][1]}, windows of "
             f"{result['frames_per_window']} frames. Video: {v['num_frames']} frames, {v['width']}x{v['height']}, "
             f"{v['codec']} at {v['fps']:g} fps. {result['rounds']} interleaved rounds, {result['gap_s']} s untimed "
             "pause before each call; every call opens, decodes and classifies the whole video.", "",
             "| precision | STEP | windows | timeline frames/s | per-window frames/s | speedup (95% CI) | target | "
             "decode share (timeline / per-window) | max abs dprob |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        target = "" if r["target"] is None else f">= {r['target']}x: {'met' if r['target_met'] else 'NOT met'}"
        lo, hi = r["speedup_ci95"]
        exact = result["exactness_max_abs_dprob"][f"{r['precision']} {r['step']}"]
        lines.append(f"| {r['precision']} | {r['step']} | {r['windows']} | {r['timeline_fps']} | "
                     f"{r['per_window_fps']} | {r['speedup']:.2f}x ({lo:.2f}-{hi:.2f}) | {target} | "
                     f"{r['decode_share_timeline']:.0%} / {r['decode_share_per_window']:.0%} | "
                     f"{exact:.1e} |")
    lines += ["", f"Decoding alone (open, decode, RGB, resize to the model's size, every frame): median "
              f"{result['decode_ms']['p50_ms']:.1f} ms ({v['num_frames'] / result['decode_ms']['p50_ms'] * 1e3:.0f} "
              "frames/s). The decode share is its time over the path's time; max abs dprob compares both paths' "
              "probabilities over every window of that STEP."]
    return "\n".join(lines) + "\n"


def plot_timeline(result: dict, plt):
    """Per STEP: video frames per second of both paths (left) and the timeline's speedup with its targets (right).

    Args:
        result (dict): the JSON's "result" of a timing run.
        plt: ``matplotlib.pyplot``.

    Returns:
        the figure.
    """
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    precisions = list(dict.fromkeys(r["precision"] for r in result["rows"]))
    steps = sorted({r["step"] for r in result["rows"]})
    for k, precision in enumerate(precisions):
        rows = [r for r in result["rows"] if r["precision"] == precision]
        x, color = [r["step"] for r in rows], f"C{k}"
        ax.plot(x, [r["timeline_fps"] for r in rows], marker="o", color=color, label=f"timeline {precision}")
        ax.plot(x, [r["per_window_fps"] for r in rows], marker="s", linestyle="--", color=color,
                label=f"per-window {precision}")
        bx.plot(x, [r["speedup"] for r in rows], marker="o", color=color, label=precision)
    targets = [s for s in steps if s in TARGETS]
    bx.scatter(targets, [TARGETS[s] for s in targets], marker="_", s=400, color="k", label="target")
    for a, label in ((ax, "video frames per second"), (bx, "speedup of the timeline (x)")):
        a.set_xscale("log", base=2)
        a.set_xticks(steps, [str(s) for s in steps])
        a.set_xlabel("STEP (frames between window starts)")
        a.set_ylabel(label)
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    fig.suptitle(f"Timeline against per-window, windows of {result['frames_per_window']} frames, "
                 f"{result['video']['num_frames']}-frame video", fontsize=10)
    return fig


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.timeline", description=__doc__.splitlines()[0],
                                add_help=add_help)
    p.add_argument("--out", required=True, help="folder for PREFIX.json, PREFIX.md and PREFIX.png")
    p.add_argument("--prefix", default="timeline", help="file name stem (default timeline)")
    p.add_argument("--checkpoint", default=None, help="a .pt checkpoint (default: the reference model, random weights)")
    p.add_argument("--onnx-dir", default=None, help="its fp32 ONNX export (default: exported here)")
    p.add_argument("--int8-dir", default=None, help="its int8 export (default: quantized here on N(0,1) frames)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "fp16", "int8"])
    p.add_argument("--frames", type=int, default=16, help="T, frames per window (default 16)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8, 16], help="STEPs (default 1 4 8 16)")
    p.add_argument("--video-frames", type=int, default=240, help="frames of the timed video (default 240)")
    p.add_argument("--video-size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"),
                   help="its frame height and width (default 240 320)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    p.add_argument("--gap", type=float, default=0.1, help="untimed pause before every call, s (default 0.1)")
    p.add_argument("--smoke", action="store_true", help="the tiny smoke model instead of the reference model")
    p.add_argument("--peak-memory", action="store_true",
                   help="measure peak memory of the timeline on a short and a long video instead of timing")
    p.add_argument("--long-frames", type=int, default=6000, help="--peak-memory: the long video (default 6000)")
    p.add_argument("--memory-size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"),
                   help="--peak-memory: frame size of both videos (default 48 64)")
    p.add_argument("--workdir", default=None, help="keep exports and videos here (default: a temporary folder)")
    p.add_argument("--force", action="store_true", help="replace existing outputs of another kind")
    return p


def _check_args(args, outputs: Outputs) -> None:
    """Before any work: the options, then the output files.

    Raises:
        ValueError: the first problem (an OutputPathError for the outputs).
    """
    if args.frames < 1 or min(args.steps) < 1 or args.rounds < 1 or args.gap < 0:
        raise ValueError("need --frames >= 1, --steps >= 1, --rounds >= 1 and --gap >= 0")
    if args.video_frames < args.frames or min(args.video_size + args.memory_size) < 16:
        raise ValueError("need --video-frames >= --frames and frame sizes of at least 16x16")
    if args.peak_memory and args.long_frames < args.video_frames:
        raise ValueError("need --long-frames >= --video-frames (the short video)")
    outputs.check()


def _measure(args) -> dict[str, Any]:
    """The timing or the peak-memory result, made in ``--workdir`` or a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="timeline-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.peak_memory:
            return run_peak_memory(args, work)
        return run_timing(args, work, lambda done, total: print(f"round {done}/{total}", file=sys.stderr))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 on success, 2 for bad arguments or outputs, 1 when it cannot run here."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outputs = Outputs(args.out, args.prefix, plots=() if args.peak_memory else ("",), force=args.force)
    try:
        _check_args(args, outputs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = environment("cpu")  # before the work: the date and load average at the start
    try:
        result = _measure(args)
    except (Unavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    data = {"environment": env, "result": result,
            "command": command_line("benchmarks.timeline", argv)}
    text = memory_markdown(data) if args.peak_memory else _markdown(data)
    written = outputs.write(text, data, None if args.peak_memory else {"": lambda plt: plot_timeline(result, plt)})
    print(text + "".join(f"wrote {path}\n" for path in written.values()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
