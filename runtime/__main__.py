"""``python -m runtime``: look inside a deployable model, or classify clips with it, from the command line.

    python -m runtime info runs/demo/onnx/fp32/model.onnx
    python -m runtime classify runs/demo/onnx/fp32/model.onnx clip1/ clip2.npy --top-k 3 --json preds.json
    python -m runtime ping grpc://triton-host:8001/cnn_bilstm --timeout 5     # liveness probe of a served model

    python -m runtime classify runs/demo/best.pt video.mp4 videos/ --frames 8 --windows 4 --plot timeline.png
    python -m runtime stream runs/demo/onnx/fp32 video.mp4 --stride 2

A clip is a folder of frame images (read as training reads them: natural name order, ``2.png`` before ``10.png``),
a ``.npy`` file of uint8 (T, H, W, 3) frames, or a video file (``runtime.video_index.VIDEO_SUFFIXES``; a folder of video
files stands for its videos). Clips of different lengths go into one padded batch with their lengths (padding is
exact). Frames of another size than the model's are refused unless ``--resize``; video frames are always resized to
the model's size, as training resizes them. A video gives one clip of ``--frames`` T frames (``--sampling``, default
uniform: the middle frame of each of T equal segments), or with ``--windows STEP`` a timeline of every T-frame window.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._io import atomic_write_json, check_output_file, remove_stale_temporaries
from .backends import load
from .clips import classify_clips, expand_clip_paths, is_video, read_clip
from .describe import describe, describe_engine_report
from .errors import RemoteServerError, RuntimeInputError
from .stages import WindowModel
from .timeline import classify_windows, default_clip_frames, plot_timelines
from .video import VideoReader
from .video_index import VIDEO_SUFFIXES
from .video_sampling import SAMPLINGS, check_sampling


def _load_options(args) -> dict:
    options = {}
    if args.provider:
        options["providers"] = args.provider
    if args.openvino_precision:
        options["openvino_precision"] = args.openvino_precision
    return options


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0],
                                     add_help=add_help)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", help="model.onnx / cnn.onnx / bilstm.onnx, a .engine/.plan (with its .json report) "
                                      "or a .pt checkpoint")
    common.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the backend's best)")
    common.add_argument("--provider", action="append", default=None,
                        help="ONNX Runtime execution provider, in priority order (repeat), e.g. "
                             "OpenVINOExecutionProvider")
    common.add_argument("--openvino-precision", default=None, choices=["f32", "bf16", "f16"],
                        help="with --provider OpenVINOExecutionProvider (default f32)")
    sub.add_parser("info", parents=[common], help="what the model accepts and returns, and its metadata")
    cls = sub.add_parser("classify", parents=[common],
                         help="top-k classes of clips (folders of frames, .npy, video files or folders of videos)")
    cls.add_argument("clips", nargs="+", help="folders of frame images (natural name order: 2.png before 10.png), "
                                              ".npy uint8 (T, H, W, 3), video files or folders of video files")
    cls.add_argument("--top-k", type=int, default=1, help="classes to show per clip (default 1)")
    cls.add_argument("--resize", action="store_true", help="resize frames to the model's size instead of refusing")
    cls.add_argument("--json", default=None, help="also write the predictions to this .json file (checked before "
                                                  "the model loads; an existing file needs --force)")
    cls.add_argument("--force", action="store_true", help="replace an existing --json or --plot file")
    vid = cls.add_argument_group("video files")
    vid.add_argument("--frames", type=int, default=None,
                     help="T, frames per video clip or window (default 16, or fewer when the model takes fewer; give "
                          "the T the model was trained with)")
    vid.add_argument("--sampling", choices=SAMPLINGS, default="uniform",
                     help="uniform: the middle frame of each of T equal segments; stride: every --frame-stride-th "
                          "frame, centred; window: T consecutive frames, centred")
    vid.add_argument("--frame-stride", type=int, default=1, help="with --sampling stride: the step between frames")
    vid.add_argument("--windows", type=int, default=None, metavar="STEP",
                     help="classify every window of T frames, STEP frames apart: a timeline per video (videos only)")
    vid.add_argument("--plot", default=None, metavar="PNG",
                     help="with --windows: write a PNG timeline of class probabilities, one panel per video "
                          "(needs matplotlib)")
    st = sub.add_parser("stream", parents=[common],
                        help="classify a video frame by frame as a live stream; prints the running label and latency",
                        description="MODEL is an export folder (cnn.onnx + bilstm.onnx, or cnn/bilstm engines) or a "
                                    ".pt checkpoint: streaming runs the cnn and bilstm stages apart (see "
                                    "runtime.open_stream)")
    st.add_argument("video", help="a video file")
    st.add_argument("--stride", type=int, default=1, help="push every STRIDE-th frame (default 1: every frame)")
    st.add_argument("--window", type=int, default=16, help="frames the BiLSTM looks back over (default 16)")
    st.add_argument("--backend", default="auto", help="auto, onnxruntime, tensorrt or torch (default auto)")
    ping = sub.add_parser("ping", help="liveness probe of a model served by Triton: one real inference; exit 0 when "
                                       "it answers, 1 otherwise (with one line saying why)")
    ping.add_argument("url", help="grpc://HOST:PORT/NAME or http://HOST:PORT/NAME (a whole-clip or stream model)")
    ping.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; 0 on success, 2 for bad input (one ``error:`` line on stderr), 3 when the model cannot run here
    (or its server cannot answer). ``ping``: 0 when the served model answers, else 1 with one ``error:`` line.

    Output cut short by its reader (``python -m runtime info MODEL | head -1``) ends quietly, as for other CLIs.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # The reader is gone: send what is still buffered to devnull so the exit flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _check_classify_args(args) -> None:
    if args.top_k < 1:  # the upper bound, the number of classes, is known once the model loads
        raise RuntimeInputError(f"--top-k must be >= 1, got {args.top_k}")
    for name in ("frames", "frame_stride", "windows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RuntimeInputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.plot is not None and args.windows is None:
        raise RuntimeInputError("--plot draws the --windows timeline; give --windows STEP too")
    check_sampling(args.sampling, args.frame_stride)
    if args.windows is not None and (args.sampling, args.frame_stride) != ("uniform", 1):
        raise RuntimeInputError("--windows reads every window of consecutive frames; --sampling and --frame-stride "
                                "pick one clip's frames and do not apply to it")
    for what, path, suffix in (("--json", args.json, ".json"), ("--plot", args.plot, ".png")):
        if path is not None:
            check_output_file(path, what=what, suffixes=(suffix,), force=args.force)
            remove_stale_temporaries(Path(path).parent, [Path(path).name])  # left by killed runs
    args.clips = [str(p) for p in expand_clip_paths(args.clips)]
    if args.windows is not None:
        not_videos = [c for c in args.clips if not is_video(c)]
        if not_videos:
            raise RuntimeInputError(f"--windows makes a timeline of video files; {not_videos[0]} is not one "
                                    f"({', '.join(VIDEO_SUFFIXES)})")


def _ping(args) -> int:
    """Exit 0 when the served model answers one real inference, else 1 with one line (Triton keeps saying "ready"
    after a python model's process died, so only an inference tells)."""
    try:
        from .triton.client import ping

        answer = ping(args.url, timeout=args.timeout)
    except (ValueError, RemoteServerError, ImportError) as e:  # RuntimeInputError, the server, no tritonclient
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(answer)  # outside the try: a closed stdout (BrokenPipeError, a ConnectionError too) is main()'s to handle
    return 0


def _main(argv: Optional[Sequence[str]]) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "ping":
        return _ping(args)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "stream":
            return _stream(args)
        _check_classify_args(args)  # before any clip is read or model loads
        return _classify(args)
    except ValueError as e:  # RuntimeInputError, CheckpointError: the message says what was wrong and what is valid
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError) as e:  # a backend library or the GPU it needs is missing here
        print(f"error: {args.model} cannot run on this machine: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    except RemoteServerError as e:  # a served model (a URL) whose server cannot answer (not BrokenPipeError)
        print(f"error: {e}", file=sys.stderr)
        return 3


def _info(args) -> int:
    if Path(args.model).suffix.lower() in (".engine", ".plan") and not args.device:  # a report says it all
        print("\n".join(describe_engine_report(args.model)))
        return 0
    with load(args.model, device=args.device, **_load_options(args)) as runner:
        lines = describe(runner)
    print("\n".join(lines))
    return 0


def _open_clips(args) -> tuple:
    """(an ExitStack holding the open videos, path -> VideoReader, path -> uint8 frames of the other clips).

    Clips are read before the model loads, so a bad clip is reported at once; with --resize they are read later, at
    the model's frame size, as training reads them (so a folder may mix image sizes there too). Videos are opened now
    (checked, not decoded) and read, through the same open readers, once the model's frame size and time range are
    known.
    """
    opened = contextlib.ExitStack()
    try:
        readers = {c: opened.enter_context(VideoReader(c)) for c in args.clips if is_video(c)}
        clips = {} if args.resize else {c: read_clip(c) for c in args.clips if not is_video(c)}
    except BaseException:
        opened.close()
        raise
    return opened, readers, clips


def _classify(args) -> int:
    opened, readers, clips = _open_clips(args)
    with opened, load(args.model, device=args.device, **_load_options(args)) as runner:
        if runner.stage != "model":
            raise RuntimeInputError(f"classify takes a whole model (model.onnx, a model engine or a checkpoint); "
                                    f"{args.model} is the {runner.stage} stage")
        frames = args.frames or default_clip_frames(runner)
        most = runner.input_spec.time_range[1]
        if most is not None and frames > most:
            raise RuntimeInputError(f"--frames {frames} is more than {args.model} takes: clips of 1..{most} frames; "
                                    f"give --frames {most} or fewer")
        if args.windows is not None:
            # Windows STEP >= frames apart share no frame: the whole model runs them (runtime.timeline), so its
            # stages would be opened for nothing.
            with WindowModel.for_runner(runner, split=args.windows < frames) as model:
                if model.split:
                    runner.deactivate()  # its stages do the work: free the whole model's copy of the weights
                timelines = [classify_windows(model, readers[c], frames, args.windows) for c in args.clips]
            return _report_timelines(args, timelines, runner.metadata.class_names)
        predictions = _classify_clips(args, runner, readers, clips, frames)
    return _report_clips(args, predictions)


def _classify_clips(args, runner, readers: dict, clips: dict, frames: int) -> list[dict]:
    """One prediction per clip of the command line, in its order (videos read as one clip of ``frames`` frames)."""
    want = tuple(runner.input_spec.frame_size)
    if args.resize:
        clips = {c: read_clip(c, want) for c in args.clips if not is_video(c)}
    for reader in readers.values():
        reader.frame_size = want
    videos = {c: r.read_clip(frames, args.sampling, stride=args.frame_stride) for c, r in readers.items()}
    clips.update({c: v.frames for c, v in videos.items()})
    for path, clip in clips.items():
        if want and clip.shape[1:3] != want and not args.resize:
            raise RuntimeInputError(f"{path}: frames are {clip.shape[1]}x{clip.shape[2]} (H x W) but the model "
                                    f"takes {want[0]}x{want[1]}; pass --resize to resize them")
    predictions = classify_clips(runner, [clips[c] for c in args.clips], top_k=args.top_k, resize=args.resize)
    for c, pred in zip(args.clips, predictions, strict=True):
        if c in videos:
            v = videos[c]
            pred["video"] = {**v.info.to_dict(), "sampling": args.sampling, "requested_frames": v.requested,
                             "short": v.short, "short_reason": v.short_reason, "indices": v.indices.tolist()}
    return predictions


def _report_clips(args, predictions: list[dict]) -> int:
    """Print, and write with --json, the clips' predictions."""
    for clip, pred in zip(args.clips, predictions, strict=True):
        best = ", ".join(f"{label} {p:.3f}" for label, p in zip(pred["labels"], pred["probs"], strict=True))
        video = pred.get("video")
        note = ""
        if video is not None:
            note = (f" of {video['num_frames']}, {video['sampling']}" if not video["short"] else
                    f" of {video['requested_frames']}: {video['short_reason']}, padded")
        print(f"{clip}: {best} ({pred['frames']} frames{note})")
    if args.json is not None:
        try:
            atomic_write_json(args.json, {"model": str(args.model),
                                          "clips": [{"clip": str(c), **p} for c, p in zip(args.clips, predictions,
                                                                                          strict=True)]})
        except OSError as e:  # checked before the work, but the folder may have changed since
            print(f"error: cannot write --json {args.json}: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0


def _report_timelines(args, timelines: list[dict], class_names) -> int:
    """Print, and write with --json / --plot, the --windows timelines."""
    for tl in timelines:
        windows, t = tl["windows"], tl["frames_per_window"]
        left = tl["video"]["num_frames"] - windows[-1]["end"]
        note = f"; its last {left} frames lie in no window (a window fits whole)" if left else ""
        print(f"{tl['clip']}: {len(windows)} window{'s' * (len(windows) != 1)} of {t} frames, step {tl['step']}"
              f"{note}")
        for w in windows:
            print(f"  frames {w['start']:>6}-{w['end'] - 1:<6} {w['start_s']:9.3f}-{w['end_s']:<9.3f}s  "
                  f"{w['label']} {w['prob']:.3f}" + ("  (short window, padded)" if w["frames"] < t else ""))
    try:
        if args.json is not None:
            atomic_write_json(args.json, {"model": str(args.model), "class_names": list(class_names),
                                          "timelines": timelines})
            print(f"wrote {args.json}")
        if args.plot is not None:
            plot_timelines(timelines, args.plot, title=f"{Path(args.model).name}")
            print(f"wrote {args.plot}")
    except OSError as e:  # checked before the work, but the folder may have changed since
        print(f"error: cannot write {e.filename or 'the output'}: {e}", file=sys.stderr)
        return 2
    return 0


def _stream(args) -> int:
    """``stream``: push every --stride-th frame of a video into a stream (runtime.open_stream), one line per frame."""
    import time

    from .streaming import open_stream

    if args.stride < 1:
        raise RuntimeInputError(f"--stride must be >= 1, got {args.stride}")
    model_ms, decode_ms = [], []
    with VideoReader(args.video) as reader, \
            open_stream(args.model, window=args.window, device=args.device, backend=args.backend,
                        **_load_options(args)) as stream:  # a bad video is reported before the model loads
        period = 1.0 / reader.info.fps if reader.info.fps else 0.0  # for the approximate time printed
        reader.frame_size = stream.frame_size
        frames = reader.iter_frames(args.stride)
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            t1 = time.perf_counter()
            if item is None:
                break
            index, frame = item
            result = stream.push(frame)
            t2 = time.perf_counter()
            decode_ms.append((t1 - t0) * 1e3)
            model_ms.append((t2 - t1) * 1e3)
            print(f"frame {index:>6} ~{index * period:8.3f}s  window {result.clip_label} {result.clip_prob:.3f}  "
                  f"frame {result.frame_label} {result.frame_prob:.3f}  latency {model_ms[-1]:.1f} ms "
                  f"(decode {decode_ms[-1]:.1f} ms)")
    print(f"{len(model_ms)} frames pushed (stride {args.stride}, window {args.window}); median latency "
          f"{np.median(model_ms):.1f} ms per frame, decode {np.median(decode_ms):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
