"""timm's classifier API for the project's own from-scratch networks.

Fine-tuning, Grad-CAM and reporting only use timm's interface
(``get_classifier``, ``reset_classifier``, ``forward_features``,
``forward_head``), so a network that subclasses :class:`PooledClassifier`
and defines ``forward_features`` and ``feature_info`` fits everywhere a timm
model does.
"""

from __future__ import annotations

import torch
from torch import nn


class PooledClassifier(nn.Module):
    """Average pooling, dropout and a linear layer on top of ``forward_features``.

    ``head_grid`` is the grid the last map is averaged to before the linear layer: 1 (global average pooling, the
    default) keeps only which features fired; 4 keeps where as well, as the fully connected heads of the classic
    GTSRB networks did (at 32 px simple_cnn's last map is 4x4, so nothing is averaged away).
    """

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float, head_grid: int = 1) -> None:
        self.num_features = num_features
        self.head_grid = head_grid
        self.global_pool = nn.AdaptiveAvgPool2d(head_grid)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features * head_grid ** 2, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features * self.head_grid ** 2, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
