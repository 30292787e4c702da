"""``python -m benchmarks.decode``: is decoding or the model the bottleneck of ``python -m runtime classify`` on a CPU?

Writes a synthetic test video (default 10 s of 854x480 at 30 fps, H.264 with libx264's defaults: preset medium,
CRF 23, a keyframe every 250 frames; and the same with a keyframe every second, as phones and streams write them),
then times, interleaved round by round with an untimed pause before every call (see
:func:`benchmarks.timing.time_interleaved` for why):

- ``open``: opening the video (demuxing its packets, no decoding): what every read pays first;
- ``uniform16``: one ``uniform`` clip of 16 frames at the model's frame size, as ``runtime classify`` reads a video
  (open, seek, decode, RGB conversion, resize);
- ``sequential``: every frame decoded, converted and resized in one pass (``--windows`` and ``stream`` read this way);
- ``model``: eager PyTorch inference of one clip (B=1, T=16) on the demo model (and the reference model), random
  weights, ``torch.no_grad``.

Frames per second are 16 / time for a clip and N / time for a sequential pass. Nothing is asserted: the numbers,
the load average before and after, the machine and the versions go to ``PREFIX.json`` and ``PREFIX.md`` in ``--out``
(an earlier output of this tool is replaced; another file of that name only with ``--force``).

    python -m benchmarks.decode --out benchmarks/results --prefix 2026-12-01-cpu-decode
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.outputs import Outputs
from benchmarks.timing import Rounds, Task, time_interleaved
from benchmarks.workloads import reference_config, write_test_video

logger = logging.getLogger(__name__)


def demo_config():
    """The model of ``python -m train --preset demo`` (resnet18, imagenet stem, 24x24, BiLSTM 1x64, 4 classes)."""
    from runtime.model import ModelConfig

    return ModelConfig(num_classes=4, backbone="resnet18", stem="imagenet", frame_size=(24, 24), hidden_size=64,
                       num_layers=1, dropout=0.0)


def write_videos(folder: Path, seconds: float, fps: int, height: int, width: int) -> dict[str, Path]:
    """The two test videos (:func:`benchmarks.workloads.write_test_video`; ``gop250``: libx264's keyframe interval,
    ``gop30``: a keyframe every second) in ``folder``; a video an earlier run wrote there with these settings is
    reused."""
    videos = {}
    for name, keyframe_interval in (("gop250", None), ("gop30", fps)):
        videos[name] = folder / f"{name}-{seconds:g}s-{width}x{height}-{fps}fps.mp4"
        if not videos[name].is_file():
            t0 = time.perf_counter()
            write_test_video(videos[name], int(round(seconds * fps)), (height, width), fps=fps,
                             keyframe_interval=keyframe_interval)
            logger.info("wrote %s: %.1f MB in %.0f s", videos[name].name, videos[name].stat().st_size / 1e6,
                        time.perf_counter() - t0)
    return videos


def make_tasks(videos: dict[str, Path], threads: int) -> dict[str, Task]:
    """Every timed task: per video ``open``, ``uniform16`` and ``sequential`` at the demo model's frame size, one
    sequential pass at the native size, and eager inference (B=1, T=16) of the demo and the reference model."""
    import torch

    from runtime.model import build_random_model
    from runtime.video import VideoReader, probe_video

    size = demo_config().frame_size

    def sequential(path, frame_size):
        with VideoReader(path, frame_size, threads=threads) as r:
            return sum(1 for _ in r.iter_frames())

    def uniform16(path):
        with VideoReader(path, size, threads=threads) as r:
            return r.read_clip(16)

    tasks = {}
    for name, path in videos.items():
        tasks[f"open {name}"] = Task(fn=lambda _, p=path: probe_video(p))
        tasks[f"uniform16 {name} @24x24"] = Task(fn=lambda _, p=path: uniform16(p))
        tasks[f"sequential {name} @24x24"] = Task(fn=lambda _, p=path: sequential(p, size))
    tasks["sequential gop250 @native (RGB only)"] = Task(fn=lambda _: sequential(videos["gop250"], None))
    for name, config in (("demo", demo_config()), ("reference", reference_config())):
        net = build_random_model(config, seed=0).eval()

        def infer(x, net=net):
            with torch.no_grad():
                net(x)

        tasks[f"model {name} B1 T16"] = Task(fn=infer, inputs=[torch.randn(1, 16, 3, *config.frame_size)])
    return tasks


def summarize(timed: Rounds, num_frames: int) -> list[dict]:
    """One row per task: medians of wall and CPU time, frames per second of each (a clip is 16 frames, a sequential
    pass ``num_frames``)."""
    rows = []
    for k, ms in timed.wall_ms.items():
        med, cpu_med = float(np.median(ms)), float(np.median(timed.cpu_ms[k]))
        frames = num_frames if k.startswith("sequential") else (16 if k.startswith(("uniform16", "model")) else 0)
        rows.append({"task": k, "median_ms": round(med, 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2),
                     "cpu_median_ms": round(cpu_med, 2), "frames": frames,
                     "frames_per_s": round(frames / med * 1e3, 1) if frames else None,
                     "frames_per_cpu_s": round(frames / cpu_med * 1e3, 1) if frames and cpu_med else None})
    return rows


def classify_verdict(rows: list[dict]) -> dict:
    """Per video and model: one ``runtime classify`` clip (decoding uniform16, then the model), which part is the
    bottleneck by wall time, and the shares of each by wall and CPU time."""
    med = {r["task"]: r["median_ms"] for r in rows}
    cpu = {r["task"]: r["cpu_median_ms"] for r in rows}
    verdict = {}
    for g in ("gop250", "gop30"):
        for m in ("demo", "reference"):
            clip, model = f"uniform16 {g} @24x24", f"model {m} B1 T16"
            d, c, dc, cc = med[clip], med[model], cpu[clip], cpu[model]
            verdict[f"{g} + {m}"] = {"decode_ms": d, "model_ms": c, "decode_share": round(d / (d + c), 3),
                                     "decode_cpu_ms": dc, "model_cpu_ms": cc,
                                     "decode_cpu_share": round(dc / (dc + cc), 3),
                                     "bottleneck": "decoding" if d > c else "model"}
    return verdict


def run(seconds: float, fps: int, height: int, width: int, rounds: int, gap_s: float, threads: int = 0,
        video_dir: Optional[Path] = None, progress=None) -> dict:
    """Write the videos (into ``video_dir``, kept, or a temporary folder), time every task interleaved with its CPU
    time, and return the result (``videos``, ``results`` rows, ``classify_clip`` verdicts, the run's settings)."""
    import torch

    from runtime.video import probe_video

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        videos = write_videos(video_dir or Path(tmp), seconds, fps, height, width)
        infos = {name: {**probe_video(p).to_dict(), "path": p.name} for name, p in videos.items()}  # no machine paths
        timed = time_interleaved(make_tasks(videos, threads), rounds, gap_s=gap_s, cpu_time=True, progress=progress)
    rows = summarize(timed, infos["gop250"]["num_frames"])
    return {"videos": infos, "rounds": rounds, "gap_s": gap_s, "threads": threads or "default",
            "load_average_before": timed.load_before, "load_average_after": timed.load_after, "results": rows,
            "classify_clip": classify_verdict(rows)}


def _markdown(data: dict) -> str:
    env, r = data["environment"], data["result"]
    v = r["videos"]["gop250"]
    lines = [
        f"# Video decoding against the model on a CPU ({env['date'][:10]})", "",
        f"`{data['command']}`", "",
        f"Machine: {env['host_cpu']}; torch {env['torch']} ({env['torch_threads']} threads), PyAV {env['av']} "
        f"(libavcodec {env['ffmpeg']}), numpy {env['numpy']}. Load average (1, 5, 15 min) before "
        f"{r['load_average_before']}, after {r['load_average_after']} (a shared machine: compare ratios within "
        "this run). ", "",
        f"Video: {v['width']}x{v['height']}, {v['num_frames']} frames at {v['fps']:g} fps ({v['duration_s']:g} s), "
        f"H.264 (libx264 preset medium, CRF 23); gop250: {r['videos']['gop250']['keyframes']} keyframes, gop30: "
        f"{r['videos']['gop30']['keyframes']}. Interleaved rounds: {r['rounds']}, pause {r['gap_s']} s before each "
        f"call; torch and decoder threads: {r['threads']}. Medians of wall time and of this process's CPU time "
        "(CPU time is less sensitive to other processes on a shared machine).", "",
        "| task | median ms | min ms | max ms | CPU ms | frames | frames/s | frames/CPU-s |",
        "|---|---|---|---|---|---|---|---|"]
    for row in r["results"]:
        lines.append(f"| {row['task']} | {row['median_ms']} | {row['min_ms']} | {row['max_ms']} | "
                     f"{row['cpu_median_ms']} | {row['frames'] or ''} | {row['frames_per_s'] or ''} | "
                     f"{row['frames_per_cpu_s'] or ''} |")
    lines += ["", "One `runtime classify` clip (uniform T=16 read at the model's size, then the model at B=1, T=16):",
              "", "| video + model | decode ms | model ms | decode share | decode CPU ms | model CPU ms | "
              "decode CPU share | bottleneck (wall) |", "|---|---|---|---|---|---|---|---|"]
    for k, c in r["classify_clip"].items():
        lines.append(f"| {k} | {c['decode_ms']} | {c['model_ms']} | {c['decode_share']:.0%} | {c['decode_cpu_ms']} "
                     f"| {c['model_cpu_ms']} | {c['decode_cpu_share']:.0%} | {c['bottleneck']} |")
    return "\n".join(lines) + "\n"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.splitlines()[0],
                                add_help=add_help)
    p.add_argument("--out", required=True, help="folder for PREFIX.json and PREFIX.md")
    p.add_argument("--prefix", default="decode", help="file name prefix (default decode)")
    p.add_argument("--seconds", type=float, default=10.0, help="video length (default 10)")
    p.add_argument("--fps", type=int, default=30, help="frame rate (default 30)")
    p.add_argument("--size", type=int, nargs=2, default=[480, 854], metavar=("H", "W"),
                   help="frame height and width (default 480 854)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    p.add_argument("--gap", type=float, default=0.1, help="untimed pause before every call, s (default 0.1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads and decoder threads (default 0: torch's and FFmpeg's own choice)")
    p.add_argument("--video-dir", default=None,
                   help="keep the generated videos here and reuse them in later runs (default: a temporary folder)")
    p.add_argument("--force", action="store_true", help="replace existing PREFIX.json / PREFIX.md that these tools did not write")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 on success, 2 for bad arguments or an output that may not be written."""
    import av

    from benchmarks.environment import command_line, environment

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    outputs = Outputs(args.out, args.prefix, plots=(), force=args.force)
    try:
        if args.seconds <= 0 or args.fps < 1 or args.rounds < 1 or args.gap < 0 or min(args.size) < 16 \
                or args.threads < 0:
            raise ValueError("need --seconds > 0, --fps >= 1, --rounds >= 1, --gap >= 0, --size >= 16 16, "
                             "--threads >= 0")
        outputs.check()
    except ValueError as e:  # OutputPathError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    video_dir = None if args.video_dir is None else Path(args.video_dir)
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    result = run(args.seconds, args.fps, args.size[0], args.size[1], args.rounds, args.gap, args.threads, video_dir,
                 progress=lambda done, total: print(f"round {done}/{total}", file=sys.stderr))
    data = {"environment": {**environment("cpu"), "av": av.__version__,
                            "ffmpeg": dict(av.library_versions).get("libavcodec")},
            "command": command_line("benchmarks.decode", argv),
            "result": result}
    text = _markdown(data)
    outputs.write(text, data)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
