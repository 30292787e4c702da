"""``python -m train``: train the CNN + BiLSTM on synthetic clips, CIFAR-10 clips or a folder of clips.

Examples:
    python -m train --preset demo --out runs/demo          # synthetic data, minutes on a 2-core CPU
    python -m train --preset cifar10-cpu --data-dir data/cifar10 --out runs/cifar-cpu
    python -m train --data cifar10 --data-dir data/cifar10 --out runs/cifar
    python -m train --data folder --data-dir my_clips --frames 16 --out runs/mine
    python -m train --data video --data-dir my_videos --frames 16 --workers 2 --cache-dir cache --out runs/vid
    python -m train --resume runs/cifar                    # continue where it stopped
    python -m train --resume runs/cifar --epochs 40        # ... or extend it
    torchrun --nproc_per_node 2 -m train --preset demo --out runs/demo-ddp   # data-parallel, 2 processes

Precedence of option values: the command line, then (with --resume) the run's config.json, then --preset, then the
built-in defaults shown above.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from runtime.model import BACKBONES, NOT_PRETRAINED, STEMS

from .clips import DATASETS
from .distributed import BACKENDS, DEFAULT_TIMEOUT_S

logger = logging.getLogger("train")

# Each preset only changes defaults; options on the command line still win.
PRESETS: dict[str, dict] = {
    # Synthetic data, sized for a 2-core CPU: a few minutes to >= 90 % held-out clip accuracy.
    "demo": dict(data="synthetic", backbone="resnet18", stem="imagenet", frame_size=[24, 24], frames=8,
                 hidden_size=64, num_layers=1, train_clips=1536, val_clips=512, epochs=3, batch_size=32, lr=2e-3,
                 warmup_epochs=0),
    # A short CIFAR-10 run on a CPU (subset, small frames); clearly above chance, far from the GPU numbers.
    "cifar10-cpu": dict(data="cifar10", backbone="resnet18", stem="imagenet", frame_size=[32, 32], frames=8,
                        hidden_size=64, num_layers=1, train_clips=2500, val_clips=500, epochs=5, batch_size=32,
                        lr=2e-3, augment=False),
    # The reference CIFAR-10 experiment for a GPU: ResNet-34, cifar stem, T=8, every image.
    "cifar10-gpu": dict(data="cifar10", backbone="resnet34", stem="cifar", frame_size=[32, 32], frames=8,
                        hidden_size=256, num_layers=2, epochs=30, batch_size=32, lr=1e-3, warmup_epochs=1,
                        augment=True, workers=8),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, examples kept as written."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The training argument parser (torchvision-references style; ``add_help=False`` lets other tools reuse it)."""
    p = argparse.ArgumentParser(
        prog="python -m train", description="Train the CNN + BiLSTM frame-sequence classifier.", add_help=add_help,
        formatter_class=_HelpFormatter, epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="change the defaults to a named set: " + "; ".join(
                       f"{k}: " + ", ".join(f"{a}={v}" for a, v in d.items()) for k, d in PRESETS.items()))
    _data_options(p.add_argument_group("data"))
    _model_options(p.add_argument_group("model"))
    _optimisation_options(p.add_argument_group("optimisation"))
    _fine_tuning_options(p.add_argument_group("fine-tuning (a pretrained backbone; see docs/training.md)"))
    _run_options(p.add_argument_group("run"))
    _distributed_options(p.add_argument_group("distributed (under torchrun; see docs/training.md)"))
    return p


def _data_options(g) -> None:
    g.add_argument("--data", choices=DATASETS, default="synthetic", help="data source")
    g.add_argument("--data-dir", default=None,
                   help="cifar10: ImageFolder tree with train/ and test/ (or torchvision's CIFAR10 root); "
                        "folder: root/<class>/<clip>/<frames> (with train/ and test/ inside, or split by "
                        "--val-fraction); video: root/<class>/*.mp4|avi|mkv|webm (train/ and test/ the same way)")
    g.add_argument("--download", action="store_true", help="cifar10: download it into --data-dir with torchvision")
    g.add_argument("--frames", type=int, default=8,
                   help="clip length T (folder: the maximum; longer clips keep T evenly spaced frames)")
    g.add_argument("--train-clips", type=int, default=None,
                   help="clips in the training split (synthetic: default 4096 per epoch, fresh every epoch; "
                        "others: a balanced subset, default all)")
    g.add_argument("--val-clips", type=int, default=None,
                   help="clips in the held-out split (synthetic: default 1024; others: default all)")
    g.add_argument("--synthetic-classes", type=int, choices=(2, 4), default=4,
                   help="synthetic: 2 (clockwise or not) or 4 (also slow or fast)")
    g.add_argument("--val-fraction", type=float, default=0.2,
                   help="folder without train/ and test/: held-out fraction of each class's clips")
    g.add_argument("--sampling", choices=("uniform", "stride", "window"), default="uniform",
                   help="video: a clip's T frames: uniform (one per equal segment), stride (every --frame-stride-th "
                        "frame) or window (T consecutive); a random segment per epoch for training, fixed for test")
    g.add_argument("--frame-stride", type=int, default=1, help="video with --sampling stride: step between frames")
    g.add_argument("--cache-dir", default=None,
                   help="video: keep decoded, resized frames here (keyed by file content and frame size), so later "
                        "epochs decode nothing")
    g.add_argument("--on-bad-video", choices=("fail", "skip"), default="fail",
                   help="video: a damaged or empty video stops the run (fail) or is left out with a warning (skip)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                   help="cifar10: per-frame random shift and flip on the training split")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _model_options(g) -> None:
    g.add_argument("--backbone", choices=BACKBONES, default="resnet34",
                   help="torchvision network for the per-frame features (its classifier removed)")
    g.add_argument("--pretrained", default=NOT_PRETRAINED, metavar="none|imagenet|PATH",
                   help="the backbone's starting weights: none (random init), imagenet (torchvision's weights, "
                        "downloaded into TORCH_HOME the first time) or a torchvision state dict file; pretrained "
                        "weights bring the ImageNet normalisation")
    g.add_argument("--stem", choices=(*STEMS, "auto"), default="auto",
                   help="imagenet: the network's own stem (4x downsampling in a ResNet, 2x in the others); cifar: "
                        "keeps detail in small frames (ResNet: 3x3 stride-1 conv, no max-pool; the others: first "
                        "conv at stride 1); auto: cifar, or imagenet with --pretrained (which needs it)")
    g.add_argument("--frame-size", type=int, nargs="+", default=[32, 32], metavar="PX",
                   help="frame height and width (one value: square); frames are resized to it")
    g.add_argument("--hidden-size", type=int, default=256, help="LSTM hidden size per direction")
    g.add_argument("--num-layers", type=int, default=2, help="stacked bidirectional LSTM layers")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout between LSTM layers and before the heads")


def _optimisation_options(g) -> None:
    g.add_argument("--epochs", type=int, default=30, help="total epochs (with --resume: may extend the run)")
    g.add_argument("--batch-size", type=int, default=32,
                   help="clips per batch per process: under torchrun one optimizer step takes batch-size x "
                        "world-size clips")
    g.add_argument("--opt", choices=("adamw", "sgd"), default="adamw", help="optimizer")
    g.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate (cosine decay per step), used as given at every world size: with N "
                        "processes the global batch is N times larger, so scale it yourself (docs/training.md)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="weight decay (not on biases and norms)")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up before the cosine decay")
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    g.add_argument("--frame-loss-weight", type=float, default=1.0,
                   help="weight of the per-frame loss (summed over real steps) against the clip loss")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and synthetic clips")


def _fine_tuning_options(g) -> None:
    g.add_argument("--backbone-lr-scale", type=float, default=1.0,
                   help="the backbone's learning rate as a fraction of --lr (the BiLSTM and heads take --lr)")
    g.add_argument("--freeze-backbone-epochs", type=int, default=0,
                   help="train only the BiLSTM and heads for the first N epochs: the backbone's weights and "
                        "BatchNorm statistics stay as they are")
    g.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the backbone's BatchNorm statistics as they are for the whole run (its scales and "
                        "shifts still train)")


def _run_options(g) -> None:
    g.add_argument("--out", default=None, help="run folder (default runs/<data>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.pt (options default to its config.json)")
    g.add_argument("--force", action="store_true",
                   help="start again in a non-empty --out: the old run's last.pt, best.pt, metrics.json and "
                        "config.json are deleted before anything new is written (other files stay)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="fp16 autocast + grad scaling (CUDA only; always off on CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory layout (CUDA only; always off on CPU)")
    g.add_argument("--eval-shuffled", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate every epoch on temporally shuffled held-out clips")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar (only when stderr is a terminal; rank 0 only)")


def _distributed_options(g) -> None:
    g.add_argument("--dist-backend", choices=BACKENDS, default="auto",
                   help="process-group backend: auto is nccl on CUDA devices, gloo on CPUs")
    g.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="timeout of every collective: a rank that hangs this long ends the job on every rank; must "
                        "exceed rank 0's longest solo stretch (writing a checkpoint, a --download)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="SyncBatchNorm: batch statistics over every process's batch (CUDA only: torch refuses it on "
                        "CPUs; no effect in one process)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse with the precedence command line > resumed config.json > preset > defaults, then fill derived values.

    Raises:
        TrainError: --resume names a folder without a readable config.json, --out disagrees with --resume, or a
            resumed run is given other fine-tuning options than it was started with.
    """
    from ._checks import TrainError
    from .options import check_train_args

    parser = get_args_parser()
    first, _ = parser.parse_known_args(argv)
    if first.resume and first.force:
        raise TrainError("--resume continues a run and --force starts one again; give one of them")
    if first.preset:
        parser.set_defaults(**PRESETS[first.preset])
    if first.resume:
        cfg = Path(first.resume) / "config.json"
        try:
            saved = json.loads(cfg.read_text(encoding="utf-8"))["args"]
        except (OSError, ValueError, KeyError) as e:
            raise TrainError(f"--resume {first.resume}: cannot read the run's config.json ({e})") from e
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in saved.items() if k in known and k not in ("resume", "force")})
    args = parser.parse_args(argv)
    if args.resume:
        if first.out is not None and Path(first.out) != Path(args.resume):
            raise TrainError(f"--out {first.out} and --resume {args.resume} name different folders; give one")
        args.out = args.resume
        _check_kept_on_resume(args, saved)
    if args.out is None:
        args.out = str(Path("runs") / args.data)
    if len(args.frame_size) == 1:
        args.frame_size = [args.frame_size[0]] * 2
    if len(args.frame_size) != 2:
        raise TrainError(f"--frame-size takes 1 or 2 values (height width), got {args.frame_size}")
    check_train_args(args)
    if args.data == "synthetic":  # only a missing count takes the default: 0 was refused above
        args.train_clips = 4096 if args.train_clips is None else args.train_clips
        args.val_clips = 1024 if args.val_clips is None else args.val_clips
    return args


# What a resumed run keeps from its start: its weights' origin and how the backbone is fine-tuned (the optimizer's
# parameter groups and the schedule of each epoch depend on them).
KEPT_ON_RESUME = ("pretrained", "backbone_lr_scale", "freeze_backbone_epochs", "freeze_bn")


def _check_kept_on_resume(args: argparse.Namespace, saved: dict) -> None:
    from ._checks import TrainError

    defaults = get_args_parser()  # runs saved before an option existed ran with its default
    for dest in KEPT_ON_RESUME:
        was = saved.get(dest, defaults.get_default(dest))
        if getattr(args, dest) != was:
            option = "--" + dest.replace("_", "-")
            raise TrainError(f"--resume {args.resume}: the run was started with {option} {was}; a resumed run keeps "
                             f"it (leave {option} out, or start a new run)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run training; returns 0 on success, 2 on bad input, 1 when a file cannot be written or a distributed run lost
    a rank, 130 when interrupted (what can be resumed is printed). Under torchrun only rank 0 logs below WARNING, and
    every rank's messages name it."""
    from .distributed import RankFailure
    from .engine import fit
    from .run_state import TrainInterrupted

    rank = os.environ.get("RANK")  # set by torchrun; the process group itself is set up in fit
    tag = f" rank {rank}" if rank is not None else ""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if rank in (None, "0") else logging.WARNING,
                            format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s",
                            stream=sys.stderr)
    try:
        args = parse_args(argv)
        result = fit(args)
    except TrainInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    except ValueError as e:  # DataError, TrainError, CheckpointError, OutputPathError and ModelConfig's checks
        print(f"error{tag and f' ({tag.strip()})'}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # outputs were checked first, so what changed since: a full disk, a folder made read-only
        print(f"error: {e} (every file in the run folder is either its old or its new version)", file=sys.stderr)
        return 1
    except RankFailure as e:  # another rank died, hung or was stopped; the message names this rank
        print(f"error: {e}", file=sys.stderr)
        return 1
    logger.info("done: best test clip accuracy %.4f (epoch %d); run folder %s", result["best_clip_acc"],
                result["best_epoch"] + 1, result["out"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
