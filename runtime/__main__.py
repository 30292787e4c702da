"""``python -m runtime``: look inside a deployable model, or classify clips with it, from the command line.

    python -m runtime info runs/demo/onnx/fp32/model.onnx
    python -m runtime classify runs/demo/onnx/fp32/model.onnx clip1/ clip2.npy --top-k 3 --json preds.json
    python -m runtime ping grpc://triton-host:8001/cnn_bilstm --timeout 5     # liveness probe of a served model

A clip is a folder of frame images (read as training reads them: natural name order, ``2.png`` before ``10.png``) or
a ``.npy`` file of uint8 (T, H, W, 3) frames. Clips of different lengths go into one padded batch with their lengths (padding is exact). Frames of another
size than the model's are refused unless ``--resize``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import RuntimeInputError, load, preprocess_frames
from ._io import atomic_write_json, check_output_file, remove_stale_temporaries
from .errors import RemoteServerError
from .frames import IMAGE_SUFFIXES, read_frame_folder, resize_frames


def read_clip(path: str | os.PathLike, frame_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of one clip: a folder of images or a ``.npy`` array.

    A folder is read by :func:`runtime.frames.read_frame_folder`, as training reads it: the same image suffixes,
    natural name order (``2.png`` before ``10.png``) and, with ``frame_size``, the same resize.

    Raises:
        RuntimeInputError: missing path, no frames, an unreadable image, frames of different sizes, not uint8 RGB, a
            .npz archive or another format named .npy, or another format.
    """
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path, frame_size)
    if path.suffix.lower() == ".npy" and path.is_file():
        try:
            frames = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # pickled, empty, truncated or unreadable
            raise RuntimeInputError(f"{path} is not a readable .npy array file: {type(e).__name__}: {e}") from e
        if not isinstance(frames, np.ndarray):  # np.load goes by content: a zip (.npz) gives an archive object
            frames.close()
            raise RuntimeInputError(f"{path} is a .npz archive (a zip of arrays), not a .npy array; save the clip "
                                    "with np.save(path, frames) as uint8 (T, H, W, 3)")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
            raise RuntimeInputError(f"{path} must hold uint8 (T, H, W, 3) RGB frames with T >= 1, got "
                                    f"{frames.dtype} {frames.shape}")
        return frames if frame_size is None else resize_frames(frames, frame_size)
    if not path.exists():
        raise RuntimeInputError(f"{path} does not exist")
    raise RuntimeInputError(f"{path} is neither a folder of frame images nor a .npy file of uint8 (T, H, W, 3) "
                            f"frames (frame images end in {', '.join(IMAGE_SUFFIXES)})")


def _load_options(args) -> dict:
    options = {}
    if args.provider:
        options["providers"] = args.provider
    if args.openvino_precision:
        options["openvino_precision"] = args.openvino_precision
    return options


def describe(runner) -> list[str]:
    """Human-readable lines: backend and providers, stage, what ``infer`` accepts, and the model metadata."""
    providers = getattr(runner, "stage_providers", None) or getattr(runner, "provider", None)
    return _describe(f"{runner.backend_name}" + (f" ({providers})" if providers else ""), runner.input_spec,
                     runner.metadata)


def describe_engine_report(path: str | os.PathLike) -> list[str]:
    """The lines of :func:`describe` for a TensorRT engine, from its JSON report (no GPU or TensorRT needed), once
    the engine file's size and sha256 match the report: a report copied beside another file describes nothing."""
    from .backends.engine_report import check_engine_file, read_report
    from .spec import InputSpec, ModelMetadata, Profile

    if not Path(path).is_file():
        raise RuntimeInputError(f"{path} does not exist (or is not a file)")
    report = read_report(Path(path))
    check_engine_file(Path(path), report)  # before anything else is read from the report
    try:
        meta = ModelMetadata.from_dict(report["metadata"], f"{path}.json")
        profiles = [Profile((int(p["axes"]["batch"][0]), int(p["axes"]["batch"][2])),
                            (int(p["axes"]["time"][0]), int(p["axes"]["time"][2]))) for p in report["profiles"]]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RuntimeInputError(f"{path}.json lacks the metadata or profiles python -m export.to_trt writes "
                                f"({type(e).__name__}: {e}); rebuild the engine with it") from e
    trt = report.get("trt") or {}
    target = report.get("target") or {}
    header = (f"tensorrt engine, built by {trt.get('flavour')} {trt.get('version')} for "
              f"{target.get('name') or 'compute capability ' + str(target.get('compute_capability'))} "
              "(read from its report: not loaded here)")
    return _describe(header, InputSpec.for_graph(meta.graph, meta, profiles), meta)


def _describe(backend: str, spec, meta) -> list[str]:
    lines = [f"backend      {backend}",
             f"stage        {spec.graph}",
             f"input        {spec.input_name}: {spec.dtype} (batch, time, {', '.join(map(str, spec.item_shape))})"
             + (", lengths: int32 (batch,)" if spec.takes_lengths else ""),
             "accepts      " + "; ".join(p.describe() for p in spec.profiles),
             f"outputs      {', '.join(spec.output_names)}",
             f"classes      {meta.num_classes}: {', '.join(meta.class_names)}",
             f"frame size   {meta.frame_size[0]}x{meta.frame_size[1]} (H x W); mean {meta.mean}, std {meta.std}",
             f"precision    {meta.precision}; written by package {meta.package_version}"]
    if meta.extra.get("checkpoint_sha256"):
        lines.append(f"checkpoint   sha256 {meta.extra['checkpoint_sha256'][:16]}...")
    return lines


def classify_clips(runner, clips: Sequence[np.ndarray], *, top_k: int = 1, resize: bool = False) -> list[dict]:
    """Classify uint8 clips of any lengths in one padded batch.

    Returns:
        list[dict]: per clip, ``frames``, ``labels`` and ``probs`` (top-k, best first) and ``frame_labels`` (top-1 per
        frame).
    """
    meta = runner.metadata
    xs = [preprocess_frames(c, meta.mean, meta.std, runner.input_spec.frame_size, resize=resize)[0] for c in clips]
    lengths = np.array([len(x) for x in xs], np.int32)
    batch = np.zeros((len(xs), int(lengths.max())) + xs[0].shape[1:], np.float32)
    for i, x in enumerate(xs):
        batch[i, : len(x)] = x
    result = runner.classify(batch, lengths, top_k=top_k)
    return [{"frames": int(lengths[i]), "labels": result.labels[i],
             "probs": [round(float(p), 6) for p in result.probs[i]],
             "frame_labels": [labels[0] for labels in result.frame_labels[i]]} for i in range(len(xs))]


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
    cls = sub.add_parser("classify", parents=[common], help="top-k classes of clips (folders of frames or .npy)")
    cls.add_argument("clips", nargs="+", help="folders of frame images (natural name order: 2.png before 10.png) or "
                                              ".npy uint8 (T, H, W, 3)")
    cls.add_argument("--top-k", type=int, default=1, help="classes to show per clip (default 1)")
    cls.add_argument("--resize", action="store_true", help="resize frames to the model's size instead of refusing")
    cls.add_argument("--json", default=None, help="also write the predictions to this .json file (checked before "
                                                  "the model loads; an existing file needs --force)")
    cls.add_argument("--force", action="store_true", help="replace an existing --json file")
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
    if args.json is not None:
        check_output_file(args.json, what="--json", suffixes=(".json",), force=args.force)
        remove_stale_temporaries(Path(args.json).parent, [Path(args.json).name])  # left by killed runs


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
    engine = Path(args.model).suffix.lower() in (".engine", ".plan")
    try:
        if args.command == "classify":  # before any clip is read or model loads
            _check_classify_args(args)
        if args.command == "info" and engine and not args.device:  # a report says it all, GPU or not
            print("\n".join(describe_engine_report(args.model)))
            return 0
        # Clips are read before the model loads, so a bad clip is reported at once; with --resize they are read at
        # the model's frame size, as training reads them (so a folder may mix image sizes there too).
        clips = [read_clip(c) for c in args.clips] if args.command == "classify" and not args.resize else []
        with load(args.model, device=args.device, **_load_options(args)) as runner:
            if args.command == "info":
                print("\n".join(describe(runner)))
                return 0
            if runner.stage != "model":
                raise RuntimeInputError(f"classify takes a whole model (model.onnx, a model engine or a checkpoint); "
                                        f"{args.model} is the {runner.stage} stage")
            want = tuple(runner.input_spec.frame_size)
            if args.resize:
                clips = [read_clip(c, want) for c in args.clips]
            for path, clip in zip(args.clips, clips, strict=True):
                if want and clip.shape[1:3] != want and not args.resize:
                    raise RuntimeInputError(f"{path}: frames are {clip.shape[1]}x{clip.shape[2]} (H x W) but the model "
                                            f"takes {want[0]}x{want[1]}; pass --resize to resize them")
            predictions = classify_clips(runner, clips, top_k=args.top_k, resize=args.resize)
    except ValueError as e:  # RuntimeInputError, CheckpointError: the message says what was wrong and what is valid
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError) as e:  # a backend library or the GPU it needs is missing here
        print(f"error: {args.model} cannot run on this machine: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    except RemoteServerError as e:  # a served model (a URL) whose server cannot answer (not BrokenPipeError)
        print(f"error: {e}", file=sys.stderr)
        return 3
    for clip, pred in zip(args.clips, predictions, strict=True):
        best = ", ".join(f"{label} {p:.3f}" for label, p in zip(pred["labels"], pred["probs"], strict=True))
        print(f"{clip}: {best} ({pred['frames']} frames)")
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


if __name__ == "__main__":
    raise SystemExit(main())
