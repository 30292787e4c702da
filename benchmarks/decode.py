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
the load average before and after, the machine and the versions go to ``PREFIX.json`` and ``PREFIX.md`` in ``--out``.

    python -m benchmarks.decode --out benchmarks/results --prefix 2026-12-01-cpu-decode
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from runtime.video_write import write_video  # light: PyAV is imported when a video is written


def _frames(seconds: float, fps: int, height: int, width: int, seed: int = 0):
    """A moving scene, frame by frame: drifting colour gradients, two moving discs and mild noise (so the encoder
    has real motion and texture to code)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(int(round(seconds * fps))):
        a = 2 * np.pi * t / (fps * 4)
        img = np.empty((height, width, 3), np.float32)
        img[..., 0] = 128 + 80 * np.sin(xx / 37 + a)
        img[..., 1] = 128 + 80 * np.cos(yy / 29 - a)
        img[..., 2] = 128 + 60 * np.sin((xx + yy) / 53 + 2 * a)
        for k, (r, speed) in enumerate(((height / 6, 1.0), (height / 9, -1.7))):
            cy = height / 2 + height / 3 * np.sin(speed * a + k)
            cx = width / 2 + width / 3 * np.cos(speed * a)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (240, 40 + 150 * k, 60)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8)


def demo_config():
    """The model of ``python -m train --preset demo`` (resnet18, imagenet stem, 24x24, BiLSTM 1x64, 4 classes)."""
    from runtime.model import ModelConfig

    return ModelConfig(num_classes=4, backbone="resnet18", stem="imagenet", frame_size=(24, 24), hidden_size=64,
                       num_layers=1, dropout=0.0)


def run(out: Path, prefix: str, seconds: float, fps: int, height: int, width: int, rounds: int,
        gap_s: float, threads: int = 0, video_dir: Optional[Path] = None) -> dict:
    """Write the videos, time every task interleaved, and return the results (also written as JSON and Markdown)."""
    import random

    import torch

    from benchmarks.environment import environment
    from benchmarks.workloads import reference_config
    from runtime._io import atomic_write_json, atomic_write_text
    from runtime.model import build_random_model
    from runtime.video import VideoReader, probe_video

    load_before = os.getloadavg()
    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="decode-bench-"))
    folder = video_dir or tmp
    videos = {}
    for name, options in (("gop250", {"crf": "23", "preset": "medium"}),
                          ("gop30", {"crf": "23", "preset": "medium", "g": str(fps)})):
        videos[name] = folder / f"{name}-{seconds:g}s-{width}x{height}-{fps}fps.mp4"
        if videos[name].is_file():  # --video-dir: written by an earlier run with these settings
            continue
        t0 = time.perf_counter()
        write_video(videos[name], _frames(seconds, fps, height, width), fps, options=options)
        print(f"wrote {videos[name].name}: {videos[name].stat().st_size / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    infos = {name: {**probe_video(p).to_dict(), "path": p.name} for name, p in videos.items()}  # no machine paths
    models = {"demo": demo_config(), "reference": reference_config()}
    nets = {name: build_random_model(cfg, seed=0).eval() for name, cfg in models.items()}
    size = tuple(models["demo"].frame_size)

    def sequential(path, frame_size):
        with VideoReader(path, frame_size, threads=threads) as r:
            return sum(1 for _ in r.iter_frames())

    def uniform16(path):
        with VideoReader(path, size, threads=threads) as r:
            return r.read_clip(16)

    tasks = {}
    for name, path in videos.items():
        tasks[f"open {name}"] = lambda p=path: probe_video(p)
        tasks[f"uniform16 {name} @24x24"] = lambda p=path: uniform16(p)
        tasks[f"sequential {name} @24x24"] = lambda p=path: sequential(p, size)
    tasks["sequential gop250 @native (RGB only)"] = lambda: sequential(videos["gop250"], None)
    for name, net in nets.items():
        x = torch.randn(1, 16, 3, *models[name].frame_size)

        def infer(net=net, x=x):
            with torch.no_grad():
                net(x)

        tasks[f"model {name} B1 T16"] = infer
    samples = {k: [] for k in tasks}
    cpu = {k: [] for k in tasks}
    order = list(tasks)
    for fn in tasks.values():  # warm-up, untimed
        fn()
    rng = random.Random(0)
    for done in range(rounds):
        rng.shuffle(order)
        for k in order:
            time.sleep(gap_s)
            t0, c0 = time.perf_counter(), time.process_time()
            tasks[k]()
            samples[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
        print(f"round {done + 1}/{rounds}", file=sys.stderr)
    n = infos["gop250"]["num_frames"]
    rows = []
    for k, ms in samples.items():
        med = float(np.median(ms))
        frames = n if k.startswith("sequential") else (16 if k.startswith(("uniform16", "model")) else 0)
        cpu_med = float(np.median(cpu[k]))
        rows.append({"task": k, "median_ms": round(med, 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2),
                     "cpu_median_ms": round(cpu_med, 2), "frames": frames,
                     "frames_per_s": round(frames / med * 1e3, 1) if frames else None,
                     "frames_per_cpu_s": round(frames / cpu_med * 1e3, 1) if frames and cpu_med else None})
    med = {r["task"]: r["median_ms"] for r in rows}
    cpu_med = {r["task"]: r["cpu_median_ms"] for r in rows}
    verdict = {}
    for g in videos:
        for m in nets:
            d, c = med[f"uniform16 {g} @24x24"], med[f"model {m} B1 T16"]
            dc, cc = cpu_med[f"uniform16 {g} @24x24"], cpu_med[f"model {m} B1 T16"]
            verdict[f"{g} + {m}"] = {"decode_ms": d, "model_ms": c, "decode_share": round(d / (d + c), 3),
                                     "decode_cpu_ms": dc, "model_cpu_ms": cc,
                                     "decode_cpu_share": round(dc / (dc + cc), 3),
                                     "bottleneck": "decoding" if d > c else "model"}
    env = environment("cpu")
    import av

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.decode " + " ".join(sys.argv[1:]),
        "environment": {**env, "av": av.__version__, "ffmpeg": dict(av.library_versions).get("libavcodec")},
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "videos": infos, "rounds": rounds, "gap_s": gap_s, "threads": threads or "default", "results": rows,
        "classify_clip": verdict,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{prefix}.json", result)
    atomic_write_text(out / f"{prefix}.md", _markdown(result))
    if video_dir is None:
        for p in videos.values():
            p.unlink()
    tmp.rmdir()
    return result


def _markdown(r: dict) -> str:
    env = r["environment"]
    v = r["videos"]["gop250"]
    lines = [
        f"# Video decoding against the model on a CPU ({r['date'][:10]})", "",
        f"`{r['command']}`", "",
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
    p.add_argument("--force", action="store_true", help="replace existing PREFIX.json / PREFIX.md")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 on success, 2 for bad arguments or an existing output without --force."""
    from runtime._io import check_output_file
    from runtime.errors import RuntimeInputError

    args = get_args_parser().parse_args(argv)
    try:
        if args.seconds <= 0 or args.fps < 1 or args.rounds < 1 or args.gap < 0 or min(args.size) < 16 \
                or args.threads < 0:
            raise RuntimeInputError("need --seconds > 0, --fps >= 1, --rounds >= 1, --gap >= 0, --size >= 16 16, "
                                    "--threads >= 0")
        for suffix in (".json", ".md"):
            check_output_file(Path(args.out) / f"{args.prefix}{suffix}", what="output", suffixes=(suffix,),
                              force=args.force)
    except RuntimeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    video_dir = None if args.video_dir is None else Path(args.video_dir)
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    result = run(Path(args.out), args.prefix, args.seconds, args.fps, args.size[0], args.size[1], args.rounds,
                 args.gap, args.threads, video_dir)
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
