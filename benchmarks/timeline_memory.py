"""Peak memory of the video timeline on a short and a long video (``python -m benchmarks.timeline --peak-memory``).

The timeline keeps only the features a later window needs, so its memory must not grow with the video. Each video is
measured in fresh processes, two ways:

- ``python -m runtime classify MODEL VIDEO --frames T --windows STEP`` as a user runs it (run by ``runpy``, its
  output discarded): the process's peak resident set size (this includes the per-window results the command prints
  and keeps, which do grow with the number of windows: about 1 kB each);
- :func:`measure` in a ``python -c`` process: :func:`runtime.timeline.window_probabilities` alone: the peak resident
  set size after the model loaded and one window ran (the baseline) and at the end, and the peak of Python and numpy
  allocations during the run (``tracemalloc``; ONNX Runtime's own buffers are not traced, and they do not depend on
  the video).

The peak resident set size is Linux's ``VmHWM`` (``/proc/self/status``): unlike ``getrusage``'s ``ru_maxrss``, it is
not inherited from the parent across fork and exec (a child of a 1.5 GB benchmark process would report 1.5 GB).

Memory is not disturbed by other processes on the machine, so these numbers hold on a shared one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_CHILD = ("import json, sys; from benchmarks.timeline_memory import measure; "
          "print(json.dumps(measure(*json.loads(sys.argv[1]))))")
# python -m runtime ARGS, then the peak RSS on stderr's last line (atexit: after main() returned and printed).
_CLI = ("import atexit, runpy, sys; from benchmarks.timeline_memory import peak_rss_mb; "
        "atexit.register(lambda: print(f'peak_rss_mb {peak_rss_mb()}', file=sys.stderr)); "
        "sys.argv = ['runtime', *sys.argv[1:]]; runpy.run_module('runtime', run_name='__main__', alter_sys=True)")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``VmHWM``).

    Raises:
        ValueError: no ``/proc/self/status`` with ``VmHWM`` (not Linux).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError as e:
        raise ValueError(f"the peak-memory benchmark reads /proc/self/status (Linux): {e}") from e
    raise ValueError("/proc/self/status has no VmHWM line")


def measure(model: str, video: str, frames: int, step: int) -> dict[str, Any]:
    """In this process: the timeline of ``video`` by ``window_probabilities`` on the split path; memory facts."""
    import time
    import tracemalloc

    from runtime.backends import load
    from runtime.stages import WindowModel
    from runtime.timeline import window_probabilities
    from runtime.video import probe_video
    from runtime.video_sampling import window_starts

    runner = load(model, device="cpu")
    with WindowModel.for_runner(runner) as windows:
        runner.deactivate()  # as the command line does: the stages do the work
        n = probe_video(video).num_frames
        window_probabilities(windows, video, [0], frames)  # warm: sessions and buffers made
        base = peak_rss_mb()
        tracemalloc.start()
        t0 = time.perf_counter()
        probs = window_probabilities(windows, video, window_starts(n, frames, step), frames)
        seconds = time.perf_counter() - t0
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # A peak cannot fall; a lower reading is the kernel's accounting (pages reclaimed under memory pressure leave
    # VmHWM behind), so the earlier reading bounds it.
    return {"split": windows.split, "frames": n, "windows": int(len(probs)), "seconds": round(seconds, 2),
            "baseline_rss_mb": base, "peak_rss_mb": max(base, peak_rss_mb()),
            "traced_peak_mb": round(traced / 2**20, 2)}


def cli_max_rss_mb(model: str, video: str, frames: int, step: int) -> float:
    """Peak resident set size of ``python -m runtime classify MODEL VIDEO --frames T --windows STEP``, in MiB.

    Raises:
        ValueError: the command failed (with its error line).
    """
    out = subprocess.run([sys.executable, "-c", _CLI, "classify", model, video, "--frames", str(frames), "--windows",
                          str(step)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    if out.returncode != 0 or not last.startswith("peak_rss_mb "):
        raise ValueError(f"python -m runtime classify exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return float(last.split()[1])


def run_memory(model: Path, videos: dict[str, Path], frames: int, step: int) -> dict[str, Any]:
    """Both measurements for each of ``videos`` (name -> path), each in fresh processes."""
    rows = []
    for name, video in videos.items():
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(model), str(video), frames, step])],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise ValueError(f"the memory measurement of {video.name} failed: {out.stderr.strip()[-800:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"video": name, "file": video.name, **row,
                     "cli_max_rss_mb": cli_max_rss_mb(str(model), str(video), frames, step)})
    return {"frames_per_window": frames, "step": step, "rows": rows}


def memory_markdown(data: dict) -> str:
    """The table of a peak-memory run (``data``: its JSON, with "environment", "command" and "result")."""
    env, result = data["environment"], data["result"]
    lines = [f"# Timeline peak memory: a short and a long video ({env['date']})", "", f"`{data['command']}`", "",
             f"Machine: {env['host_cpu']}; onnxruntime {env.get('onnxruntime')}, numpy {env['numpy']}, package "
             f"{env['package']}. Model: {result['model']} (ONNX fp32, split path), windows of "
             f"{result['frames_per_window']} frames, STEP {result['step']}; videos {result['video_size'][0]}x"
             f"{result['video_size'][1]}. Each measurement in a fresh process. 1-minute load average at the start "
             f"{env.get('load_average_1min')}: memory does not depend on it, the seconds do (not a speed record).", "",
             "| video | frames | windows | `classify --windows` peak RSS MiB | RSS after load MiB | peak RSS MiB | "
             "growth in the run MiB | traced peak MiB (Python + numpy) | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['video']} | {r['frames']} | {r['windows']} | {r['cli_max_rss_mb']} | "
                     f"{r['baseline_rss_mb']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.1f} | "
                     f"{r['traced_peak_mb']} | {r['seconds']} |")
    short, long = result["rows"][0], result["rows"][-1]
    growth = [r["peak_rss_mb"] - r["baseline_rss_mb"] for r in (short, long)]
    lines += ["", f"The long video has {long['frames'] / short['frames']:.0f}x the frames. The timeline's growth above "
              f"the loaded model: {growth[0]:.1f} MiB (short) and {growth[1]:.1f} MiB (long); its traced peak "
              f"{short['traced_peak_mb']} and {long['traced_peak_mb']} MiB; the whole command's peak "
              f"{short['cli_max_rss_mb']} and {long['cli_max_rss_mb']} MiB (it also keeps one result per window). "
              "The RSS after load varies by tens of MiB between fresh processes of the same command (ONNX Runtime's "
              "and the allocator's choices), so compare the growth in the run."]
    return "\n".join(lines) + "\n"
