"""The fast path's CNN: every eval-mode BatchNorm folded into the convolution before it (exact in eval mode)."""

from __future__ import annotations

import copy

import torch.nn as nn


def fold_conv_bn(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d before it; returns a new module.

    Handles the two ways torchvision's backbones pair them: ``convN``/``bnN`` attributes (the ResNet stem,
    BasicBlock, Bottleneck) and a Conv2d followed by a BatchNorm2d inside an ``nn.Sequential`` (ResNet downsample
    branches, and ``Conv2dNormActivation``, every conv of MobileNetV3 and EfficientNet). The caller's module is never
    modified: this works on a deep copy.
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
