"""Training: :func:`fit`, the epoch loop with its run folder, atomic checkpoints and exact resume. ``python -m train``
is a thin CLI over it. The parts live beside it: the loss and the loops in :mod:`train.loop`, options, optimizer and
device in :mod:`train.options`, the run folder and RNG state in :mod:`train.run_state`.

Run folder (``--out runs/NAME``), every file written atomically through :mod:`runtime._io`:
    last.pt       checkpoint after the latest finished epoch, with ``train_state`` (epoch, optimizer, scheduler,
                  grad scaler, RNG states, best metric, metric history) for ``--resume``
    best.pt       checkpoint of the epoch with the best held-out clip accuracy
    metrics.json  one record per finished epoch
    config.json   every training argument plus the model config, class names and normalisation

``config.json`` and every ``last.pt`` carry the run's ``run_id``: ``--resume`` refuses a pair from two runs (say, an
old last.pt beside the config.json of an interrupted ``--force`` restart). A forced restart deletes the old run's
files before it writes anything; temporaries of killed writes are removed at the next start.

Resuming restores the weights, optimizer, scheduler, RNG states and epoch counter from ``last.pt``, so an interrupted
run continued with ``--resume`` ends with the same weights as one that never stopped (on the same device and build).

Under ``torchrun`` (:mod:`train.distributed`) every rank trains its shard of each epoch through
DistributedDataParallel, evaluates its shard of the held-out set (the sums are reduced, so every clip counts once),
and only rank 0 writes the run folder; ``last.pt`` also holds every rank's RNG state and the world size, and a run
resumes under another world size at the same epoch and point of the learning-rate schedule.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from runtime._io import atomic_write_json
from runtime._version import __version__
from runtime.checkpoint import CheckpointError, load_state_dict_checked, save_checkpoint
from runtime.model import NOT_PRETRAINED, CNNBiLSTM, ModelConfig

from . import distributed
from ._checks import TrainError
from .data import build_dataset
from .loop import evaluate, train_one_epoch
from .options import (
    build_optimizer,
    build_scheduler,
    check_train_args,
    data_spec,
    make_loader,
    model_config_from_args,
)
from .pretrained import apply_weights, eval_modules, load_pretrained, set_backbone_frozen, smallest_map
from .run_state import (
    RunProgress,
    TrainInterrupted,
    capture_rng_state,
    check_out_dir,
    read_resume_state,
    restore_rng_state,
    seed_everything,
    start_run_folder,
)

logger = logging.getLogger(__name__)


def fit(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` says (see ``python -m train --help``), writing the run folder; resumes with ``args.resume``.

    Everything about the run folder is checked before any data is read: it is a writable folder, empty unless
    resuming or forced, and a resumed ``last.pt`` belongs to the run's ``config.json``. Temporaries that killed writes
    left there are removed. A forced restart deletes the old run's files before it writes anything.

    Args:
        args (argparse.Namespace): parsed training arguments (``train.__main__.get_args_parser``).

    Returns:
        dict: the last epoch's metrics record plus ``best_clip_acc``, ``best_epoch`` and ``out``. A resumed run that
        already finished ``args.epochs`` epochs returns its last record and writes nothing.

    Raises:
        TrainError: output folder in use or unusable, nothing to resume, CUDA unavailable, a non-finite loss.
        DataError: unusable data.
        CheckpointError: a damaged ``last.pt`` or one of another model config.
        TrainInterrupted: Ctrl-C (a KeyboardInterrupt whose message says what can be resumed).
    """
    check_train_args(args)  # again: fit may be called without parse_args
    out = Path(args.out)
    with distributed.session(args.device, args.dist_backend, args.dist_timeout) as (ctx, device):
        distributed.check_sync_bn(args.sync_bn, device)
        # Rank 0 checks the folder alone (it alone writes there); a refusal there stops every rank with its message.
        distributed.main_first(ctx, lambda: check_out_dir(out, bool(args.resume), args.force), others=False)
        resume_state = distributed.main_first(ctx, lambda: read_resume_state(out, args.epochs)) if args.resume else None
        saved = RunProgress(out)
        if resume_state is not None:
            ts = resume_state["train_state"]
            saved.last_epoch, saved.best = int(ts["epoch"]), True
            if saved.last_epoch + 1 == args.epochs:
                logger.info("%s already finished all %d epochs; nothing to do (give --epochs %d or more to extend "
                            "it)", out, args.epochs, args.epochs + 1)
                return _result(list(ts["history"]), float(ts["best_metric"]), int(ts["best_epoch"]), out)
        try:
            return _fit(args, out, device, resume_state, saved, ctx)
        except KeyboardInterrupt as e:
            stopped = f"{ctx.describe()}: {e}; " if isinstance(e, distributed.RankStopped) else ""
            raise TrainInterrupted(stopped + _what_is_saved(saved, ctx, interrupted=True)) from e
        except FloatingPointError as e:
            raise TrainError(f"{e} ({_what_is_saved(saved, ctx)})") from e
        except RuntimeError as e:
            if not (ctx.active and distributed.is_collective_failure(e)):
                raise
            first = " ".join(str(e).split())[:240]
            raise distributed.RankFailure(
                f"{ctx.describe()}: a collective operation with the other ranks failed ({first}): another rank died, "
                f"hung for longer than --dist-timeout {args.dist_timeout:g} s, or was stopped; "
                f"{_what_is_saved(saved, ctx)}") from e


def _what_is_saved(saved: RunProgress, ctx: "distributed.DistContext", interrupted: bool = False) -> str:
    """What the run folder holds, as rank 0 knows it; the other ranks only know that rank 0 writes atomically."""
    if ctx.is_main:
        return saved.interrupted() if interrupted else saved.where()
    return (f"rank 0 writes the run folder atomically, so {saved.out} keeps the last checkpoint it finished; "
            f"continue with --resume {saved.out}")


def _datasets(args: argparse.Namespace):
    train_ds = build_dataset(data_spec(args, "train"), "train")
    val_ds = build_dataset(data_spec(args, "test"), "test")
    if list(train_ds.class_names) != list(val_ds.class_names):
        raise TrainError(f"train and test splits have different classes: {train_ds.class_names} vs "
                         f"{val_ds.class_names}")
    return train_ds, val_ds


def _restore(ts: dict, optimizer, scheduler, scaler, steps_per_epoch: int, ctx: "distributed.DistContext",
             seed: int) -> tuple[int, float, int, list]:
    """Load a training state; returns the first epoch to run, the best metric and its epoch, and the history.

    Under another world size than the one that saved it (so another number of steps per epoch), the scheduler is put
    at the same point of the schedule: the start of the next epoch. Each rank restores its own saved RNG state; a rank
    the saved run did not have is seeded from (seed, rank, epoch).
    """
    start = int(ts["epoch"]) + 1
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    saved_steps = int(ts.get("steps_per_epoch", steps_per_epoch))  # runs saved before this key: one process
    if saved_steps != steps_per_epoch:
        _rebase_scheduler(scheduler, optimizer, start * steps_per_epoch)
        logger.info("last.pt was saved with %d steps per epoch (world size %d), this run takes %d: the learning-rate "
                    "schedule continues from the start of epoch %d", saved_steps, int(ts.get("world_size", 1)),
                    steps_per_epoch, start + 1)
    if scaler is not None and ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    per_rank = ts.get("rng_per_rank") or [ts["rng"]]
    if ctx.rank < len(per_rank):
        restore_rng_state(per_rank[ctx.rank])
    else:
        seed_everything(seed + 1_000_003 * ctx.rank + start)
    return start, float(ts["best_metric"]), int(ts["best_epoch"]), list(ts["history"])


def _rebase_scheduler(scheduler, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Put a per-step LambdaLR at ``step`` of its (new) schedule, and the optimizer's learning rates with it."""
    scheduler.last_epoch = step
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports


def _result(history: list, best: float, best_epoch: int, out: Path) -> dict[str, Any]:
    return {**(history[-1] if history else {}), "best_clip_acc": best, "best_epoch": best_epoch, "out": str(out)}


@dataclass
class _Setup:
    """Everything one training run works with, built before its first epoch."""

    model: CNNBiLSTM  # the network itself: what checkpoints hold
    trained: torch.nn.Module  # what the training loop runs: ``model``, or DistributedDataParallel over it
    ctx: "distributed.DistContext"
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    train_ds: Any
    val_ds: Any
    amp: bool
    channels_last: bool
    save_kw: dict
    backbone_frozen: bool = False
    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)


def _set_up(args: argparse.Namespace, out: Path, device: torch.device, resume_state: Optional[dict],
            ctx: "distributed.DistContext") -> _Setup:
    """Data, model (resumed weights), optimizer, schedule and loss scaler; a resumed state restored into them."""
    cuda = device.type == "cuda"
    amp, channels_last = bool(args.amp and cuda), bool(args.channels_last and cuda)
    weights, pretrained = _starting_weights(args, ctx, resume_state)  # before any data: a failed download stops first
    train_ds, val_ds = distributed.main_first(ctx, lambda: _datasets(args))  # rank 0 first: one download
    class_names, mean, std = list(train_ds.class_names), list(train_ds.mean), list(train_ds.std)
    config = model_config_from_args(args, len(class_names), pretrained)
    if resume_state is not None and _saved_config(resume_state) != config.to_dict():
        raise CheckpointError(f"{out / 'last.pt'} was trained with model config {resume_state['config']}, but the "
                              f"arguments describe {config.to_dict()}; resume without changing the model options")
    if resume_state is None:
        seed_everything(args.seed)

    model = CNNBiLSTM(config)
    if weights is not None:
        apply_weights(model, weights)
    if resume_state is not None:
        load_state_dict_checked(model, resume_state["state_dict"], source=str(out / "last.pt"))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    frozen = set_backbone_frozen(model, _frozen_in(args, resume_state))
    trained = distributed.wrap_model(model, ctx, device, args.sync_bn)  # DDP broadcasts rank 0's weights
    if ctx.active and resume_state is None:
        seed_everything(args.seed + 1_000_003 * ctx.rank)  # one weight init, then each rank its own random stream
    if args.sync_bn and not ctx.active:
        logger.info("--sync-bn has no effect in one process")
    optimizer = build_optimizer(model, args.opt, args.lr, args.weight_decay, args.momentum, args.backbone_lr_scale)
    per_rank = len(train_ds)
    if ctx.active:
        logger.info(distributed.describe_train_split(len(train_ds), ctx, args.batch_size))
        per_rank = len(train_ds) // ctx.world_size
    steps_per_epoch = math.ceil(per_rank / args.batch_size)
    scheduler = build_scheduler(optimizer, args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    setup = _Setup(model, trained, ctx, steps_per_epoch, optimizer, scheduler, scaler, train_ds, val_ds, amp,
                   channels_last, {"class_names": class_names, "mean": mean, "std": std}, frozen)
    if resume_state is not None:
        setup.start_epoch, setup.best, setup.best_epoch, setup.history = _restore(
            resume_state["train_state"], optimizer, scheduler, scaler, steps_per_epoch, ctx, args.seed)
        logger.info("resuming %s after epoch %d of %d (best clip acc %.4f at epoch %d)", out, setup.start_epoch,
                    args.epochs, setup.best, setup.best_epoch + 1)
    return setup


def _starting_weights(args: argparse.Namespace, ctx: "distributed.DistContext", resume_state: Optional[dict]):
    """The backbone's pretrained weights for a training run (read on rank 0 only: DDP gives every rank rank 0's
    weights) and the label its model config records; a resumed run keeps its label and starts from its last.pt.

    Returns:
        tuple[BackboneWeights | None, str]: the weights (None on other ranks, when resuming or with "none"), the label.

    Raises:
        PretrainedError: see :func:`load_pretrained` (on every rank, through :func:`train.distributed.main_first`).
    """
    if resume_state is not None:
        return None, resume_state["config"].get("pretrained", NOT_PRETRAINED)
    if args.pretrained == NOT_PRETRAINED:
        return None, NOT_PRETRAINED
    progress = bool(args.progress and sys.stderr.isatty())
    weights = distributed.main_first(ctx, lambda: load_pretrained(args.pretrained, args.backbone, progress),
                                     others=False)
    label = distributed.all_gather_objects(ctx, weights.label if weights is not None else None)[0]
    if ctx.is_main:
        h, w = smallest_map(args.backbone, tuple(args.frame_size))
        logger.log(logging.WARNING if min(h, w) < 2 else logging.INFO,
                   "pretrained %s (%s) on %dx%d frames: its last feature map is %dx%d (the ImageNet weights were "
                   "trained on 224x224 crops); for small images give a larger --frame-size (frames are resized; "
                   "docs/training.md)", args.backbone, label, *args.frame_size, h, w)
    return weights, label


def _saved_config(resume_state: dict) -> dict:
    """A resumed checkpoint's model config with today's fields (runs saved before a field read its default)."""
    return ModelConfig.from_dict(resume_state["config"]).to_dict()


def _frozen_in(args: argparse.Namespace, resume_state: Optional[dict]) -> bool:
    """Whether the backbone is frozen in the first epoch this call of fit runs."""
    start = 0 if resume_state is None else int(resume_state["train_state"]["epoch"]) + 1
    return start < args.freeze_backbone_epochs


def _run_epoch(args: argparse.Namespace, s: _Setup, device: torch.device, epoch: int, progress: bool) -> tuple:
    """Train one epoch and evaluate it (also on time-shuffled clips with ``--eval-shuffled``); returns
    (the epoch's metrics record, the training summary)."""
    frozen = epoch < args.freeze_backbone_epochs
    if frozen != s.backbone_frozen:
        s.backbone_frozen = set_backbone_frozen(s.model, frozen)
        if s.ctx.active:  # DDP reduces the gradients of the parameters that required them when it was built
            s.trained = None
            s.trained = distributed.wrap_model(s.model, s.ctx, device)  # (any SyncBatchNorm is converted already)
    if epoch == args.freeze_backbone_epochs > 0:
        logger.info("epoch %d: the backbone trains from here on (frozen for the first %d)", epoch + 1, epoch)
    if hasattr(s.train_ds, "set_epoch"):
        s.train_ds.set_epoch(epoch)
    sampler = distributed.train_sampler(s.train_ds, s.ctx, args.seed, epoch)
    loader = make_loader(s.train_ds, args, True, epoch, device, sampler=sampler, rank=s.ctx.rank)
    tr = train_one_epoch(s.trained, loader, s.optimizer, device, epoch,
                         scheduler=s.scheduler, scaler=s.scaler, amp=s.amp, channels_last=s.channels_last,
                         clip_grad_norm=args.clip_grad, frame_loss_weight=args.frame_loss_weight, progress=progress,
                         eval_modules=eval_modules(s.model, args, frozen))
    distributed.broadcast_buffers(s.model, s.ctx)  # every rank evaluates the weights rank 0 saves
    # Evaluation draws no global random numbers (own generator), so it cannot disturb the training stream.
    val_loader = make_loader(s.val_ds, args, False, 0, device, sampler=distributed.eval_sampler(s.val_ds, s.ctx))
    ev = evaluate(s.model, val_loader, device, amp=s.amp, channels_last=s.channels_last,
                  frame_loss_weight=args.frame_loss_weight)
    record = {"epoch": epoch, **{f"train_{k}": v for k, v in tr.items()},
              **{f"val_{k}": ev[k] for k in ("loss", "frame_loss", "clip_loss", "frame_acc", "clip_acc", "clips")}}
    if args.eval_shuffled:
        sh = evaluate(s.model, val_loader, device, shuffle_frames=True, seed=args.seed, amp=s.amp,
                      channels_last=s.channels_last)
        record["val_shuffled_clip_acc"] = sh["clip_acc"]
        record["val_shuffled_frame_acc"] = sh["frame_acc"]
    record["time"] = tr["time"] + ev["time"] + (sh["time"] if args.eval_shuffled else 0.0)
    return record, tr


def _save_epoch(out: Path, s: _Setup, epoch: int, improved: bool, run_id: str, saved: RunProgress) -> None:
    """best.pt (when improved), last.pt with the training state, metrics.json: written by rank 0 only, after every
    rank handed it its RNG state (so every rank calls this)."""
    rng = distributed.all_gather_objects(s.ctx, capture_rng_state())
    if not s.ctx.is_main:
        return
    train_state = {
        "epoch": epoch, "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else {}, "rng": rng[0], "rng_per_rank": rng,
        "world_size": s.ctx.world_size, "steps_per_epoch": s.steps_per_epoch,
        "best_metric": s.best, "best_epoch": s.best_epoch, "history": s.history, "run_id": run_id,
    }
    # best.pt before last.pt: a kill between the two leaves last.pt at the previous epoch, so resuming redoes
    # this epoch and rewrites the same best.pt; the other order could leave best.pt stale for good.
    if improved:
        save_checkpoint(out / "best.pt", s.model, **s.save_kw)
        saved.best = True
    save_checkpoint(out / "last.pt", s.model, train_state=train_state, **s.save_kw)
    saved.last_epoch = epoch
    atomic_write_json(out / "metrics.json", s.history)


def _fit(args: argparse.Namespace, out: Path, device: torch.device, resume_state: Optional[dict],
         saved: RunProgress, ctx: "distributed.DistContext") -> dict[str, Any]:
    s = _set_up(args, out, device, resume_state, ctx)
    config = s.model.config
    run_id = distributed.main_first(ctx, lambda: start_run_folder(out, args, resume_state, {
        "model_config": config.to_dict(), **s.save_kw,
        "package_version": __version__, "torch_version": torch.__version__, "device": str(device),
        "world_size": ctx.world_size, "dist_backend": ctx.backend,
    }), others=False)
    logger.info("training %s/%s (pretrained: %s) on %s: %d train clips, %d test clips, classes %s, %d epochs from %d",
                config.backbone, config.stem, config.pretrained, device, len(s.train_ds), len(s.val_ds),
                s.save_kw["class_names"], args.epochs, s.start_epoch)
    progress = bool(args.progress and sys.stderr.isatty() and ctx.is_main)
    for epoch in range(s.start_epoch, args.epochs):
        record, tr = _run_epoch(args, s, device, epoch, progress)
        s.history.append(record)
        improved = record["val_clip_acc"] > s.best
        if improved:
            s.best, s.best_epoch = record["val_clip_acc"], epoch
        _save_epoch(out, s, epoch, improved, run_id, saved)
        logger.info(
            "epoch %d/%d  train loss %.4f frame acc %.4f clip acc %.4f | test loss %.4f frame acc %.4f clip acc "
            "%.4f%s | lr %.2e | %.1f s%s",
            epoch + 1, args.epochs, tr["loss"], tr["frame_acc"], tr["clip_acc"], record["val_loss"],
            record["val_frame_acc"], record["val_clip_acc"],
            f" | shuffled clip acc {record['val_shuffled_clip_acc']:.4f}" if args.eval_shuffled else "",
            tr["lr"], record["time"], "  *best" if improved else "",
        )
    return _result(s.history, s.best, s.best_epoch, out)
