"""Compact residual networks for 32-48 px traffic signs, trained from scratch in minutes on a CPU.

Why a separate family: ImageNet architectures (MobileNetV3, EfficientNet)
downsample by 32 and spend most of their compute on large inputs; at 32 px
they are left with 1x1 feature maps and depthwise convolutions that run
poorly on a CPU. These nets keep 3x3 dense convolutions (the fastest
kernels on CPU and GPU alike), downsample three times (32 px -> 4x4 maps)
and use residual blocks so that a short OneCycle schedule trains them well.

They speak timm's model API (``feature_info``, ``forward_features``,
``forward_head``, ``get_classifier``, ``reset_classifier``), like
:class:`~gtsrb.models.simple_cnn.SimpleCNN`.
"""

from __future__ import annotations

import torch
from torch import nn

from gtsrb.models.head import PooledClassifier


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(cin, cout, stride), _conv_bn(cout, cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        nn.init.zeros_(self.conv2[1].weight)  # each block starts as the identity: stabler short schedules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


class SmallResNet(PooledClassifier):
    """Stem (3x3 conv) then one stage per width; every stage after the first halves the resolution."""

    def __init__(self, num_classes: int = 43, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256),
                 depths: tuple[int, ...] = (1, 1, 1, 1), drop_rate: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_chans, widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [BasicBlock(cin if j == 0 else width, width, 2 if i > 0 and j == 0 else 1) for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=w, reduction=2 ** i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self._init_head(cin, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


# Named sizes, selectable as model.name (conf/model/resnet_gtsrb*.yaml).
VARIANTS = {
    "resnet_gtsrb_s": dict(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1)),
    "resnet_gtsrb": dict(widths=(32, 64, 128, 256), depths=(1, 2, 2, 1)),
    "resnet_gtsrb_w": dict(widths=(48, 96, 192, 384), depths=(1, 1, 2, 1)),
}
