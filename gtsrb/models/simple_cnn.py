"""A small from-scratch CNN: the baseline every pretrained model has to beat.

Three VGG-style stages (two 3x3 conv-BN-ReLU layers, then 2x2 max-pool) are
enough for 32-48 px traffic signs. It speaks timm's model API
(``feature_info``, ``forward_features``, ``forward_head``, ``get_classifier``,
``reset_classifier``) so the rest of the framework never special-cases it.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 43, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128),
                 drop_rate: float = 0.2, **_: object) -> None:
        super().__init__()
        stages, cin = [], in_chans
        for width in widths:
            stages.append(nn.Sequential(*_conv_bn_relu(cin, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2)))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.feature_info = [
            dict(num_chs=w, reduction=2 ** (i + 1), module=f"stages.{i}") for i, w in enumerate(widths)
        ]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
