"""Adaptive max pooling that exports to ONNX at any input size.

ONNX has no adaptive pool. torch's exporter decomposes an adaptive *average* pool at any size, but writes an
adaptive *max* pool as a plain max pool with a fixed kernel, which exists only when the output size divides the
input size. The spatial transformer max-pools its localisation map to 4x4, so trained at 40 px, where that map is
10x10, a network would train and serve in PyTorch but stop at ``gtsrb.export``.

While exporting, a max pool that does not divide is written as slices instead: the same windows torch uses (rows
``floor(i*n/o)`` to ``ceil((i+1)*n/o)``, overlapping where ``o`` does not divide ``n``), each reduced on its own,
in operations every exporter knows. Training and eager inference keep torch's kernel, so nothing they compute
changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_max_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, size)`` that also exports when ``size`` does not divide ``x``'s map."""
    h, w = x.shape[-2:]
    if not torch.onnx.is_in_onnx_export() or (h % size == 0 and w % size == 0):
        return F.adaptive_max_pool2d(x, size)
    rows = [torch.stack([x[..., r, c].amax(dim=(-2, -1)) for c in _windows(w, size)], dim=-1)
            for r in _windows(h, size)]
    return torch.stack(rows, dim=-2)


def _windows(n: int, size: int) -> list[slice]:
    """torch's adaptive windows along one axis of length ``n``."""
    return [slice(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]


class AdaptiveMaxPool2d(nn.Module):
    """:func:`adaptive_max_pool2d` as a layer: ``nn.AdaptiveMaxPool2d(size)`` that exports at any input size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_max_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
