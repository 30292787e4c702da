"""The backbone's starting weights (``python -m train --pretrained imagenet|PATH|none``) and its fine-tuning
(a backbone frozen for the first epochs, BatchNorm statistics fixed).

``imagenet``: torchvision's published weights for the backbone (``torchvision.models.get_model_weights(name).DEFAULT``),
fetched with ``torch.hub`` into its cache, ``TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch``), the first
time, and read from there afterwards. ``PATH``: a torchvision state dict file for the backbone (``model.state_dict()``
of ``torchvision.models.<backbone>()``, or a torchvision reference checkpoint with it under ``"model"``).

Either way the tensors are checked against torchvision's own network for the backbone (names and shapes, the first
mismatch named in one line), the classifier's tensors are dropped, and the rest is loaded into the model's CNN
exactly. A pretrained backbone keeps its own stem and is fed frames normalised as its weights were trained (the
ImageNet mean and std of the weights' transforms); the checkpoint records both, so every runtime follows.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlparse

import torch

from runtime._io import sha256_file
from runtime.model import NOT_PRETRAINED, ModelConfig, build_backbone, classifier_name

from ._checks import TrainError

if TYPE_CHECKING:
    import argparse

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a network that drops packets fails instead of hanging
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torchvision's file names carry a sha256 prefix (torch.hub's rule)


class PretrainedError(TrainError):
    """The starting weights cannot be had or do not fit the backbone; the message says what to do."""


@dataclass(frozen=True)
class BackboneWeights:
    """Starting weights for a backbone.

    Attributes:
        label (str): what :attr:`runtime.model.ModelConfig.pretrained` records ("imagenet:ResNet18_Weights...",
            "file:NAME sha256:PREFIX").
        state_dict (dict): the backbone's tensors (classifier dropped), torchvision names.
    """

    label: str
    state_dict: dict


def imagenet_weights(backbone: str):
    """torchvision's default ImageNet weights enum member for ``backbone`` (nothing downloaded)."""
    import torchvision

    return torchvision.models.get_model_weights(backbone).DEFAULT


def normalisation(backbone: str) -> tuple[tuple, tuple]:
    """(mean, std) the backbone's ImageNet weights were trained with, from their torchvision transforms."""
    preset = imagenet_weights(backbone).transforms()
    return tuple(float(x) for x in preset.mean), tuple(float(x) for x in preset.std)


def check_pretrained_option(value: str) -> None:
    """``--pretrained`` is none, imagenet or an existing file.

    Raises:
        PretrainedError: anything else.
    """
    if value in (NOT_PRETRAINED, IMAGENET) or Path(value).is_file():
        return
    raise PretrainedError(f"--pretrained {value}: not 'none', 'imagenet' or a file (a torchvision state dict for the "
                          "backbone); no such file")


def load_pretrained(value: str, backbone: str, progress: bool = False) -> Optional[BackboneWeights]:
    """The starting weights ``--pretrained`` names for ``backbone`` (None for "none"), checked.

    Args:
        value (str): "none", "imagenet" or a file path.
        backbone (str): one of :data:`runtime.model.BACKBONES`.
        progress (bool): show torch.hub's download progress bar. Defaults to False.

    Returns:
        BackboneWeights | None: the backbone's tensors and their label.

    Raises:
        PretrainedError: no network and no cached file (the message names the file and the folder to put it in),
            an unreadable file, or tensors that are not torchvision's ``backbone`` (the first mismatch named).
    """
    if value == NOT_PRETRAINED:
        return None
    if value == IMAGENET:
        weights = imagenet_weights(backbone)
        path, label = fetch_imagenet(weights, progress), f"{IMAGENET}:{weights}"
    else:
        path = Path(value)
        label = f"file:{path.name} sha256:{sha256_file(path)[:16]}"
    state = read_state_dict(path, value)
    return BackboneWeights(label, backbone_tensors(state, backbone, f"--pretrained {value}"))


def imagenet_file(weights) -> Path:
    """Where torch.hub keeps ``weights``'s file: ``TORCH_HOME/hub/checkpoints/<the URL's file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def fetch_imagenet(weights, progress: bool = False) -> Path:
    """The cached file of ``weights``, downloaded first when missing (written whole, its sha256 prefix checked).

    Raises:
        PretrainedError: the download failed; the message names the file, its URL and the folder to put it in.
    """
    path = imagenet_file(weights)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_IN_NAME.search(path.name)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=match[1] if match else None,
                                       progress=progress)
    except (OSError, RuntimeError) as e:  # no network, a proxy refusing, a timeout; RuntimeError: a wrong hash
        reason = " ".join(str(getattr(e, "reason", e)).split())[:160]
        raise PretrainedError(
            f"cannot download the ImageNet weights {weights} ({reason}): put the file {path.name} (from "
            f"{weights.url}) into {path.parent} (TORCH_HOME/hub/checkpoints) and run again, or train from scratch "
            "with --pretrained none") from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    logger.info("downloaded %s (%.1f MB) from %s to %s", weights, path.stat().st_size / 1e6, weights.url, path)
    return path


def read_state_dict(path: Path, what: str) -> dict:
    """The tensors of a state dict file (plain, or a torchvision reference checkpoint's ``"model"``), read with
    ``weights_only=True``.

    Raises:
        PretrainedError: not a readable torch file, or no state dict in it.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean the same here
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise PretrainedError(f"--pretrained {what}: {path} is not a readable torch state dict file "
                              f"({type(e).__name__}: {first})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise PretrainedError(f"--pretrained {what}: {path} holds no state dict (a dict of tensor names to tensors, "
                              "as torchvision's model.state_dict() gives)")
    return obj


def backbone_tensors(state: dict, backbone: str, what: str) -> dict:
    """``state``'s tensors less the classifier's, once every name and shape matches torchvision's ``backbone``.

    Files of torchvision's older weights lack BatchNorm's ``num_batches_tracked`` counters; loading fills them (as
    ``load_state_dict`` does for any BatchNorm state of that era), so they may be missing.

    Raises:
        PretrainedError: a missing tensor, an unexpected one or a shape that differs; the first one is named.
    """
    import torchvision

    with torch.device("meta"):  # names and shapes only
        net = torchvision.models.get_model(backbone, weights=None)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    problems = []  # in the network's order, then the file's extra tensors
    for k, shape in want.items():
        if k not in state and not k.endswith("num_batches_tracked"):
            problems.append(f"{k} is missing")
        elif k in state and tuple(state[k].shape) != shape:
            problems.append(f"{k} has shape {tuple(state[k].shape)}, {backbone} needs {shape}")
    problems += [f"{k} is not a {backbone} tensor" for k in state if k not in want]
    if problems:
        raise PretrainedError(f"{what} is not a torchvision {backbone} state dict: {problems[0]} ({len(problems)} "
                              f"mismatches in all); give the weights of {backbone}, or the --backbone they belong to")
    head = classifier_name(net) + "."
    return {k: v for k, v in state.items() if not k.startswith(head)}


def apply_weights(model, weights: BackboneWeights) -> None:
    """Load ``weights`` into ``model.cnn`` (strict: every backbone tensor is set)."""
    model.cnn.load_state_dict(weights.state_dict, strict=True)


def smallest_map(backbone: str, frame_size: tuple) -> tuple:
    """(H, W) of the backbone's last feature map (before its global pooling) for frames of ``frame_size``, with its
    own stem: what is left of small frames at the end of the network."""
    seen = []
    with torch.device("meta"):
        net = build_backbone(ModelConfig(backbone=backbone, stem=IMAGENET)).eval()
        net.avgpool.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
        net(torch.empty(1, 3, *frame_size))
    return seen[0]


# --- in a training run ------------------------------------------------------------------------------------------


def set_backbone_frozen(model, frozen: bool) -> bool:
    """A frozen backbone computes no gradients, so the optimizer leaves its weights (and their moments) as they
    are; the training loop also keeps it in eval mode (BatchNorm statistics fixed)."""
    for p in model.cnn.parameters():
        p.requires_grad_(not frozen)
    return frozen


def eval_modules(model, args: argparse.Namespace, frozen: bool) -> list:
    """The modules that stay in eval mode while the rest trains: a frozen backbone, or its BatchNorm layers with
    ``--freeze-bn``."""
    if frozen:
        return [model.cnn]
    if args.freeze_bn:
        return [m for m in model.cnn.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return []
