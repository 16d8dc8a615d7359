"""The in-memory form every dataset source is decoded into."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images decoded once into one uint8 tensor, with their labels.

    GTSRB at 32-64 px fits in a few hundred MB, so decoding it once and keeping
    it in memory removes file I/O and JPEG/PPM decoding from every epoch.
    ``groups`` holds the physical-sign track of each image where the source
    knows it (used for leak-free splitting), otherwise ``None``.
    """

    images: torch.Tensor  # uint8, [N, 3, H, W]
    labels: torch.Tensor  # int64, [N]
    groups: torch.Tensor | None = None  # int64, [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        groups = None if self.groups is None else self.groups[index]
        return ImageSet(self.images[index], self.labels[index], groups)
