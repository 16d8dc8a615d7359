"""Per-image evaluation transform on uint8 tensors, for code that handles images one by one.

Training augmentation (``conf/augmentation``) lives in :mod:`gtsrb.data.batch_augment`,
which serves both the batched and the per-sample path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def build_eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 image(s) -> float, scaled to [0, 1] and normalised with the dataset's mean and std."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
