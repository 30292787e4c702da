"""What is timed: the workloads, the models they run (the reference and the smoke model), a random checkpoint, the
requests a load run sends (clip lengths drawn from a distribution), and the generated test videos the video
benchmarks decode (:func:`write_test_video`).

Nothing here imports torch at module level, so ``benchmarks.report`` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

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


def moving_scene(num_frames: int, height: int, width: int, *, fps: float = 25, seed: int = 0) -> Iterator:
    """The frames of the benchmarks' test video, one by one: drifting colour gradients (one cycle every 4 s at
    ``fps``), two moving discs and mild noise, so that an encoder has real motion and texture to code (a still or
    flat video decodes unrealistically fast). Seeded: the same arguments give the same frames.

    Args:
        num_frames (int): how many frames.
        height (int): frame height.
        width (int): frame width.
        fps (float): the frame rate the motion is timed for. Defaults to 25.
        seed (int): noise seed. Defaults to 0.

    Yields:
        np.ndarray: uint8 RGB frames ``(height, width, 3)``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(num_frames):
        a = 2 * np.pi * t / (fps * 4)
        img = np.empty((height, width, 3), np.float32)
        img[..., 0] = 128 + 80 * np.sin(xx / 37 + a)
        img[..., 1] = 128 + 80 * np.cos(yy / 29 - a)
        img[..., 2] = 128 + 60 * np.sin((xx + yy) / 53 + 2 * a)
        for k, (r, speed) in enumerate(((height / 6, 1.0), (height / 9, -1.7))):
            cy = height / 2 + height / 3 * np.sin(speed * a + k)
            cx = width / 2 + width / 3 * np.cos(speed * a)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (240, 40 + 150 * k, 60)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8)


def write_test_video(path: str | os.PathLike, num_frames: int, size: Sequence[int], *, fps: int = 25,
                     keyframe_interval: Optional[int] = None) -> Path:
    """Write the benchmarks' test video (:func:`moving_scene`) as H.264 with libx264's defaults (preset medium,
    CRF 23), atomically; frames are generated one by one, so a long video takes no memory.

    Args:
        path (str | PathLike): the file; its suffix picks the container (``.mp4``).
        num_frames (int): how many frames.
        size (Sequence[int]): frame height and width.
        fps (int): frame rate. Defaults to 25.
        keyframe_interval (int, optional): frames between keyframes (libx264 ``g``; a phone or a stream writes one
            every second). Defaults to None (libx264's own: 250).

    Returns:
        Path: ``path``.
    """
    from runtime.video_write import write_video

    height, width = size
    options = {"crf": "23", "preset": "medium", **({"g": str(keyframe_interval)} if keyframe_interval else {})}
    return write_video(path, moving_scene(num_frames, height, width, fps=fps), fps, options=options)
