"""The checkpoint format: weights + config + class names + normalisation + package version, one file.

Loaded with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings, lists and dicts only, so
loading one never runs code. Training adds an optional ``train_state`` (optimizer, scheduler, epoch, RNG) that
inference ignores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ._io import atomic_torch_save
from ._version import __version__
from .errors import RuntimeInputError
from .spec import check_class_names

logger = logging.getLogger(__name__)

FORMAT = "cnn-bilstm-deploy/checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "class_names", "mean", "std", "state_dict")


class CheckpointError(ValueError):
    """A file is not a usable checkpoint of this package (damaged, foreign, or inconsistent with its config)."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, with the model already built and loaded (in eval mode)."""

    model: Any  # runtime.model.CNNBiLSTM
    config: Any  # runtime.model.ModelConfig
    class_names: list[str]
    mean: list[float]
    std: list[float]
    package_version: str
    path: Optional[Path] = None
    train_state: Optional[dict] = None


def make_checkpoint_dict(
    model, *, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float], train_state: Optional[dict] = None
) -> dict:
    """The plain dict that :func:`save_checkpoint` writes (exposed for tests and tools)."""
    if len(class_names) != model.config.num_classes:
        raise ValueError(
            f"{len(class_names)} class names given for a model with num_classes={model.config.num_classes}"
        )
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    d = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": model.config.to_dict(),
        "class_names": [str(c) for c in class_names],
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "state_dict": state,
    }
    if train_state is not None:
        d["train_state"] = train_state
    return d


def save_checkpoint(path: str | os.PathLike, model, **kwargs) -> Path:
    """Write a checkpoint atomically (see :func:`make_checkpoint_dict` for the keyword arguments)."""
    return atomic_torch_save(make_checkpoint_dict(model, **kwargs), path)


def read_checkpoint_dict(path: str | os.PathLike) -> dict:
    """Load and validate the raw checkpoint dict (weights_only), raising :class:`CheckpointError` when unusable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_zip_crcs(path)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean the same to the user
        text = str(e)
        if "Weights only load failed" in text:  # not torch's advice (weights_only=False): that runs foreign code
            reason = " ".join(text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0].split())
            raise CheckpointError(
                f"{path} is not a readable checkpoint (damaged, truncated, not a torch file, or a pickle of Python "
                f"objects, which this package never unpickles): the weights-only loader stopped at: {reason[:200]}"
            ) from e
        raise CheckpointError(
            f"{path} is not a readable checkpoint (damaged, truncated or not a torch file): {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}"
        ) from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a {FORMAT} checkpoint (no 'format': {FORMAT!r} key)")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise CheckpointError(f"{path} lacks required checkpoint keys {missing}")
    try:
        version = int(d["format_version"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid format_version {d['format_version']!r} (an integer)") from e
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {d['format_version']}, newer than this package reads "
            f"({FORMAT_VERSION}); upgrade cnn-bilstm-deploy (it was written by version {d.get('package_version')})"
        )
    return d


def _check_zip_crcs(path: Path) -> None:
    """Refuse, in one line, a file that is not the zip archive ``torch.save`` writes (text, JSON, an empty, truncated
    or foreign file), before torch.load turns it into "KeyError: 101"; a legacy (non-zip) pickle goes on to the
    weights-only loader, which reads old torch files and refuses Python objects. Then check the members' CRC-32s:
    damage inside the weights (a bit flip, a partial overwrite) still unpickles (about 0.1 s per 100 MB)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist()):
                raise CheckpointError(f"{path} is not a readable checkpoint: a zip archive without the data.pkl of "
                                      f"a torch file; {_WHAT_IS_VALID}")
            bad = z.testzip()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError) as e:
        what = _describe_non_zip(path)
        if what is None:
            return  # a legacy pickle: torch.load(weights_only=True) says what it is
        raise CheckpointError(f"{path} is not a readable checkpoint: {what}; {_WHAT_IS_VALID}") from e
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {e.strerror or e}") from e
    except Exception as e:  # a damaged member header, a bad compression stream
        raise CheckpointError(f"{path} is damaged: its zip archive does not read back ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: the archive member {bad!r} fails its CRC-32 check (a changed byte, "
                              "a partial overwrite); use another copy of the checkpoint")


_WHAT_IS_VALID = "a checkpoint is the zip archive torch.save writes (python -m train writes best.pt and last.pt)"


def _describe_non_zip(path: Path) -> Optional[str]:
    """What a file that is not a zip archive looks like, from its first bytes (None for a pickle)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        return "a truncated or damaged zip archive"
    if head[:1] == b"\x80":
        return None
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text, not a zip archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3 or len(head) < 512:  # not merely a character cut at the end of the sample
            return "binary data of another format, not a zip archive"
    return "a text file, not a zip archive"


def _check_finite_weights(state_dict: dict, source: str) -> None:
    """Refuse NaN/Inf weights (a diverged run): such a model answers NaN, or a plausible label, for every input."""
    import torch

    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} holds NaN/Inf weights ({len(bad)} tensors, the first {bad[0]}): the training "
                              "run diverged; use a checkpoint of an earlier epoch")


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes and load its weights.

    Args:
        path (str | PathLike): checkpoint file written by :func:`save_checkpoint` or by training.
        map_location (str): device for the model. Defaults to "cpu".

    Returns:
        Checkpoint: the model in eval mode plus its metadata.

    Raises:
        CheckpointError: damaged file, foreign file, or weights that do not fit the stored config.
    """
    from .model import CNNBiLSTM, ModelConfig

    d = read_checkpoint_dict(path)
    try:
        class_names = check_class_names(d["class_names"], str(path))  # names them, which the config cannot
    except RuntimeInputError as e:
        raise CheckpointError(str(e)) from e
    try:
        config = ModelConfig.from_dict(d["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {e}") from e
    model = CNNBiLSTM(config)
    load_state_dict_checked(model, d["state_dict"], source=str(path))
    _check_finite_weights(d["state_dict"], str(path))
    model.to(map_location).eval()
    return Checkpoint(
        model=model,
        config=config,
        class_names=class_names,
        mean=list(d["mean"]),
        std=list(d["std"]),
        package_version=str(d.get("package_version", "unknown")),
        path=Path(path),
        train_state=d.get("train_state"),
    )


def load_state_dict_checked(model, state_dict: dict, source: str = "checkpoint") -> None:
    """Load weights, turning PyTorch's wall of size-mismatch lines into one sentence about the config."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k, got, want = mismatched[0]
            parts.append(f"{len(mismatched)} tensors of another shape (first: {k} is {got}, the config needs {want})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
        raise CheckpointError(
            f"the weights in {source} do not belong to a model of config {model.config.to_dict()}: "
            + "; ".join(parts)
            + ". Was it written for another backbone, hidden size, layer count or class count?"
        )
    model.load_state_dict(state_dict)
