"""What the training arguments turn into, checked before any work: option ranges, the device, the model config,
the data of each split, the optimizer, the learning-rate schedule and the data loaders."""

from __future__ import annotations

import argparse
import math
import re

import torch
from torch.utils.data import DataLoader

from runtime.errors import RuntimeInputError
from runtime.model import NOT_PRETRAINED, ModelConfig
from runtime.video_sampling import check_sampling

from ._checks import SEED_MAX, TrainError, check_ranges
from .clips import pad_collate
from .data import DataSpec

OPTIMIZERS = ("adamw", "sgd")

# Valid ranges of the numeric training options, dest: (low, high[, low_open, high_open]); a value outside is refused
# with its range, never replaced by a default. The model options are checked by ModelConfig itself.
OPTION_RANGES: dict[str, tuple] = {
    "frames": (1, None), "train_clips": (1, None), "val_clips": (1, None), "val_fraction": (0, 1, True, True),
    "workers": (0, None), "epochs": (1, None), "batch_size": (1, None), "lr": (0, None, True),
    "momentum": (0, 1, False, True), "weight_decay": (0, None), "warmup_epochs": (0, None), "clip_grad": (0, None),
    "frame_loss_weight": (0, None), "seed": (0, SEED_MAX), "dist_timeout": (0, None, True),
    "frame_stride": (1, None), "backbone_lr_scale": (0, None, True), "freeze_backbone_epochs": (0, None),
}


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov); no weight decay on biases and norm weights.

    Args:
        model (torch.nn.Module): the network (a :class:`runtime.model.CNNBiLSTM` when ``backbone_lr_scale`` != 1).
        name (str): "adamw" or "sgd".
        lr (float): peak learning rate.
        weight_decay (float): weight decay of the weight matrices and kernels.
        momentum (float): SGD momentum (Nesterov). Defaults to 0.9.
        backbone_lr_scale (float): the backbone's (``model.cnn``) learning rate as a fraction of ``lr``; with 1.0
            there are two parameter groups (decay, no decay), otherwise four (backbone and the rest, each split so).
            Defaults to 1.0.

    Raises:
        TrainError: unknown optimizer name.
    """
    if name not in OPTIMIZERS:
        raise TrainError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    parts = [(list(model.parameters()), 1.0)]
    if backbone_lr_scale != 1.0:
        backbone = {id(p) for p in model.cnn.parameters()}
        parts = [(list(model.cnn.parameters()), backbone_lr_scale),
                 ([p for p in model.parameters() if id(p) not in backbone], 1.0)]
    groups = []
    for params, scale in parts:
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr": lr * scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": lr * scale}]
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


def data_spec(args: argparse.Namespace, split: str) -> DataSpec:
    """The :class:`DataSpec` of one split from the training arguments: frames normalised with the source's own
    mean/std, or with a pretrained backbone's (those of its ImageNet weights)."""
    norm = {}
    if args.pretrained != NOT_PRETRAINED:
        from .pretrained import normalisation

        norm["mean"], norm["std"] = normalisation(args.backbone)
    return DataSpec(
        name=args.data, data_dir=args.data_dir, frames=args.frames, frame_size=tuple(args.frame_size),
        seed=args.seed, num_clips=args.train_clips if split == "train" else args.val_clips,
        num_classes=args.synthetic_classes, download=args.download, augment=args.augment,
        val_fraction=args.val_fraction, sampling=args.sampling, frame_stride=args.frame_stride,
        cache_dir=args.cache_dir, on_bad_video=args.on_bad_video, **norm,
    )


def check_train_args(args: argparse.Namespace) -> None:
    """The numeric options' ranges, the video sampling options and the model options, before any work; ``--stem auto``
    becomes the stem it stands for (imagenet for a pretrained backbone, which keeps its own; cifar otherwise).

    Raises:
        TrainError: a number out of its range (the message gives the range), or a sampling option that would be
            ignored.
        ValueError: model options that ModelConfig refuses.
    """
    check_ranges(vars(args), OPTION_RANGES, TrainError)
    if args.stem == "auto":
        args.stem = "imagenet" if args.pretrained != NOT_PRETRAINED else "cifar"
    if args.pretrained != NOT_PRETRAINED:
        if not args.resume:  # a resumed run starts from its last.pt: the weights file is not read again
            from .pretrained import check_pretrained_option

            check_pretrained_option(args.pretrained)
        if args.stem != "imagenet":
            raise TrainError(f"--pretrained {args.pretrained} keeps the backbone's own stem: give --stem imagenet "
                             f"(or leave --stem out), not --stem {args.stem}")
    check_video_sampling(args)
    model_config_from_args(args, num_classes=2)


def check_video_sampling(args: argparse.Namespace) -> None:
    """``--sampling`` and ``--frame-stride`` pick a video's frames: a stride that the sampling would ignore, or either
    option with a source other than video files, is refused (never silently ignored).

    Raises:
        TrainError: naming the option and what it needs.
    """
    if args.data != "video":
        if (args.sampling, args.frame_stride) != ("uniform", 1):
            raise TrainError(f"--sampling and --frame-stride pick the frames of video files; --data {args.data} "
                             "does not use them (leave them out, or use --data video)")
        return
    try:
        check_sampling(args.sampling, args.frame_stride)
    except RuntimeInputError as e:
        raise TrainError(str(e)) from e


def model_config_from_args(args: argparse.Namespace, num_classes: int,
                           pretrained: str = NOT_PRETRAINED) -> ModelConfig:
    """The :class:`ModelConfig` the arguments describe (``pretrained``: the label of the backbone's weights)."""
    return ModelConfig(num_classes=num_classes, backbone=args.backbone, stem=args.stem,
                       frame_size=tuple(args.frame_size), hidden_size=args.hidden_size,
                       num_layers=args.num_layers, dropout=args.dropout, pretrained=pretrained)


def make_loader(ds, args, shuffle: bool, epoch: int, device: torch.device, sampler=None, rank: int = 0) -> DataLoader:
    # A generator seeded from (seed, epoch) fixes the order and the workers' seeds of each epoch on its own, so a
    # resumed run draws the same batches as one that never stopped. With a sampler (a distributed rank's shard) the
    # sampler fixes the order, and the rank enters the workers' seeds so that ranks augment differently.
    gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch + 7_919 * rank)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=gen, num_workers=args.workers, collate_fn=pad_collate,
                      pin_memory=device.type == "cuda", drop_last=False)
