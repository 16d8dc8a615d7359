"""A small from-scratch CNN: the baseline every pretrained model has to beat.

Three VGG-style stages (two 3x3 conv-BN-ReLU layers, then 2x2 max-pool) are
enough for 32-48 px traffic signs. ``simple_cnn_stn`` puts a spatial transformer
(:mod:`gtsrb.models.stn`) in front of them; ``simple_cnn_stn_ms`` also hands
every stage's features to the classifier (multi-scale features, as in
Sermanet and LeCun's GTSRB entry), so low-level edges and strokes reach it
beside the last stage's; on ``gtsrb_cpu`` that measured no better
(benchmarks/README.md). ``simple_cnn_stn_grid`` hands the classifier the
last map's 4x4 layout instead of its average (``head_grid``), so it knows
where on the sign a feature fired (keep left and keep right are mirror
images); both CPU recipes use it. It speaks timm's model API (through
:class:`~gtsrb.models.head.PooledClassifier`) so the rest of the framework
never special-cases it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gtsrb.models.head import PooledClassifier
from gtsrb.models.stn import SpatialTransformer


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SimpleCNN(PooledClassifier):
    def __init__(self, num_classes: int = 43, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128),
                 drop_rate: float = 0.2, stn: bool = False, multiscale: bool = False, head_grid: int = 1) -> None:
        super().__init__()
        self.stn = SpatialTransformer(in_chans) if stn else nn.Identity()
        self.multiscale = multiscale
        stages, cin = [], in_chans
        for width in widths:
            stages.append(nn.Sequential(*_conv_bn_relu(cin, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2)))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=w, reduction=2 ** (i + 1), module=f"stages.{i}") for i, w in enumerate(widths)
        ]
        self._init_head(sum(widths) if multiscale else cin, num_classes, drop_rate, head_grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map; with ``multiscale``, every stage's map pooled to its size and stacked.

        Stacking before the head (rather than pooling each stage in the head)
        keeps timm's split: ``forward_head(forward_features(x))`` is the whole
        network, so export, Grad-CAM and fine-tuning need nothing new.
        """
        x = self.stn(x)
        if not self.multiscale:
            return self.stages(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        size = x.shape[-2:]
        return torch.cat([F.adaptive_avg_pool2d(m, size) for m in maps[:-1]] + [x], dim=1)
