"""What is timed: the workloads, the models they run (the reference and the smoke model), a random checkpoint, and
the requests a load run sends (clip lengths drawn from a distribution).

Nothing here imports torch at module level, so ``benchmarks.report`` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

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


def parse_lengths(text: str) -> tuple:
    """Clip lengths T to draw from: ``"1-16"`` (every T from 1 to 16), ``"8"`` or ``"4,8,16"``.

    Raises:
        ValueError: anything else, or a T below 1; the message gives the valid forms.
    """
    forms = "valid forms: LOW-HIGH (uniform over LOW..HIGH, e.g. 1-16), T (e.g. 8) or T,T,... (e.g. 4,8,16)"
    try:
        low, _, high = str(text).strip().partition("-")
        choices = tuple(range(int(low), int(high) + 1)) if high else tuple(int(v) for v in low.split(","))
    except ValueError:
        raise ValueError(f"--lengths {text!r} is not a length distribution; {forms}") from None
    if not choices or min(choices) < 1:
        raise ValueError(f"--lengths {text!r} must give lengths >= 1 (and LOW <= HIGH); {forms}")
    return choices


def make_requests(lengths: Sequence[int], frame_size, *, batch: int = 1, pool: int = 64, seed: int = 0) -> list:
    """``pool`` random requests ``(frames (batch, T, 3, H, W) float32, lengths (batch,) int32)``, each clip's T drawn
    from ``lengths`` and T the longest of the batch: random normal frames (never zeros), seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pool):
        ts = rng.choice(np.asarray(lengths), size=batch).astype(np.int32)
        out.append((rng.standard_normal((batch, int(ts.max()), 3, *frame_size), dtype=np.float32), ts))
    return out
