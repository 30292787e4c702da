"""NVIDIA's perf_analyzer against a served model of this project: writes its ``--input-data`` JSON from an export
(real clips of the model's frame size, for the clip model or the stream model) and runs it.

    python -m benchmarks.perf_analyzer EXPORT_DIR URL [--stream] [--time 8] [--input-json FILE] [-- PA_FLAGS...]

``URL`` is the served clip model, ``grpc://HOST:PORT/NAME`` or ``http://HOST:PORT/NAME``; ``--stream`` loads
``NAME_stream`` instead (perf_analyzer sets its START, END and CORRID itself, over ``--sequence-length`` frames).
Everything after ``--`` goes to perf_analyzer unchanged, e.g. ``--concurrency-range 1:8:7 -f results.csv``; on a
busy machine add ``--stability-percentage 100 --max-trials 4``. perf_analyzer reports throughput, p50-p99 latency and
the server's inference and execution counts (inferences per execution above 1: the dynamic batcher batched).

The binary: ``--perf-analyzer``, else ``$PERF_ANALYZER``, else ``perf_analyzer`` on ``PATH``, else the one beside
``$TRITON_SERVER_PYTHON`` (``make triton-env`` installs it there; docs/serving.md says how else to get it).
Exit status: perf_analyzer's; 2 for bad arguments; 3 when perf_analyzer cannot run here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlsplit

from runtime._io import atomic_write_text

ENV_VAR = "PERF_ANALYZER"


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer is not installed here, or does not run (the message says why and how to get it)."""


def find_perf_analyzer(path: Optional[str] = None) -> str:
    """The perf_analyzer to run: ``path``, ``$PERF_ANALYZER``, ``perf_analyzer`` on ``PATH`` or beside
    ``$TRITON_SERVER_PYTHON``; checked by running ``--version``.

    Raises:
        PerfAnalyzerUnavailable: none found, or it does not run (a missing library, named).
    """
    server_python = os.environ.get("TRITON_SERVER_PYTHON")
    beside = str(Path(server_python).parent / "perf_analyzer") if server_python else None
    binary = path or os.environ.get(ENV_VAR) or shutil.which("perf_analyzer") or beside
    if not binary or not os.access(binary, os.X_OK):
        raise PerfAnalyzerUnavailable("perf_analyzer is not installed (make triton-env puts it in .venv-triton/bin; "
                                      "or use NVIDIA's SDK container, see docs/serving.md)")
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise PerfAnalyzerUnavailable(f"{binary} does not run: {e}") from e
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()[:1] or [f"exit status {proc.returncode}"]
        hint = " (Debian/Ubuntu: apt-get install libb64-0d)" if "libb64" in why[0] else ""
        raise PerfAnalyzerUnavailable(f"{binary} does not run: {why[0]}{hint}")
    return binary


def clip_input_data(frame_size: Sequence[int], times: Sequence[int], *, seed: int = 0) -> dict:
    """perf_analyzer's input data for the clip model: one request per T in ``times`` (cycled by perf_analyzer),
    each a clip of T random normal frames ``[T, 3, H, W]`` with ``lengths`` ``[T]`` (no batch axis: perf_analyzer
    adds it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"data": [{"frames": {"content": _values(rng.standard_normal((t, 3, *frame_size))),
                                 "shape": [t, 3, *frame_size]},
                      "lengths": {"content": [t], "shape": [1]}} for t in times]}


def stream_input_data(frame_size: Sequence[int], steps: int, *, seed: int = 0) -> dict:
    """perf_analyzer's input data for the stream model: one stream of ``steps`` random normal frames ``[3, H, W]``
    (perf_analyzer adds the sequence controls)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"data": [[{"frame": {"content": _values(rng.standard_normal((3, *frame_size))),
                                 "shape": [3, *frame_size]}} for _ in range(steps)]]}


def _values(a) -> list:
    return [round(float(v), 4) for v in a.ravel()]  # 4 decimals: a readable file, random data either way


def command(binary: str, url: str, input_json: str | os.PathLike, *, stream: bool = False,
            sequence_length: int = 24, extra: Sequence[str] = ()) -> list[str]:
    """The perf_analyzer command line for a served model ``url`` and an input data file."""
    parts = urlsplit(url)
    name = parts.path.strip("/") + ("_stream" if stream else "")
    cmd = [binary, "-m", name, "-u", parts.netloc, "-i", parts.scheme, "--input-data", str(input_json)]
    return cmd + (["--sequence-length", str(sequence_length)] if stream else []) + list(extra)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help,
                                epilog="Arguments after -- go to perf_analyzer unchanged.")
    p.add_argument("export_dir", help="the ONNX export the served repository was made from (its model.onnx)")
    p.add_argument("url", help="the served clip model, grpc://HOST:PORT/NAME or http://HOST:PORT/NAME")
    p.add_argument("--stream", action="store_true", help="load NAME_stream, one frame per request, in sequences")
    p.add_argument("--time", default="8", help="clip model: T of each request, T or T,T,... (default 8)")
    p.add_argument("--sequence-length", type=int, default=24, help="stream model: frames per sequence (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random frames (default 0)")
    p.add_argument("--input-json", default=None, help="write the input data here and keep it (default: a temporary "
                   "file)")
    p.add_argument("--perf-analyzer", default=None, help=f"the binary (default: ${ENV_VAR}, PATH, or beside "
                   "$TRITON_SERVER_PYTHON)")
    return p


def check_args(args) -> list[int]:
    """The clip lengths to send, after checking the arguments.

    Raises:
        ValueError: a bad ``--time``, ``--sequence-length``, URL or export folder (the message says what is valid).
    """
    try:
        times = [int(t) for t in args.time.split(",")]
    except ValueError:
        times = []
    if not times or min(times) < 1 or args.sequence_length < 1:
        raise ValueError(f"--time takes T or T,T,... and --sequence-length an integer, all >= 1; got --time "
                         f"{args.time!r}, --sequence-length {args.sequence_length}")
    if urlsplit(args.url).scheme not in ("grpc", "http") or not urlsplit(args.url).path.strip("/"):
        raise ValueError(f"URL {args.url!r} must be grpc://HOST:PORT/NAME or http://HOST:PORT/NAME")
    if not (Path(args.export_dir) / "model.onnx").is_file():
        raise ValueError(f"{args.export_dir} has no model.onnx; give the ONNX export the repository was made from")
    return times


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = get_args_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        times = check_args(args)
        binary = find_perf_analyzer(args.perf_analyzer)
    except (ValueError, PerfAnalyzerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3 if isinstance(e, PerfAnalyzerUnavailable) else 2  # 3: cannot run on this machine
    return _run(args, binary, times, extra)


def _run(args, binary: str, times: list, extra: list) -> int:
    from runtime.backends import load

    frame_size = load(Path(args.export_dir) / "model.onnx").metadata.frame_size
    data = (stream_input_data(frame_size, args.sequence_length, seed=args.seed) if args.stream
            else clip_input_data(frame_size, times, seed=args.seed))
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        path = Path(args.input_json or Path(tmp) / "input.json")
        atomic_write_text(path, json.dumps(data))
        cmd = command(binary, args.url, path, stream=args.stream, sequence_length=args.sequence_length, extra=extra)
        print("$ " + " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode


if __name__ == "__main__":
    raise SystemExit(main())
