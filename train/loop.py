"""One epoch of training and one pass of evaluation: the loss, the per-epoch meter and the two loops
(:func:`train_one_epoch`, :func:`evaluate`, the held-out pass of a training run, summed over its ranks), used by
:func:`train.engine.fit`; ``python -m train.evaluate`` scores any model through :mod:`runtime.evaluation` and takes
:func:`shuffle_within_clips` from here."""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from runtime.model import CNNBiLSTM, length_mask

from ._checks import TrainError
from .distributed import all_reduce_sum, unwrap


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

    def all_reduce(self) -> None:
        """Sum the meter over every rank (nothing in one process), so each rank's clips count once."""
        names = ("loss", "frame_loss", "clip_loss", "clips", "frames", "clip_correct", "frame_correct")
        sums = all_reduce_sum(torch.tensor([float(getattr(self, n)) for n in names], dtype=torch.float64))
        for n, v in zip(names, sums.tolist(), strict=True):  # float64 holds the counts exactly (< 2**53)
            setattr(self, n, v if "loss" in n else int(v))
        self.confusion = all_reduce_sum(self.confusion)

    def summary(self) -> dict[str, float]:
        n = max(self.clips, 1)
        return {
            "loss": self.loss / n,
            "frame_loss": self.frame_loss / n,
            "clip_loss": self.clip_loss / n,
            "frame_acc": self.frame_correct / max(self.frames, 1),
            "clip_acc": self.clip_correct / n,
        }


def _autocast(device: torch.device, enabled: bool):
    # Mixed precision only on CUDA: CPU autocast (bfloat16) is slower than fp32 on most CPUs and changes results.
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled and device.type == "cuda")


def _optimizer_step(model: CNNBiLSTM, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], clip_grad_norm: float) -> bool:
    """Backward, clip and step; returns whether the optimizer stepped (the scheduler steps only then)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is None:
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # a lowered scale means inf/NaN gradients: the step was skipped


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
    eval_modules: Sequence[torch.nn.Module] = (),
) -> dict[str, float]:
    # Long only through its documented arguments; the loop body is short (the step is _optimizer_step).
    """Train for one pass over ``loader`` (batches ``(frames, lengths, labels)``); the scheduler steps per batch.

    Args:
        model (CNNBiLSTM | DistributedDataParallel): the network, or its wrapper in a distributed run (put in train
            mode here; the forward goes through it, so DDP averages the gradients over the ranks).
        loader (Iterable): training batches (this rank's shard in a distributed run; the metrics are summed over
            the ranks).
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
        eval_modules (Sequence[torch.nn.Module]): parts of the model kept in eval mode while the rest trains (a
            frozen backbone, BatchNorm layers whose statistics stay fixed). Defaults to ().

    Returns:
        dict[str, float]: loss, frame_loss, clip_loss, frame_acc, clip_acc, lr (at the end), time (s).

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    from tqdm import tqdm

    if not clip_grad_norm >= 0:  # a negative bound would silently mean "no clipping"
        raise TrainError(f"clip_grad_norm must be >= 0 (0: no clipping), got {clip_grad_norm}")
    model.train()
    for m in eval_modules:
        m.eval()
    start = time.perf_counter()
    meter = _Meter(unwrap(model).config.num_classes)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for frames, lengths, labels in bar:
        frames = frames.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        lengths_dev = lengths.to(device)
        with _autocast(device, amp):
            # Through model's own forward: DistributedDataParallel synchronises gradients only for what it ran.
            frame_logits, clip_logits = model(_layout(frames, channels_last), lengths_dev)
            loss, frame_loss, clip_loss = sequence_loss(frame_logits, clip_logits, lengths_dev, labels,
                                                        frame_loss_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss.detach())} at epoch {epoch}; lower --lr or check the data")
        if _optimizer_step(model, loss, optimizer, scaler, clip_grad_norm) and scheduler is not None:
            scheduler.step()
        meter.update(loss.detach(), frame_loss.detach(), clip_loss.detach(), frame_logits.detach(),
                     clip_logits.detach(), lengths_dev, labels)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    meter.all_reduce()
    out = meter.summary()
    out["lr"] = optimizer.param_groups[-1]["lr"]  # the BiLSTM's and heads' (the backbone's may be scaled)
    out["time"] = time.perf_counter() - start
    return out


def _layout(frames: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(B, T, 3, H, W)`` frames whose ``flatten(0, 1)`` (the CNN's input) is in channels_last layout, if asked."""
    if not channels_last:
        return frames
    return frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


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
        loader (Iterable): batches ``(frames, lengths, labels)``; in a distributed run this rank's shard
            (:class:`train.distributed.ShardSampler`), and the sums behind the results are reduced over the ranks.
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
            frame_logits, clip_logits = model(_layout(frames, channels_last), lengths)
            loss, frame_loss, clip_loss = sequence_loss(frame_logits, clip_logits, lengths, labels, frame_loss_weight)
        meter.update(loss, frame_loss, clip_loss, frame_logits, clip_logits, lengths, labels)
    meter.all_reduce()  # sharded evaluation: every rank's clips, each counted once
    out: dict[str, Any] = meter.summary()
    cm = meter.confusion
    totals = cm.sum(1)
    out["per_class_acc"] = [float(cm[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(totals))]
    out["confusion"] = cm.tolist()
    out["clips"] = meter.clips
    out["time"] = time.perf_counter() - start
    return out
