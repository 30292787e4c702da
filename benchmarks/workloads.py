"""What is timed: the workloads, the models they run (the reference and the smoke model) and a random checkpoint.

Nothing here imports torch at module level, so ``benchmarks.report`` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKLOADS = ("model", "cnn", "bilstm", "stream")
STREAM_WINDOW = 16


def check_workload(workload: str) -> None:
    """Raises ValueError for a name outside :data:`WORKLOADS`."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; valid: {', '.join(WORKLOADS)}")


def reference_config():
    """The reference model of the recorded results (docs/results.md): ResNet-34 cifar stem, 32x32, BiLSTM 2x256, 10 classes."""
    from runtime.model import ModelConfig

    return ModelConfig(num_classes=10, backbone="resnet34", stem="cifar", frame_size=(32, 32), hidden_size=256,
                       num_layers=2, dropout=0.0)


def smoke_config():
    """A tiny model of the same family, for CI smoke runs (milliseconds per call on 2 CPU cores)."""
    from runtime.model import ModelConfig

    return ModelConfig(num_classes=3, backbone="resnet18", stem="cifar", frame_size=(16, 16), hidden_size=32,
                       num_layers=2, dropout=0.0)


def write_random_checkpoint(path: str | os.PathLike, config, seed: int = 0) -> Path:
    """Write a checkpoint of :func:`runtime.model.build_random_model` (class names ``class0..``, CIFAR mean/std).

    Args:
        path (str | PathLike): destination ``.pt`` file (written atomically).
        config (ModelConfig): architecture.
        seed (int): weight seed. Defaults to 0.

    Returns:
        Path: the checkpoint path.
    """
    from runtime.checkpoint import save_checkpoint
    from runtime.model import build_random_model

    model = build_random_model(config, seed)
    return save_checkpoint(path, model, class_names=[f"class{i}" for i in range(config.num_classes)],
                           mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616])
