"""Training library: loss, ``train_one_epoch``, ``evaluate``, RNG capture, and :func:`fit` (the loop with its run
folder, atomic checkpoints and exact resume). ``python -m train`` is a thin CLI over :func:`fit`.

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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from runtime._io import atomic_write_json, check_output_dir, remove_stale_temporaries
from runtime._version import __version__
from runtime.checkpoint import CheckpointError, load_state_dict_checked, read_checkpoint_dict, save_checkpoint
from runtime.model import CNNBiLSTM, ModelConfig, length_mask

from ._checks import SEED_MAX, check_ranges
from .data import DataSpec, build_dataset, pad_collate

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "config.json")

# Valid ranges of the numeric training options, dest: (low, high[, low_open, high_open]); a value outside is refused
# with its range, never replaced by a default. The model options are checked by ModelConfig itself.
OPTION_RANGES: dict[str, tuple] = {
    "frames": (1, None), "train_clips": (1, None), "val_clips": (1, None), "val_fraction": (0, 1, True, True),
    "workers": (0, None), "epochs": (1, None), "batch_size": (1, None), "lr": (0, None, True),
    "momentum": (0, 1, False, True), "weight_decay": (0, None), "warmup_epochs": (0, None), "clip_grad": (0, None),
    "frame_loss_weight": (0, None), "seed": (0, SEED_MAX),
}


class TrainError(ValueError):
    """A training request that cannot be carried out as asked (output folder in use, nothing to resume, ...)."""


# --------------------------------------------------------------------------------------------------------------------
# loss and metrics
# --------------------------------------------------------------------------------------------------------------------
def sequence_loss(
    frame_logits: torch.Tensor,
    clip_logits: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    frame_loss_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame cross-entropy summed over the real steps of each clip (averaged over clips) plus the clip loss.

    Every frame of a clip carries the clip's label; padded steps are masked out.

    Args:
        frame_logits (Tensor): ``(B, T, C)``.
        clip_logits (Tensor): ``(B, C)``.
        lengths (Tensor): ``(B,)`` real frames per clip.
        labels (Tensor): ``(B,)`` class indices.
        frame_loss_weight (float): weight of the frame term. Defaults to 1.0.

    Returns:
        tuple[Tensor, Tensor, Tensor]: total loss, frame loss, clip loss (scalars).
    """
    b, t, c = frame_logits.shape
    mask = length_mask(lengths.to(frame_logits.device), t)
    per_step = F.cross_entropy(
        frame_logits.float().reshape(b * t, c), labels.repeat_interleave(t), reduction="none"
    ).view(b, t)
    frame_loss = (per_step * mask).sum() / b
    clip_loss = F.cross_entropy(clip_logits.float(), labels)
    return frame_loss_weight * frame_loss + clip_loss, frame_loss, clip_loss


def shuffle_within_clips(frames: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute the real frames of every clip in time (padding stays at the end): the temporal-order ablation.

    Args:
        frames (Tensor): ``(B, T, 3, H, W)``.
        lengths (Tensor): ``(B,)``.
        generator (torch.Generator): CPU generator for the permutations.

    Returns:
        Tensor: a new tensor of the same shape.
    """
    out = frames.clone()
    for i, n in enumerate(lengths.tolist()):
        perm = torch.randperm(int(n), generator=generator).to(frames.device)
        out[i, : int(n)] = frames[i, perm]
    return out


class _Meter:
    """Sums of losses and correct counts over an epoch."""

    def __init__(self, num_classes: int) -> None:
        self.loss = self.frame_loss = self.clip_loss = 0.0
        self.clips = self.frames = self.clip_correct = self.frame_correct = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, loss, frame_loss, clip_loss, frame_logits, clip_logits, lengths, labels) -> None:
        b = labels.shape[0]
        self.loss += float(loss) * b
        self.frame_loss += float(frame_loss) * b
        self.clip_loss += float(clip_loss) * b
        self.clips += b
        mask = length_mask(lengths, frame_logits.shape[1])
        hits = (frame_logits.argmax(-1) == labels.unsqueeze(1)) & mask
        self.frame_correct += int(hits.sum())
        self.frames += int(mask.sum())
        pred = clip_logits.argmax(-1)
        self.clip_correct += int((pred == labels).sum())
        c = self.confusion.shape[0]
        self.confusion += torch.bincount(labels.cpu() * c + pred.cpu(), minlength=c * c).view(c, c)

    def summary(self) -> dict[str, float]:
        n = max(self.clips, 1)
        return {
            "loss": self.loss / n,
            "frame_loss": self.frame_loss / n,
            "clip_loss": self.clip_loss / n,
            "frame_acc": self.frame_correct / max(self.frames, 1),
            "clip_acc": self.clip_correct / n,
        }


# --------------------------------------------------------------------------------------------------------------------
# one epoch of training, one pass of evaluation
# --------------------------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, enabled: bool):
    # Mixed precision only on CUDA: CPU autocast (bfloat16) is slower than fp32 on most CPUs and changes results.
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled and device.type == "cuda")


def train_one_epoch(
    model: CNNBiLSTM,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    scheduler=None,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp: bool = False,
    channels_last: bool = False,
    clip_grad_norm: float = 1.0,
    frame_loss_weight: float = 1.0,
    progress: bool = False,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (batches ``(frames, lengths, labels)``); the scheduler steps per batch.

    Args:
        model (CNNBiLSTM): the network (put in train mode here).
        loader (Iterable): training batches.
        optimizer (Optimizer): the optimizer.
        device (torch.device): where to compute.
        epoch (int): epoch index (for the progress bar).
        scheduler (LRScheduler | None): per-step scheduler. Defaults to None.
        scaler (GradScaler | None): fp16 loss scaler (CUDA AMP). Defaults to None.
        amp (bool): autocast to fp16 (CUDA only). Defaults to False.
        channels_last (bool): feed frames in channels_last layout (CUDA). Defaults to False.
        clip_grad_norm (float): max gradient norm; 0 disables clipping. Defaults to 1.0.
        frame_loss_weight (float): weight of the frame loss. Defaults to 1.0.
        progress (bool): show a tqdm bar. Defaults to False.

    Returns:
        dict[str, float]: loss, frame_loss, clip_loss, frame_acc, clip_acc, lr (at the end), time (s).

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    from tqdm import tqdm

    if not clip_grad_norm >= 0:  # a negative bound would silently mean "no clipping"
        raise TrainError(f"clip_grad_norm must be >= 0 (0: no clipping), got {clip_grad_norm}")
    model.train()
    start = time.perf_counter()
    meter = _Meter(model.config.num_classes)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for frames, lengths, labels in bar:
        frames = frames.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        lengths_dev = lengths.to(device)
        with _autocast(device, amp):
            feats = _features(model, frames, channels_last)
            frame_logits, clip_logits = model.classify(feats, lengths_dev)
            loss, frame_loss, clip_loss = sequence_loss(frame_logits, clip_logits, lengths_dev, labels,
                                                        frame_loss_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss.detach())} at epoch {epoch}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        stepped = True
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            stepped = scaler.get_scale() >= scale  # a lowered scale means inf/NaN gradients: the step was skipped
        else:
            optimizer.step()
        if scheduler is not None and stepped:
            scheduler.step()
        meter.update(loss.detach(), frame_loss.detach(), clip_loss.detach(), frame_logits.detach(),
                     clip_logits.detach(), lengths_dev, labels)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    out = meter.summary()
    out["lr"] = optimizer.param_groups[0]["lr"]
    out["time"] = time.perf_counter() - start
    return out


def _features(model: CNNBiLSTM, frames: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return model.extract_features(frames)
    b, t = frames.shape[:2]
    flat = frames.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return model.cnn(flat).view(b, t, -1)


@torch.no_grad()
def evaluate(
    model: CNNBiLSTM,
    loader,
    device: torch.device,
    *,
    shuffle_frames: bool = False,
    seed: int = 0,
    amp: bool = False,
    channels_last: bool = False,
    frame_loss_weight: float = 1.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Losses and accuracies of ``model`` over ``loader`` (eval mode, no gradients).

    Args:
        model (CNNBiLSTM): the network.
        loader (Iterable): batches ``(frames, lengths, labels)``.
        device (torch.device): where to compute.
        shuffle_frames (bool): permute each clip's frames in time first (the temporal-order ablation).
            Defaults to False.
        seed (int): seed of the permutations. Defaults to 0.
        amp (bool): autocast to fp16 (CUDA only). Defaults to False.
        channels_last (bool): channels_last frames (CUDA). Defaults to False.
        frame_loss_weight (float): weight of the frame loss in ``loss``. Defaults to 1.0.
        progress (bool): show a tqdm bar. Defaults to False.

    Returns:
        dict: loss, frame_loss, clip_loss, frame_acc, clip_acc, per_class_acc (list, clip level, NaN for a class
        absent from the data), confusion (C x C list, rows = true class, columns = predicted), clips, time (s).
    """
    from tqdm import tqdm

    model.eval()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    meter = _Meter(model.config.num_classes)
    for frames, lengths, labels in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        if shuffle_frames:
            frames = shuffle_within_clips(frames, lengths, gen)
        frames, labels, lengths = frames.to(device), labels.to(device), lengths.to(device)
        with _autocast(device, amp):
            frame_logits, clip_logits = model.classify(_features(model, frames, channels_last), lengths)
            loss, frame_loss, clip_loss = sequence_loss(frame_logits, clip_logits, lengths, labels, frame_loss_weight)
        meter.update(loss, frame_loss, clip_loss, frame_logits, clip_logits, lengths, labels)
    out: dict[str, Any] = meter.summary()
    cm = meter.confusion
    totals = cm.sum(1)
    out["per_class_acc"] = [float(cm[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(totals))]
    out["confusion"] = cm.tolist()
    out["clips"] = meter.clips
    out["time"] = time.perf_counter() - start
    return out


# --------------------------------------------------------------------------------------------------------------------
# RNG state as plain tensors, lists and numbers (loadable with weights_only=True)
# --------------------------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors, lists and numbers only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------------
# optimizer and schedule
# --------------------------------------------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov); no weight decay on biases and norm weights.

    Raises:
        TrainError: unknown optimizer name.
    """
    if name not in OPTIMIZERS:
        raise TrainError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Per-step schedule: linear warm-up, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------------------
DEVICES = "auto, cpu, cuda, cuda:N"
_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device (cpu, cuda, cuda:N).

    Raises:
        TrainError: another device name, CUDA requested but not available, or a GPU index torch does not see.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = _DEVICE.fullmatch(str(name))
    if m is None:
        raise TrainError(f"--device {name!r} is not a device training runs on; valid: {DEVICES}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name} asked for CUDA, but torch sees no CUDA GPU; use --device cpu or auto")
        count = torch.cuda.device_count()
        if int(m[1] or 0) >= count:
            raise TrainError(f"--device {name}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse an unusable run folder (a file, not writable), and a non-empty one unless resuming it or forced.

    Raises:
        OutputPathError: ``out`` is a file, or cannot be written.
        TrainError: the folder holds files and neither ``resume`` nor ``force`` is set.
    """
    check_output_dir(out, what="--resume" if resume else "--out")
    if resume or force or not out.exists():
        return
    if any(out.iterdir()):
        raise TrainError(
            f"--out {out} is not empty (an earlier run?); continue it with --resume {out}, "
            f"overwrite it with --force, or pick another --out"
        )


def data_spec(args: argparse.Namespace, split: str) -> DataSpec:
    """The :class:`DataSpec` of one split from the training arguments."""
    return DataSpec(
        name=args.data, data_dir=args.data_dir, frames=args.frames, frame_size=tuple(args.frame_size),
        seed=args.seed, num_clips=args.train_clips if split == "train" else args.val_clips,
        num_classes=args.synthetic_classes, download=args.download, augment=args.augment,
        val_fraction=args.val_fraction,
    )


def check_train_args(args: argparse.Namespace) -> None:
    """The numeric options' ranges and the model options, before any work.

    Raises:
        TrainError: a number out of its range (the message gives the range).
        ValueError: model options that ModelConfig refuses.
    """
    check_ranges(vars(args), OPTION_RANGES, TrainError)
    model_config_from_args(args, num_classes=2)


def model_config_from_args(args: argparse.Namespace, num_classes: int) -> ModelConfig:
    """The :class:`ModelConfig` the arguments describe."""
    return ModelConfig(num_classes=num_classes, backbone=args.backbone, stem=args.stem,
                       frame_size=tuple(args.frame_size), hidden_size=args.hidden_size,
                       num_layers=args.num_layers, dropout=args.dropout)


def _loader(ds, args, shuffle: bool, epoch: int, device: torch.device) -> DataLoader:
    # A generator seeded from (seed, epoch) fixes the order and the workers' seeds of each epoch on its own, so a
    # resumed run draws the same batches as one that never stopped.
    gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle, generator=gen, num_workers=args.workers,
                      collate_fn=pad_collate, pin_memory=device.type == "cuda", drop_last=False)


# --------------------------------------------------------------------------------------------------------------------
# the run folder: resume checks, a forced restart, what an interruption leaves
# --------------------------------------------------------------------------------------------------------------------
class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; the message says what the run folder holds and how to go on from there."""


@dataclass
class _Saved:
    """What this call of :func:`fit` has on disk so far: the epoch ``last.pt`` holds, and whether best.pt exists."""

    out: Path
    last_epoch: Optional[int] = None
    best: bool = False

    def interrupted(self) -> str:
        if self.last_epoch is not None:
            return f"last.pt in {self.out} holds epoch {self.last_epoch + 1}; continue with --resume {self.out}"
        if self.best:
            return (f"stopped while saving the first epoch: best.pt in {self.out} holds its weights, but last.pt "
                    f"(the training state) was not written, so there is nothing to resume; start again with --force")
        return ("stopped before the first epoch finished; no checkpoint was written, so there is nothing to resume; "
                f"start again (with --force if {self.out} is not empty)")

    def where(self) -> str:
        return ("no epoch was saved" if self.last_epoch is None
                else f"last.pt in {self.out} holds epoch {self.last_epoch + 1}")


def _read_config(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"--resume {out}: cannot read the run's config.json ({e})") from e


def read_resume_state(out: Path, epochs: int) -> dict:
    """The checked ``last.pt`` of a run to resume: it has a training state, belongs to the run's config.json (the same
    run id) and has not gone past ``epochs``.

    Raises:
        TrainError: no last.pt, last.pt of another run, or more epochs done than ``epochs``.
        CheckpointError: a damaged last.pt, or one without a training state.
    """
    last = out / "last.pt"
    if not last.exists():
        if (out / "best.pt").exists():
            raise TrainError(f"--resume {out}: no last.pt there, only best.pt: the run was stopped while saving its "
                             "first epoch, so there is no training state to resume (best.pt holds that epoch's "
                             "weights only); start it again with --force")
        raise TrainError(f"--resume {out}: no last.pt there (the run never finished an epoch); start it again "
                         f"with --force")
    ckpt = read_checkpoint_dict(last)
    ts = ckpt.get("train_state")
    if not isinstance(ts, dict):
        raise CheckpointError(f"{last} has no train_state (an inference-only checkpoint); cannot resume from it")
    config_id = _read_config(out).get("run_id")
    if config_id != ts.get("run_id"):
        raise TrainError(f"--resume {out}: config.json (run {config_id}) and last.pt (run {ts.get('run_id')}) "
                         "belong to different runs (an interrupted --force restart, or files copied between "
                         "runs); start it again with --force")
    done = int(ts["epoch"]) + 1
    if epochs < done:
        raise TrainError(f"--resume {out}: the run has already finished {done} epochs, so --epochs {epochs} would "
                         f"end before where it stands; give --epochs {done + 1} or more to extend it")
    return ckpt


def _clear_old_run(out: Path) -> None:
    # config.json first: a kill part-way then leaves a folder that --resume refuses (no config), never old
    # checkpoints under a new config.
    removed = []
    for name in ("config.json", "last.pt", "best.pt", "metrics.json"):
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    if removed:
        logger.info("--force: removed the old run's %s from %s", ", ".join(removed), out)


def _start_run_folder(out: Path, args: argparse.Namespace, resume_state: Optional[dict], config_json: dict) -> str:
    """Write config.json (after clearing an old run unless resuming); returns the run id shared with last.pt."""
    if resume_state is None:
        if out.exists():
            _clear_old_run(out)
        run_id = uuid.uuid4().hex
    else:
        run_id = resume_state["train_state"].get("run_id")  # None only for runs of versions before run ids
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"run_id": run_id, "args": _jsonable(vars(args)), **config_json})
    return run_id


# --------------------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------------------
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
    check_output_dir(out, what="--resume" if args.resume else "--out")
    remove_stale_temporaries(out, RUN_FILES)
    check_out_dir(out, bool(args.resume), args.force)
    device = resolve_device(args.device)
    resume_state = read_resume_state(out, args.epochs) if args.resume else None
    saved = _Saved(out)
    if resume_state is not None:
        ts = resume_state["train_state"]
        saved.last_epoch, saved.best = int(ts["epoch"]), True
        if saved.last_epoch + 1 == args.epochs:
            logger.info("%s already finished all %d epochs; nothing to do (give --epochs %d or more to extend it)",
                        out, args.epochs, args.epochs + 1)
            return _result(list(ts["history"]), float(ts["best_metric"]), int(ts["best_epoch"]), out)
    try:
        return _fit(args, out, device, resume_state, saved)
    except KeyboardInterrupt as e:
        raise TrainInterrupted(saved.interrupted()) from e
    except FloatingPointError as e:
        raise TrainError(f"{e} ({saved.where()})") from e


def _datasets(args: argparse.Namespace):
    train_ds = build_dataset(data_spec(args, "train"), "train")
    val_ds = build_dataset(data_spec(args, "test"), "test")
    if list(train_ds.class_names) != list(val_ds.class_names):
        raise TrainError(f"train and test splits have different classes: {train_ds.class_names} vs "
                         f"{val_ds.class_names}")
    return train_ds, val_ds


def _restore(ts: dict, optimizer, scheduler, scaler) -> tuple[int, float, int, list]:
    """Load a training state; returns the first epoch to run, the best metric and its epoch, and the history."""
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    if scaler is not None and ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    restore_rng_state(ts["rng"])
    return int(ts["epoch"]) + 1, float(ts["best_metric"]), int(ts["best_epoch"]), list(ts["history"])


def _result(history: list, best: float, best_epoch: int, out: Path) -> dict[str, Any]:
    return {**(history[-1] if history else {}), "best_clip_acc": best, "best_epoch": best_epoch, "out": str(out)}


def _fit(args: argparse.Namespace, out: Path, device: torch.device, resume_state: Optional[dict],
         saved: _Saved) -> dict[str, Any]:
    cuda = device.type == "cuda"
    amp, channels_last = bool(args.amp and cuda), bool(args.channels_last and cuda)
    train_ds, val_ds = _datasets(args)
    class_names, mean, std = list(train_ds.class_names), list(train_ds.mean), list(train_ds.std)
    config = model_config_from_args(args, len(class_names))
    if resume_state is not None and resume_state["config"] != config.to_dict():
        raise CheckpointError(f"{out / 'last.pt'} was trained with model config {resume_state['config']}, but the "
                              f"arguments describe {config.to_dict()}; resume without changing the model options")
    if resume_state is None:
        seed_everything(args.seed)

    model = CNNBiLSTM(config)
    if resume_state is not None:
        load_state_dict_checked(model, resume_state["state_dict"], source=str(out / "last.pt"))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args.opt, args.lr, args.weight_decay, args.momentum)
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size)
    scheduler = build_scheduler(optimizer, args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp else None

    start_epoch, best, best_epoch, history = 0, -1.0, -1, []
    if resume_state is not None:
        start_epoch, best, best_epoch, history = _restore(resume_state["train_state"], optimizer, scheduler, scaler)
        logger.info("resuming %s after epoch %d of %d (best clip acc %.4f at epoch %d)", out, start_epoch,
                    args.epochs, best, best_epoch + 1)

    run_id = _start_run_folder(out, args, resume_state, {
        "model_config": config.to_dict(), "class_names": class_names, "mean": mean, "std": std,
        "package_version": __version__, "torch_version": torch.__version__, "device": str(device),
    })
    logger.info("training %s/%s on %s: %d train clips, %d test clips, classes %s, %d epochs from %d",
                config.backbone, config.stem, device, len(train_ds), len(val_ds), class_names, args.epochs,
                start_epoch)
    progress = bool(args.progress and sys.stderr.isatty())
    save_kw = {"class_names": class_names, "mean": mean, "std": std}
    for epoch in range(start_epoch, args.epochs):
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        tr = train_one_epoch(model, _loader(train_ds, args, True, epoch, device), optimizer, device, epoch,
                             scheduler=scheduler, scaler=scaler, amp=amp, channels_last=channels_last,
                             clip_grad_norm=args.clip_grad, frame_loss_weight=args.frame_loss_weight,
                             progress=progress)
        # Evaluation draws no global random numbers (own generator), so it cannot disturb the training stream.
        val_loader = _loader(val_ds, args, False, 0, device)
        ev = evaluate(model, val_loader, device, amp=amp, channels_last=channels_last,
                      frame_loss_weight=args.frame_loss_weight)
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in tr.items()},
                  **{f"val_{k}": ev[k] for k in ("loss", "frame_loss", "clip_loss", "frame_acc", "clip_acc")}}
        if args.eval_shuffled:
            sh = evaluate(model, val_loader, device, shuffle_frames=True, seed=args.seed, amp=amp,
                          channels_last=channels_last)
            record["val_shuffled_clip_acc"] = sh["clip_acc"]
            record["val_shuffled_frame_acc"] = sh["frame_acc"]
        record["time"] = tr["time"] + ev["time"] + (sh["time"] if args.eval_shuffled else 0.0)
        history.append(record)
        improved = record["val_clip_acc"] > best
        if improved:
            best, best_epoch = record["val_clip_acc"], epoch
        train_state = {
            "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "rng": capture_rng_state(),
            "best_metric": best, "best_epoch": best_epoch, "history": history, "run_id": run_id,
        }
        # best.pt before last.pt: a kill between the two leaves last.pt at the previous epoch, so resuming redoes
        # this epoch and rewrites the same best.pt; the other order could leave best.pt stale for good.
        if improved:
            save_checkpoint(out / "best.pt", model, **save_kw)
            saved.best = True
        save_checkpoint(out / "last.pt", model, train_state=train_state, **save_kw)
        saved.last_epoch = epoch
        atomic_write_json(out / "metrics.json", history)
        logger.info(
            "epoch %d/%d  train loss %.4f frame acc %.4f clip acc %.4f | test loss %.4f frame acc %.4f clip acc "
            "%.4f%s | lr %.2e | %.1f s%s",
            epoch + 1, args.epochs, tr["loss"], tr["frame_acc"], tr["clip_acc"], record["val_loss"],
            record["val_frame_acc"], record["val_clip_acc"],
            f" | shuffled clip acc {record['val_shuffled_clip_acc']:.4f}" if args.eval_shuffled else "",
            tr["lr"], record["time"], "  *best" if improved else "",
        )
    return _result(history, best, best_epoch, out)


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if _is_json(v)}


def _is_json(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
