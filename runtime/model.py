"""The CNN + BiLSTM frame-sequence classifier: one obvious place for the network and its config.

It lives in ``runtime`` (not ``train``) because the runtime's PyTorch backend must rebuild the network from a
checkpoint and ``runtime`` never imports ``train``; training imports it from here.

Shapes:
    frames   (B, T, 3, H, W) float, already normalised (see :mod:`runtime.preprocess`)
    lengths  (B,) integer, 1 <= lengths[b] <= T, optional (None means every clip is T frames long)
    features (B, T, F) float, F = the backbone's width, measured from the network (:func:`backbone_width`: 512 for
             resnet18/34, 2048 for resnet50, 576 for mobilenet_v3_small, 960 for mobilenet_v3_large, 1280 for
             efficientnet_b0)
    outputs  frame_logits (B, T, C) and clip_logits (B, C)

Padded batches are exact: with ``lengths`` the BiLSTM is run on packed sequences, so the reverse direction of a short
clip starts at its last real frame, never on padding, and the clip logits pool only real frames. Frame logits at
padded positions are those of a zero BiLSTM output (the head's bias) and carry no meaning.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

# torchvision classification networks, their classifier removed: (N, 3, H, W) -> (N, F).
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
STEMS = ("cifar", "imagenet")
CLASSIFIERS = ("fc", "classifier")  # the classifier's attribute in torchvision's ResNets / MobileNetV3, EfficientNet
NOT_PRETRAINED = "none"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`CNNBiLSTM`; stored in every checkpoint and artifact.

    Attributes:
        num_classes (int): number of classes C. Defaults to 10.
        backbone (str): torchvision network, one of ``BACKBONES``. Defaults to "resnet34".
        stem (str): "imagenet" (the network's own stem: 4x downsampling in a ResNet, 2x in MobileNetV3 and
            EfficientNet) or "cifar" (keeps detail in small frames: a ResNet gets a 3x3 stride-1 conv and no max-pool,
            the others their first conv at stride 1). Defaults to "cifar".
        frame_size (tuple[int, int]): frame height and width the model is built and exported for. Defaults to (32, 32).
        hidden_size (int): LSTM hidden size per direction. Defaults to 256.
        num_layers (int): stacked bidirectional LSTM layers. Defaults to 2.
        dropout (float): dropout between LSTM layers and before the heads (training only). Defaults to 0.0.
        pretrained (str): where the backbone's starting weights came from: "none" (random init), "imagenet:" and
            torchvision's weights name (e.g. "imagenet:ResNet18_Weights.IMAGENET1K_V1"), or "file:" and a state dict
            file's name and sha256 prefix. A pretrained backbone keeps its own stem ("imagenet"). Checkpoints written
            before this field read "none". Defaults to "none".
    """

    num_classes: int = 10
    backbone: str = "resnet34"
    stem: str = "cifar"
    frame_size: tuple[int, int] = (32, 32)
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    pretrained: str = NOT_PRETRAINED

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid choices: {', '.join(BACKBONES)}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; valid choices: {', '.join(STEMS)}")
        size = tuple(int(s) for s in self.frame_size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"frame_size must be (height, width) with both >= 8, got {self.frame_size!r}")
        object.__setattr__(self, "frame_size", size)
        for name in ("num_classes", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes: num_classes must be >= 2, got "
                             f"{self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ValueError(f"pretrained must be a non-empty string ('none' when not pretrained), got "
                             f"{self.pretrained!r}")
        if self.pretrained != NOT_PRETRAINED and self.stem != "imagenet":
            raise ValueError(f"a pretrained backbone keeps its own stem: stem must be 'imagenet' with pretrained "
                             f"weights ({self.pretrained}), got {self.stem!r}")

    @property
    def feature_dim(self) -> int:
        """Width F of the per-frame feature the CNN emits (measured from the network, see :func:`backbone_width`)."""
        return backbone_width(self.backbone)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        d = dict(d)
        if "frame_size" in d:
            d["frame_size"] = tuple(d["frame_size"])
        return cls(**d)


def classifier_name(net: nn.Module) -> str:
    """The attribute of a torchvision classification network's classifier ("fc" or "classifier").

    Raises:
        ValueError: the network has neither.
    """
    for name in CLASSIFIERS:
        if isinstance(getattr(net, name, None), nn.Module):
            return name
    raise ValueError(f"{type(net).__name__} has no classifier named {' or '.join(CLASSIFIERS)}")


def build_backbone(config: ModelConfig) -> nn.Module:
    """A torchvision network (random init, nothing downloaded) with its classifier removed: (N,3,H,W) -> (N,F).

    The torchvision parameter names stay as they are (a torchvision state dict, less its classifier, loads into it).
    """
    import torchvision

    net = torchvision.models.get_model(config.backbone, weights=None)
    if config.stem == "cifar":
        if isinstance(net, torchvision.models.ResNet):
            # Small frames (32x32) would be 1x1 after the ImageNet stem's 4x downsampling; keep full resolution.
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:  # MobileNetV3, EfficientNet: one 3x3 stride-2 conv; stride 1 keeps twice the resolution
            next(m for m in net.modules() if isinstance(m, nn.Conv2d)).stride = (1, 1)
    if config.pretrained == NOT_PRETRAINED:
        # torchvision's MobileNetV3 keeps BatchNorm statistics with momentum 0.01, tuned for its 600-epoch ImageNet
        # recipe: from scratch, after a few hundred steps they are still near their initial values and held-out
        # accuracy sits at chance (CIFAR-10, 32 steps: 0.10 with eval-mode statistics, 0.31 with batch statistics).
        # A network trained from scratch uses PyTorch's default, as the ResNets and EfficientNet already do.
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
    setattr(net, classifier_name(net), nn.Identity())
    return net


@functools.lru_cache(maxsize=None)
def backbone_width(backbone: str) -> int:
    """Width F of ``backbone``'s per-frame feature: the channels its network (classifier removed) returns for one
    frame, from a forward pass on the meta device (shapes only: no memory, no compute, no random numbers drawn).

    Raises:
        ValueError: ``backbone`` is not one of ``BACKBONES``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid choices: {', '.join(BACKBONES)}")
    with torch.device("meta"):
        net = build_backbone(ModelConfig(backbone=backbone, stem="imagenet")).eval()
        out = net(torch.empty(1, 3, 64, 64))
    return int(out.shape[-1])


def length_mask(lengths: torch.Tensor, time_steps: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real frames. Written with arange so it exports with a dynamic T."""
    steps = torch.arange(time_steps, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


class CNNBiLSTM(nn.Module):
    """ResNet per-frame features -> bidirectional LSTM over time -> per-frame and per-clip linear heads."""

    def __init__(self, config: Optional[ModelConfig] = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.cnn = build_backbone(c)
        self.lstm = nn.LSTM(
            c.feature_dim,
            c.hidden_size,
            num_layers=c.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.head_dropout = nn.Dropout(c.dropout)
        self.frame_head = nn.Linear(2 * c.hidden_size, c.num_classes)
        self.clip_head = nn.Linear(2 * c.hidden_size, c.num_classes)

    # --- stage 1 -------------------------------------------------------------------------------------------------
    def extract_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T, F). Frames are independent: this is the part that batches over B*T."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must have shape (B, T, 3, H, W), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        features = self.cnn(frames.flatten(0, 1))
        return features.view(b, t, -1)

    # --- stage 2 -------------------------------------------------------------------------------------------------
    def run_bilstm(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, F) -> (B, T, 2H). With ``lengths``, runs packed sequences so padding never enters either direction."""
        if lengths is None:
            return self.lstm(features)[0]
        t = features.shape[1]
        packed = nn.utils.rnn.pack_padded_sequence(
            features, lengths.detach().to("cpu", torch.int64), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=t)[0]

    def heads(self, lstm_out: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """BiLSTM output (B, T, 2H) -> (frame_logits (B, T, C), clip_logits (B, C)); the clip pools real frames only."""
        lstm_out = self.head_dropout(lstm_out)
        if lengths is None:
            pooled = lstm_out.mean(dim=1)
        else:
            mask = length_mask(lengths, lstm_out.shape[1]).unsqueeze(-1)
            # Padded steps become exactly zero whatever an LSTM implementation left there (a select, not a product:
            # NaN or Inf in padding must not leak into the pooled clip logits).
            lstm_out = lstm_out.masked_fill(~mask, 0.0)
            pooled = lstm_out.sum(dim=1) / lengths.to(lstm_out.dtype).unsqueeze(1)
        return self.frame_head(lstm_out), self.clip_head(pooled)

    def classify(
        self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features [+ (B,) lengths] -> (frame_logits (B, T, C), clip_logits (B, C))."""
        if features.dim() != 3:
            raise ValueError(f"features must have shape (B, T, F), got {tuple(features.shape)}")
        if lengths is not None:
            check_lengths(lengths, features.shape[0], features.shape[1])
        return self.heads(self.run_bilstm(features, lengths), lengths)

    def forward(
        self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 3, H, W) frames [+ (B,) lengths] -> (frame_logits (B, T, C), clip_logits (B, C))."""
        return self.classify(self.extract_features(frames), lengths)


def check_lengths(lengths: torch.Tensor, batch: int, time_steps: int) -> None:
    """Raise ValueError unless ``lengths`` is (B,) integers in [1, T]."""
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},) to match the batch, got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return  # values are symbolic while exporting
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > time_steps):
        raise ValueError(
            f"lengths must lie in [1, T={time_steps}], got min {int(lengths.min())} and max {int(lengths.max())}"
        )


def build_model(config: Optional[ModelConfig] = None) -> CNNBiLSTM:
    """Build a randomly initialised :class:`CNNBiLSTM` (Defaults to ``ModelConfig()``: ResNet-34, cifar stem)."""
    return CNNBiLSTM(config or ModelConfig())


def build_random_model(config: ModelConfig, seed: int = 0) -> CNNBiLSTM:
    """A seeded random eval-mode model with non-trivial BatchNorm statistics (so folding is exercised), for tests and
    benchmarks. The global torch RNG state is restored afterwards.

    Args:
        config (ModelConfig): architecture.
        seed (int): torch seed for the weights. Defaults to 0.

    Returns:
        CNNBiLSTM: the model on CPU, eval mode.
    """
    gen_state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(config)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
    finally:
        torch.set_rng_state(gen_state)
    return model.eval()
