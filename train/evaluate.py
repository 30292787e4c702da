"""``python -m train.evaluate CHECKPOINT --data ...``: frame, clip and per-class accuracy of a checkpoint, the same on
temporally shuffled clips (the temporal-order ablation), and a confusion-matrix PNG.

Examples:
    python -m train.evaluate runs/demo/best.pt --data synthetic --val-clips 512
    python -m train.evaluate runs/cifar/best.pt --data cifar10 --data-dir data/cifar10 --frames 8

The frame size and normalisation come from the checkpoint; the data set's class names must match the checkpoint's.
``--confusion`` (.png) and ``--json`` (.json) are checked before the evaluation starts and never replace an existing
file without ``--force`` (the default ``confusion_<split>.png`` beside the checkpoint replaces only an earlier
confusion matrix).

Frame accuracy scores the per-frame logits, which come from the BiLSTM and so see the whole clip: on CIFAR-10 clips
(every frame of one class) it tracks clip accuracy and is not a per-image accuracy. ``--frames 1`` feeds single images,
but a model trained on longer clips is then outside what it was trained on.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ._checks import SEED_MAX, check_range
from .data import DATASETS

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The data set does not fit the checkpoint (other classes)."""


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str = "synthetic",
    data_dir: Optional[str] = None,
    split: str = "test",
    frames: int = 8,
    num_clips: Optional[int] = None,
    seed: int = 0,
    synthetic_classes: Optional[int] = None,
    batch_size: int = 32,
    device: str = "auto",
    shuffled: bool = True,
    workers: int = 0,
    sampling: str = "uniform",
    frame_stride: int = 1,
) -> dict[str, Any]:
    # Long only through its documented arguments; the data and the summary are built by helpers below.
    """Evaluate a checkpoint on one split of a data source.

    Args:
        checkpoint (str | PathLike): a checkpoint written by training (``best.pt``/``last.pt``) or ``save_checkpoint``.
        data (str): one of ``train.data.DATASETS``. Defaults to "synthetic".
        data_dir (str | None): folder for cifar10 / folder. Defaults to None.
        split (str): "train" or "test". Defaults to "test".
        frames (int): clip length T (folder: maximum). Defaults to 8.
        num_clips (int | None): clips to evaluate (synthetic: default 1024; others: all). Defaults to None.
        seed (int): data seed (the training seed reproduces its held-out synthetic split). Defaults to 0.
        synthetic_classes (int | None): synthetic class count; None takes the checkpoint's. Defaults to None.
        batch_size (int): clips per batch. Defaults to 32.
        device (str): auto, cpu or cuda. Defaults to "auto".
        shuffled (bool): also evaluate temporally shuffled clips. Defaults to True.
        workers (int): DataLoader workers. Defaults to 0.
        sampling (str): video: how a clip's frames are picked (the training run's ``--sampling``; the test split's
            fixed segment). Defaults to "uniform".
        frame_stride (int): video with ``sampling="stride"``: the step between frames. Defaults to 1.

    Returns:
        dict: ``class_names``, ``clips``, ``frame_acc``, ``clip_acc``, ``per_class_acc`` (dict name -> acc),
        ``confusion`` (rows = true class), ``loss``, and with ``shuffled`` ``shuffled_frame_acc`` and
        ``shuffled_clip_acc``.

    Raises:
        CheckpointError: damaged or foreign checkpoint.
        DataError: unusable data.
        EvaluationError: the data's classes differ from the checkpoint's.
    """
    from torch.utils.data import DataLoader

    from runtime.checkpoint import load_checkpoint

    from .data import pad_collate
    from .loop import evaluate
    from .options import resolve_device

    _check_numbers(dict(frames=frames, num_clips=num_clips, seed=seed, batch_size=batch_size, workers=workers,
                        synthetic_classes=synthetic_classes))
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=str(dev))
    ds = _dataset_for(ckpt, checkpoint, data, data_dir, split, frames, num_clips, seed, synthetic_classes, sampling,
                      frame_stride)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=pad_collate)
    progress = sys.stderr.isatty()
    res = evaluate(ckpt.model, loader, dev, progress=progress)
    if not math.isfinite(res["loss"]):  # NaN/Inf weights still give an argmax, so accuracies alone look plausible
        raise EvaluationError(f"{checkpoint} gives non-finite outputs (loss {res['loss']}) on the {data} data: its "
                              "weights hold NaN or Inf; use another checkpoint")
    out = _summary(res, checkpoint, data, split, ckpt.class_names)
    if shuffled:
        sh = evaluate(ckpt.model, loader, dev, shuffle_frames=True, seed=seed, progress=progress)
        out["shuffled_frame_acc"], out["shuffled_clip_acc"] = sh["frame_acc"], sh["clip_acc"]
    return out


def _dataset_for(ckpt, checkpoint, data: str, data_dir, split: str, frames: int, num_clips, seed: int,
                 synthetic_classes, sampling: str = "uniform", frame_stride: int = 1):
    """The split to evaluate, framed and normalised as the checkpoint expects, with the checkpoint's classes."""
    from .data import DataSpec, build_dataset

    if data == "synthetic" and num_clips is None:  # only a missing count takes the default: 0 is refused above
        num_clips = 1024
    spec = DataSpec(name=data, data_dir=data_dir, frames=frames, frame_size=ckpt.config.frame_size, seed=seed,
                    num_clips=num_clips,
                    num_classes=ckpt.config.num_classes if synthetic_classes is None else synthetic_classes,
                    mean=ckpt.mean, std=ckpt.std, sampling=sampling, frame_stride=frame_stride)
    ds = build_dataset(spec, split)
    if list(ds.class_names) != list(ckpt.class_names):
        raise EvaluationError(f"the {data} data has classes {list(ds.class_names)}, but {checkpoint} was trained on "
                              f"{list(ckpt.class_names)}")
    return ds


def _summary(res: dict, checkpoint, data: str, split: str, class_names) -> dict:
    return {
        "checkpoint": str(checkpoint), "data": data, "split": split, "class_names": list(class_names),
        "clips": res["clips"], "loss": res["loss"], "frame_acc": res["frame_acc"], "clip_acc": res["clip_acc"],
        # None (JSON null) for a class absent from the split: NaN is not valid JSON.
        "per_class_acc": {name: (None if math.isnan(acc) else acc)
                          for name, acc in zip(class_names, res["per_class_acc"], strict=True)},
        "confusion": res["confusion"],
    }


# Written into every confusion PNG: the default --confusion path may replace a file that carries it without --force.
CONFUSION_MARK = "cnn-bilstm-deploy train.evaluate confusion matrix"

# Numeric arguments of evaluate_checkpoint: (command-line option, low, high); None values mean "not given".
_RANGES = {"frames": ("--frames", 1, None), "num_clips": ("--val-clips", 1, None), "seed": ("--seed", 0, SEED_MAX),
           "batch_size": ("--batch-size", 1, None), "workers": ("--workers", 0, None),
           "synthetic_classes": (None, 2, None)}


def _check_numbers(values: dict, cli: bool = False) -> None:
    """Refuse numbers out of range, named as the API's arguments or (``cli``) as the command line's options."""
    for name, (option, low, high) in _RANGES.items():
        check_range(option if cli and option else name, values.get(name), low, high, error=EvaluationError)


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
    """Human-readable summary of :func:`evaluate_checkpoint`'s result."""
    lines = [f"{res['checkpoint']} on {res['data']} ({res['split']}, {res['clips']} clips)",
             f"  frame accuracy  {res['frame_acc']:.4f}", f"  clip accuracy   {res['clip_acc']:.4f}"]
    if "shuffled_clip_acc" in res:
        chance = 1.0 / len(res["class_names"])
        lines.append(f"  shuffled clips: frame accuracy {res['shuffled_frame_acc']:.4f}, clip accuracy "
                     f"{res['shuffled_clip_acc']:.4f} (chance {chance:.4f})")
    lines.append("  per-class clip accuracy:")
    width = max(len(c) for c in res["class_names"])
    for name, acc in res["per_class_acc"].items():
        lines.append(f"    {name:<{width}}  {'n/a' if acc is None or math.isnan(acc) else f'{acc:.4f}'}")
    return "\n".join(lines)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Argument parser of ``python -m train.evaluate``."""
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description="Evaluate a CNN + BiLSTM checkpoint.",
                                add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file (runs/NAME/best.pt)")
    p.add_argument("--data", choices=DATASETS, default="synthetic", help="data source")
    p.add_argument("--data-dir", default=None, help="folder for cifar10 / folder / video (see python -m train --help)")
    p.add_argument("--split", choices=("train", "test"), default="test", help="which split")
    p.add_argument("--frames", type=int, default=8, help="clip length T (folder: maximum)")
    p.add_argument("--val-clips", "--num-clips", dest="num_clips", type=int, default=None,
                   help="clips to evaluate (synthetic default 1024, others all)")
    p.add_argument("--seed", type=int, default=0, help="data seed (use the training seed)")
    p.add_argument("--sampling", choices=("uniform", "stride", "window"), default="uniform",
                   help="video: how a clip's frames are picked (use the training run's --sampling)")
    p.add_argument("--frame-stride", type=int, default=1, help="video with --sampling stride: step between frames")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--shuffled", action=argparse.BooleanOptionalAction, default=True,
                   help="also report accuracy on temporally shuffled clips")
    p.add_argument("--confusion", default=None, metavar="PNG",
                   help="confusion-matrix image, .png (default: confusion_<split>.png beside the checkpoint, which "
                        "replaces an earlier confusion matrix there but no other file)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON (.json)")
    p.add_argument("--force", action="store_true", help="replace existing --confusion and --json files")
    return p


def _check_args(args: argparse.Namespace) -> tuple[Path, Optional[Path]]:
    """Numeric options and both output files, before any work; returns the PNG and JSON paths."""
    from runtime._io import check_output_file, remove_stale_temporaries

    _check_numbers(vars(args), cli=True)
    if args.confusion:
        png = check_output_file(args.confusion, what="--confusion", suffixes=(".png",), force=args.force)
    else:  # the tool's own default name: an earlier confusion matrix there is replaced, any other file refused
        png = check_output_file(Path(args.checkpoint).parent / f"confusion_{args.split}.png",
                                what="--confusion (default: beside the checkpoint)", suffixes=(".png",),
                                force=args.force, replaceable=is_confusion_png)
    js = check_output_file(args.json, what="--json", suffixes=(".json",), force=args.force) if args.json else None
    for path in (png, js):
        if path is not None:  # temporaries that a killed earlier write of this file left
            remove_stale_temporaries(path.parent, [path.name])
    return png, js


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate and print the report; returns 0, 2 on bad input, 1 when a result file cannot be written."""
    from runtime._io import atomic_write_json

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = get_args_parser().parse_args(argv)
    try:
        png, js = _check_args(args)
        res = evaluate_checkpoint(args.checkpoint, data=args.data, data_dir=args.data_dir, split=args.split,
                                  frames=args.frames, num_clips=args.num_clips, seed=args.seed,
                                  batch_size=args.batch_size, device=args.device, shuffled=args.shuffled,
                                  workers=args.workers, sampling=args.sampling, frame_stride=args.frame_stride)
    except ValueError as e:  # CheckpointError, DataError, EvaluationError, TrainError (device), OutputPathError
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        save_confusion_png(res["confusion"], res["class_names"], png,
                           title=f"{Path(args.checkpoint).name}: clip acc {res['clip_acc']:.3f}")
        res["confusion_png"] = str(png)
        if js is not None:
            atomic_write_json(js, res)
    except OSError as e:  # checked above, so only what changed since: a full disk, a folder made read-only
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return 1
    print(format_report(res))
    print(f"  confusion matrix: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
