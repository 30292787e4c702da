"""Generate or check a Triton Inference Server model repository.

CLI::

    python -m export.to_triton runs/demo/onnx/fp32 --out triton_repo --kind python     # NAME + NAME_stream
    python -m export.to_triton runs/demo/engines/model.engine --out triton_repo        # tensorrt (auto)
    python -m export.to_triton --check triton_repo                                     # exit 0 ok, 1 errors

The library is :mod:`export.triton_repo` (generation) and :mod:`export.triton_check` (validation); docs/export.md
describes the kinds and options.
"""

from __future__ import annotations

import argparse
import logging
import sys

from export.triton_repo import (
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_MAX_TIME,
    DEFAULT_STREAM_MAX_BATCH_SIZE,
    RepoOptions,
    write_repository,
)
from export.triton_source import KIND_CHOICES
from runtime.triton import protocol as P


def _sizes(text: str) -> tuple:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 4,8, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers >= 1, got {text!r}")
    return sizes


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a Triton model repository (config.pbtxt + version folder) from an ONNX export folder or a "
                    "TensorRT engine, checked before anything is written; or --check an existing repository.",
        add_help=add_help,
    )
    parser.add_argument("src", nargs="?", help="an ONNX export folder (onnx/fp32, fp16, int8) or its model.onnx, or "
                                               "an engine (.engine/.plan) with its ENGINE.json report")
    parser.add_argument("--out", help="the repository folder to write (replaced whole; an existing non-empty folder "
                                      "only with --force)")
    parser.add_argument("--check", metavar="REPO", help="validate an existing repository instead (Triton's config "
                                                        "schema, the model contract, the files' digests); exit 0 "
                                                        "when valid, 1 listing every error")
    parser.add_argument("--kind", default="auto", choices=KIND_CHOICES,
                        help="backend: tensorrt (platform tensorrt_plan), onnxruntime, or python (our runtime on "
                             "ONNX Runtime CPU, plus the NAME_stream model); auto: tensorrt for an engine, "
                             "onnxruntime for an export folder")
    parser.add_argument("--name", default=P.DEFAULT_MODEL_NAME, help="model name (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="clips per execution (default: 8; for an engine, the largest batch its profiles hold "
                             "at every time bucket)")
    parser.add_argument("--max-time", type=int, default=None,
                        help=f"longest clip, the last time bucket (default: the engine's longest profile time, or "
                             f"{DEFAULT_MAX_TIME} for ONNX)")
    parser.add_argument("--instances", type=int, default=1, help="model instances (default: %(default)s)")
    parser.add_argument("--instance-kind", choices=["cpu", "gpu"], default=None,
                        help="where instances run (default: cpu for python, gpu otherwise)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None,
                        help=f"how long the dynamic batcher (and the stream model's sequence batcher) waits for a "
                             f"fuller batch (default: {DEFAULT_MAX_QUEUE_DELAY_US}; refused where no batcher waits)")
    parser.add_argument("--preferred-batch-sizes", type=_sizes, default=(), metavar="B1,B2",
                        help="the dynamic batcher's preferred batch sizes, each <= --max-batch-size")
    parser.add_argument("--no-dynamic-batching", action="store_true",
                        help="serve each request alone (for comparisons; batching is on by default)")
    parser.add_argument("--ort-tensorrt-fp16", action="store_true",
                        help="onnxruntime kind: run through ONNX Runtime's TensorRT execution provider at FP16")
    parser.add_argument("--no-stream", action="store_true", help="python kind: no NAME_stream model")
    # The stream model's options default to None, so that one given where no stream model is made is refused.
    stream = parser.add_argument_group("the python kind's stream model (refused for other kinds and with --no-stream)")
    stream.add_argument("--stream-window", type=int, default=None,
                        help=f"frames the BiLSTM looks back over (default: {P.DEFAULT_WINDOW})")
    stream.add_argument("--stream-idle-seconds", type=float, default=None,
                        help=f"a stream idle longer than this is dropped (default: {P.DEFAULT_IDLE_SECONDS:g})")
    stream.add_argument("--max-streams", type=int, default=None,
                        help=f"live streams kept at most; more START frames are refused (default: "
                             f"{P.DEFAULT_MAX_STREAMS})")
    stream.add_argument("--stream-max-batch-size", type=int, default=None,
                        help=f"frames of different streams per execution (default: {DEFAULT_STREAM_MAX_BATCH_SIZE})")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty --out folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.check is not None:
        if args.src or args.out:
            parser.error("--check REPO takes no SRC and no --out")
        return _check(args.check)
    if not args.src or not args.out:
        parser.error("give SRC and --out REPO (or --check REPO)")
    opts = RepoOptions(name=args.name, kind=args.kind, max_batch_size=args.max_batch_size, max_time=args.max_time,
                       instances=args.instances, instance_kind=args.instance_kind,
                       max_queue_delay_us=args.max_queue_delay_us, preferred_batch_sizes=args.preferred_batch_sizes,
                       dynamic_batching=not args.no_dynamic_batching, ort_tensorrt_fp16=args.ort_tensorrt_fp16,
                       stream=not args.no_stream, stream_window=args.stream_window,
                       stream_idle_seconds=args.stream_idle_seconds, max_streams=args.max_streams,
                       stream_max_batch_size=args.stream_max_batch_size)
    try:
        result = write_repository(args.src, args.out, opts, force=args.force)
    except ValueError as e:  # bad SRC, options, output folder, or a config that fails its checks: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.path} (checked):")
    for name, config in result.configs.items():
        print(f"  {name}: {config}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _check(repo) -> int:
    from export.triton_check import check_repository

    try:
        errors = check_repository(repo)
    except ValueError as e:  # tritonclient missing
        print(f"error: {e}", file=sys.stderr)
        return 2
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"{repo}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"{repo}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
