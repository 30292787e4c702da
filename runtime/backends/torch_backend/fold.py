"""The fast path's CNN forms, each exact in eval mode: BatchNorm folded into the convs, or folded with every conv + bias
(+ residual) + ReLU one cuDNN call, or BatchNorm kept as its own op."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

CNN_FORMS = ("folded", "fused", "unfolded")


def fold_conv_bn(module):
    """Fold every eval-mode BatchNorm2d into the Conv2d before it (torchvision ResNet naming); returns a new module.

    Handles ``convN``/``bnN`` attribute pairs (stem, BasicBlock, Bottleneck) and ``Sequential(Conv2d, BatchNorm2d)``
    (downsample branches). The caller's module is never modified: this works on a deep copy.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = copy.deepcopy(module).eval()
    for m in list(module.modules()):
        for suffix in ("", "1", "2", "3"):
            conv, bn = getattr(m, f"conv{suffix}", None), getattr(m, f"bn{suffix}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(m, f"conv{suffix}", fuse_conv_bn_eval(conv, bn))
                setattr(m, f"bn{suffix}", nn.Identity())
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i] = fuse_conv_bn_eval(m[i], m[i + 1])
                    m[i + 1] = nn.Identity()
    return module


class ConvReLU(nn.Module):
    """``relu(conv(x) + bias [+ residual])``: one cuDNN call on CUDA where that is safe, the same ops in sequence
    elsewhere.

    Built from a Conv2d with BatchNorm already folded into it. The residual, when given, has the output's shape.
    On CUDA, with input and output channels multiples of 8 (cuDNN's fused fp16 NHWC kernels want aligned channels; the
    RGB stem runs unfused, so that it cannot cost the whole fused form under "auto"):

    * with a residual: ``torch.cudnn_convolution_add_relu(x, w, residual, 1, bias)``;
    * without one, when the conv keeps the shape (stride 1, as many output as input channels, "same" padding):
      the same call with ``z = x`` and ``alpha = 0``. Not ``torch.cudnn_convolution_relu``: that passes its own
      uninitialised output as ``z`` (times 0), and NaN or Inf left in reused memory by an earlier call (NaN
      padding, say) would become NaN in real outputs if cuDNN reads it. ``x`` is this frame's own input: wherever
      it is not finite, the conv's output is not finite either, so ``0 * x`` changes nothing;
    * other convs (stride 2, a change of width): conv, then bias + ReLU as PyTorch does them.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"ConvReLU needs zero padding given as numbers, got {conv.padding!r} "
                             f"({conv.padding_mode})")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.fused = conv.in_channels % 8 == 0 and conv.out_channels % 8 == 0
        self.keeps_shape = (conv.in_channels == conv.out_channels and all(s == 1 for s in conv.stride) and all(
            2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True)))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if x.is_cuda and self.fused:
            if residual is not None:
                return torch.cudnn_convolution_add_relu(x, self.weight, residual, 1.0, self.bias, *args)
            if self.keeps_shape:
                return torch.cudnn_convolution_add_relu(x, self.weight, x, 0.0, self.bias, *args)
        y = nn.functional.conv2d(x, self.weight, self.bias, *args)
        return torch.relu(y if residual is None else y + residual)


class _FusedBlock(nn.Module):
    """A torchvision BasicBlock or Bottleneck (BatchNorm folded) whose convs end in their ReLU (and residual add)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        convs = [getattr(block, f"conv{i}") for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
        self.convs = nn.ModuleList(ConvReLU(c) for c in convs)
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=identity)


class FusedResNet(nn.Module):
    """A folded torchvision ResNet (classifier removed) with conv + bias (+ residual) + ReLU fused per conv."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck

        if not isinstance(getattr(net, "bn1", None), nn.Identity):
            raise ValueError("FusedResNet needs a ResNet with BatchNorm folded (fold_conv_bn first)")
        self.stem = ConvReLU(net.conv1)
        self.maxpool = net.maxpool
        layers = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(net, name):
                if not isinstance(block, (BasicBlock, Bottleneck)) or not isinstance(block.bn1, nn.Identity):
                    raise ValueError(f"FusedResNet needs folded BasicBlock/Bottleneck blocks, got {type(block)}")
                layers.append(_FusedBlock(block))
        self.blocks = nn.Sequential(*layers)
        self.avgpool = net.avgpool
        self.fc = net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.maxpool(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_cnn_form(cnn: nn.Module, form: str) -> nn.Module:
    """A new eval-mode CNN in one of :data:`CNN_FORMS` ("folded", "fused", "unfolded"); ``cnn`` is left as it is."""
    if form == "unfolded":
        return copy.deepcopy(cnn).eval()
    folded = fold_conv_bn(cnn)
    if form == "folded":
        return folded
    if form == "fused":
        return FusedResNet(folded).eval()
    raise ValueError(f"cnn form must be one of {CNN_FORMS}, got {form!r}")
