"""``python -m train.evaluate MODEL --data ...``: frame, clip and per-class accuracy of any model the runtime opens
(a checkpoint, an ONNX export of any precision, a TensorRT engine, a model served by Triton), its top-1 agreement
with a reference (the checkpoint), the same on temporally shuffled clips (the temporal-order ablation), and a
confusion-matrix PNG.

Examples:
    python -m train.evaluate runs/demo/best.pt --data synthetic --val-clips 512
    python -m train.evaluate runs/demo/onnx/int8 --data synthetic --val-clips 512 --reference runs/demo/best.pt
    python -m train.evaluate grpc://localhost:8001/cnn_bilstm --data cifar10 --data-dir data/cifar10 --json r.json
    python -m train.evaluate model.engine --data video --data-dir my_videos --frames 16 --clips-per-video 5

The frame size, normalisation and classes come from the model; the data's class names must be the model's, in the
same order. ``--reference`` runs a second model (the checkpoint) on the same clips and reports the agreement a
deployment is gated on: clip and frame top-1 agreement, the largest |logit difference| and the clips whose class
differs. The scoring is :mod:`runtime.evaluation`'s, the one the int8 export gate and the demo use.
``--confusion`` (.png) and ``--json`` (.json) are checked before the evaluation starts, written atomically, and never
replace an existing file without ``--force`` (the default ``confusion_<split>.png`` beside a checkpoint replaces
only an earlier confusion matrix; other models write a PNG only with ``--confusion``).

Frame accuracy scores the per-frame logits, which come from the BiLSTM and so see the whole clip: on CIFAR-10 clips
(every frame of one class) it tracks clip accuracy and is not a per-image accuracy. ``--frames 1`` feeds single images,
but a model trained on longer clips is then outside what it was trained on. With ``--clips-per-video K`` each video
is scored by K evenly spaced windows of ``--frames`` consecutive frames, their class probabilities averaged; there
are no frame scores then, and the logits compared with a reference are the log of the averaged probabilities.

Exit status: 0 done, 1 a result file could not be written, 2 bad input (one ``error:`` line), 3 the model cannot run
on this machine or its server does not answer.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from runtime.errors import RemoteServerError
from runtime.evaluation import accuracy, agreement, collect_logits
from runtime.triton.client import is_remote_url

from ._checks import SEED_MAX, check_range
from .clips import DATASETS
from .eval_data import (
    CannotRunError,
    EvaluationError,
    Progress,
    build_clips,
    check_finite,
    check_reference,
    clip_batches,
    describe,
    open_model,
    resolve_modes,
    score_videos,
)
from .options import resolve_device

logger = logging.getLogger(__name__)


def evaluate_model(
    model: str | os.PathLike,
    *,
    data: str = "synthetic",
    data_dir: Optional[str] = None,
    split: str = "test",
    frames: int = 8,
    num_clips: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    reference: Optional[str | os.PathLike] = None,
    clips_per_video: Optional[int] = None,
    shuffled: Optional[bool] = None,
    workers: int = 0,
    sampling: Optional[str] = None,
    frame_stride: int = 1,
    timeout: float = 30.0,
    log_every: int = 10,
    progress: Optional[bool] = None,
) -> dict[str, Any]:
    # Long only through its documented arguments; opening, data and scoring are helpers of train.eval_data and
    # runtime.evaluation.
    """Evaluate any model ``runtime.load`` opens on one split of a data source, optionally against a reference.

    Args:
        model (str | PathLike): a checkpoint, ``model.onnx`` or an export folder (fp32, fp16, int8), a
            ``.engine``/``.plan``, or a served model ``grpc://HOST:PORT/NAME`` / ``http://HOST:PORT/NAME``.
        data (str): one of ``train.clips.DATASETS``. Defaults to "synthetic".
        data_dir (str | None): folder for cifar10 / folder / video. Defaults to None.
        split (str): "train" or "test". Defaults to "test".
        frames (int): clip length T (folder: maximum; video with ``clips_per_video``: frames per window).
            Defaults to 8.
        num_clips (int | None): clips (videos) to evaluate (synthetic: default 1024; others: all). Defaults to None.
        seed (int): data seed (the training seed reproduces its held-out split). Defaults to 0.
        batch_size (int): clips per batch (split further to what the model takes per call). Defaults to 32.
        device (str): auto, cpu, cuda or cuda:N (a served model runs where its server runs). Defaults to "auto".
        reference (str | PathLike | None): a model (the checkpoint) run on the same clips; adds ``agreement``.
            Defaults to None.
        clips_per_video (int | None): video: score each video by this many evenly spaced windows of ``frames``
            consecutive frames, their probabilities averaged. Defaults to None (one clip per video).
        shuffled (bool | None): also evaluate temporally shuffled clips; None: yes, except with
            ``clips_per_video``. Defaults to None.
        workers (int): DataLoader workers. Defaults to 0.
        sampling (str | None): video: how a clip's frames are picked (the training run's ``--sampling``); None:
            "uniform", or "window" with ``clips_per_video`` (the only one it takes). Defaults to None.
        frame_stride (int): video with ``sampling="stride"``: the step between frames. Defaults to 1.
        timeout (float): seconds a served model may take per request. Defaults to 30.
        log_every (int): without a progress bar, log progress every this many batches (0: never). Defaults to 10.
        progress (bool | None): a tqdm bar; None: when stderr is a terminal. Defaults to None.

    Returns:
        dict: ``model``, ``backend``, ``precision``, ``data``, ``split``, ``class_names``, ``clips``,
        ``clips_per_video``, ``windows``, ``frame_acc`` (None with ``clips_per_video``), ``clip_acc``,
        ``per_class_acc`` (name -> acc, None for a class absent from the split), ``confusion`` (rows = true class),
        ``loss``; with ``shuffled`` ``shuffled_frame_acc`` and ``shuffled_clip_acc``; with ``reference``
        ``agreement`` (see :func:`runtime.evaluation.agreement`, plus ``reference`` and ``exported_from_reference``:
        whether the model records the reference file's sha256, None when unknown).

    Raises:
        CheckpointError, RuntimeInputError: not a model, or a damaged one.
        DataError: unusable data.
        EvaluationError: the data's (or the reference's) classes differ from the model's, NaN/Inf outputs, options
            that do not go together.
        CannotRunError: the model cannot run on this machine.
        runtime.errors.RemoteServerError: a served model's server does not answer.
    """
    _check_numbers(dict(frames=frames, num_clips=num_clips, seed=seed, batch_size=batch_size, workers=workers,
                        clips_per_video=clips_per_video, log_every=log_every, frame_stride=frame_stride,
                        timeout=timeout))
    shuffled, sampling = resolve_modes(data, clips_per_video, shuffled, sampling)
    where = None if device == "auto" else str(resolve_device(device))
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(open_model(model, device=where, timeout=timeout))
        runners, same = [runner], None
        if reference is not None:
            runners.append(stack.enter_context(open_model(reference, device=where, timeout=timeout)))
            same = check_reference(runner, runners[1], str(model), str(reference))
        ds = build_clips(runner.metadata, str(model), data=data, data_dir=data_dir, split=split, frames=frames,
                         num_clips=num_clips, seed=seed, sampling=sampling, frame_stride=frame_stride)
        bar = Progress(len(ds), "videos" if clips_per_video else "clips", log_every, progress)
        try:
            if clips_per_video:
                outputs, windows = score_videos(runners, ds, clips_per_video, frames, batch_size, bar)
            else:
                outputs, windows = collect_logits(runners, clip_batches(ds, batch_size, workers), on_batch=bar), None
        finally:
            bar.close()
        for name, out in zip((model, reference)[:len(outputs)], outputs, strict=True):
            check_finite(out, str(name), data)
        res = _summary(runner, outputs, model, data, split, clips_per_video, windows)
        if reference is not None:
            res["agreement"] = {"reference": str(reference), "exported_from_reference": same,
                                **agreement(outputs[0], outputs[1])}
        if shuffled:
            sh = collect_logits([runner], clip_batches(ds, batch_size, workers, shuffle_seed=seed))[0]
            acc = accuracy(sh, runner.metadata.num_classes)
            res["shuffled_frame_acc"], res["shuffled_clip_acc"] = acc["frame_acc"], acc["clip_acc"]
    return res


def _summary(runner, outputs, model, data: str, split: str, clips_per_video, windows) -> dict:
    names = list(runner.metadata.class_names)
    acc = accuracy(outputs[0], len(names))
    return {
        "model": str(model), "backend": describe(runner), "precision": runner.metadata.precision, "data": data,
        "split": split, "class_names": names, "clips": acc["clips"], "clips_per_video": clips_per_video,
        "windows": windows, "loss": acc["loss"], "frame_acc": acc["frame_acc"], "clip_acc": acc["clip_acc"],
        # None (JSON null) for a class absent from the split: NaN is not valid JSON.
        "per_class_acc": {name: (None if math.isnan(a) else a)
                          for name, a in zip(names, acc["per_class_acc"], strict=True)},
        "confusion": acc["confusion"],
    }


# Written into every confusion PNG: the default --confusion path may replace a file that carries it without --force.
CONFUSION_MARK = "cnn-bilstm-deploy train.evaluate confusion matrix"

# Numeric arguments of evaluate_model: (command-line option, low, high); None values mean "not given".
_RANGES = {"frames": ("--frames", 1, None), "num_clips": ("--val-clips", 1, None), "seed": ("--seed", 0, SEED_MAX),
           "batch_size": ("--batch-size", 1, None), "workers": ("--workers", 0, None),
           "clips_per_video": ("--clips-per-video", 1, None), "log_every": ("--log-every", 0, None),
           "frame_stride": ("--frame-stride", 1, None)}


def _check_numbers(values: dict, cli: bool = False) -> None:
    """Refuse numbers out of range, named as the API's arguments or (``cli``) as the command line's options."""
    for name, (option, low, high) in _RANGES.items():
        check_range(option if cli else name, values.get(name), low, high, error=EvaluationError)
    check_range("--timeout" if cli else "timeout", values.get("timeout"), 0, None, low_open=True,
                error=EvaluationError)


def save_confusion_png(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike,
                       title: str = "") -> Path:
    """Draw a confusion matrix (rows = true class, row-normalised colours, counts printed) to a PNG, atomically.

    Args:
        confusion (Sequence[Sequence[int]]): C x C counts.
        class_names (Sequence[str]): C names.
        path (str | PathLike): output PNG.
        title (str): figure title. Defaults to "".

    Returns:
        Path: the written file.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    import numpy as np

    from runtime._io import atomic_write

    cm = np.asarray(confusion, dtype=np.int64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), dpi=100)
    try:
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
        fig.tight_layout()
        return atomic_write(path, lambda f: fig.savefig(f, format="png", metadata={"Software": CONFUSION_MARK}))
    finally:
        plt.close(fig)


def is_confusion_png(path: Path) -> bool:
    """Whether ``path`` is a confusion-matrix PNG this module wrote (its text chunk names this tool)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)  # matplotlib writes the text chunks before the image data
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and CONFUSION_MARK.encode() in head


def format_report(res: dict[str, Any]) -> str:
    """Human-readable summary of :func:`evaluate_model`'s result."""
    what = f"{res['clips']} videos, {res['clips_per_video']} windows each" if res.get("clips_per_video") else \
        f"{res['clips']} clips"
    frame = "n/a (videos scored by averaged windows)" if res["frame_acc"] is None else f"{res['frame_acc']:.4f}"
    lines = [f"{res['model']} [{res['backend']}, {res['precision']}] on {res['data']} ({res['split']}, {what})",
             f"  frame accuracy  {frame}", f"  clip accuracy   {res['clip_acc']:.4f}"]
    if "shuffled_clip_acc" in res:
        chance = 1.0 / len(res["class_names"])
        lines.append(f"  shuffled clips: frame accuracy {res['shuffled_frame_acc']:.4f}, clip accuracy "
                     f"{res['shuffled_clip_acc']:.4f} (chance {chance:.4f})")
    if "agreement" in res:
        lines += _format_agreement(res["agreement"])
    lines.append("  per-class clip accuracy:")
    width = max(len(c) for c in res["class_names"])
    for name, acc in res["per_class_acc"].items():
        lines.append(f"    {name:<{width}}  {'n/a' if acc is None or math.isnan(acc) else f'{acc:.4f}'}")
    return "\n".join(lines)


def _format_agreement(a: dict) -> list[str]:
    frame = "" if a["frame_agreement"] is None else (f", frame {a['frame_agreement']:.4f} (max |dlogit| "
                                                      f"{a['max_abs_dframe_logit']:.3g})")
    differ = a["differing_clips"]
    shown = ", ".join(map(str, differ[:20])) + (", ..." if len(differ) > 20 else "")
    return [f"  agreement with {a['reference']}: clip top-1 {a['clip_agreement']:.4f} (max |dlogit| "
            f"{a['max_abs_dlogit']:.3g}){frame}",
            f"  clips whose class differs: {len(differ)}" + (f" ({shown})" if differ else "")]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Argument parser of ``python -m train.evaluate``."""
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description="Evaluate a CNN + BiLSTM model: a "
                                "checkpoint, an ONNX export, an engine or a served model.", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="checkpoint (runs/NAME/best.pt), model.onnx or an export folder "
                   "(fp32, fp16, int8), a .engine/.plan, or grpc://HOST:PORT/NAME / http://HOST:PORT/NAME")
    p.add_argument("--reference", default=None, metavar="MODEL",
                   help="also run this model (the checkpoint) on the same clips and report the agreement")
    p.add_argument("--data", choices=DATASETS, default="synthetic", help="data source")
    p.add_argument("--data-dir", default=None, help="folder for cifar10 / folder / video (see python -m train --help)")
    p.add_argument("--split", choices=("train", "test"), default="test", help="which split")
    p.add_argument("--frames", type=int, default=8, help="clip length T (folder: maximum; --clips-per-video: "
                   "frames per window)")
    p.add_argument("--val-clips", "--num-clips", dest="num_clips", type=int, default=None,
                   help="clips (videos) to evaluate (synthetic default 1024, others all)")
    p.add_argument("--seed", type=int, default=0, help="data seed (use the training seed)")
    p.add_argument("--sampling", choices=("uniform", "stride", "window"), default=None,
                   help="video: how a clip's frames are picked (use the training run's --sampling); default uniform, "
                        "window with --clips-per-video")
    p.add_argument("--frame-stride", type=int, default=1, help="video with --sampling stride: step between frames")
    p.add_argument("--clips-per-video", type=int, default=None, metavar="K",
                   help="video: score each video by K evenly spaced windows, their probabilities averaged")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch (split to what the model takes)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (not for a served model)")
    p.add_argument("--timeout", type=float, default=30.0, help="served model: seconds per request")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--shuffled", action=argparse.BooleanOptionalAction, default=None,
                   help="also report accuracy on temporally shuffled clips (default: yes, except with "
                        "--clips-per-video)")
    p.add_argument("--log-every", type=int, default=10,
                   help="without a terminal, log progress every N batches (0: never)")
    p.add_argument("--confusion", default=None, metavar="PNG",
                   help="confusion-matrix image, .png (default for a checkpoint: confusion_<split>.png beside it, "
                        "which replaces an earlier confusion matrix there but no other file; other models: none)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON (.json)")
    p.add_argument("--force", action="store_true", help="replace existing --confusion and --json files")
    return p


def _check_args(args: argparse.Namespace) -> tuple[Optional[Path], Optional[Path]]:
    """Numeric options and both output files, before any work; returns the PNG and JSON paths."""
    from runtime._io import check_output_file, remove_stale_temporaries

    _check_numbers(vars(args), cli=True)
    png = None
    if args.confusion:
        png = check_output_file(args.confusion, what="--confusion", suffixes=(".png",), force=args.force)
    elif not is_remote_url(args.model) and Path(args.model).suffix.lower() in (".pt", ".pth"):
        # the tool's own default name: an earlier confusion matrix there is replaced, any other file refused
        png = check_output_file(Path(args.model).parent / f"confusion_{args.split}.png",
                                what="--confusion (default: beside the checkpoint)", suffixes=(".png",),
                                force=args.force, replaceable=is_confusion_png)
    js = check_output_file(args.json, what="--json", suffixes=(".json",), force=args.force) if args.json else None
    for path in (png, js):
        if path is not None:  # temporaries that a killed earlier write of this file left
            remove_stale_temporaries(path.parent, [path.name])
    return png, js


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate and print the report; returns 0, 2 on bad input, 3 when the model cannot run here (or its server
    does not answer), 1 when a result file cannot be written."""
    from runtime._io import atomic_write_json

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = get_args_parser().parse_args(argv)
    try:
        png, js = _check_args(args)
        res = evaluate_model(args.model, data=args.data, data_dir=args.data_dir, split=args.split, frames=args.frames,
                             num_clips=args.num_clips, seed=args.seed, batch_size=args.batch_size,
                             device=args.device, reference=args.reference, clips_per_video=args.clips_per_video,
                             shuffled=args.shuffled, workers=args.workers, sampling=args.sampling,
                             frame_stride=args.frame_stride, timeout=args.timeout, log_every=args.log_every)
    except ValueError as e:  # CheckpointError, DataError, EvaluationError, RuntimeInputError, TrainError, OutputPathError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CannotRunError, RemoteServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    try:
        if png is not None:
            save_confusion_png(res["confusion"], res["class_names"], png,
                               title=f"{_short_name(args.model)}: clip acc {res['clip_acc']:.3f}")
            res["confusion_png"] = str(png)
        if js is not None:
            atomic_write_json(js, res)
    except OSError as e:  # checked above, so only what changed since: a full disk, a folder made read-only
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return 1
    print(format_report(res))
    if png is not None:
        print(f"  confusion matrix: {png}")
    return 0


def _short_name(model: str) -> str:
    return model if is_remote_url(model) else Path(model).name


if __name__ == "__main__":
    raise SystemExit(main())
