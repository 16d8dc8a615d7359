"""The export path of gtsrb.models.pooling computes torch's adaptive max pool, window for window."""

from __future__ import annotations

import pytest
import torch

from gtsrb.models import pooling
from gtsrb.models.pooling import AdaptiveMaxPool2d


@pytest.mark.parametrize("hw,size", [((10, 10), 4), ((5, 5), 4), ((6, 6), 4), ((7, 9), 3), ((3, 3), 4), ((8, 8), 4)])
def test_the_sliced_pool_is_torchs_adaptive_max_pool(monkeypatch, hw, size):
    x = torch.randn(2, 8, *hw, generator=torch.Generator().manual_seed(0))
    pool = AdaptiveMaxPool2d(size)
    expected = torch.nn.AdaptiveMaxPool2d(size)(x)
    assert torch.equal(pool(x), expected)  # not exporting: torch's own kernel
    monkeypatch.setattr(pooling.torch.onnx, "is_in_onnx_export", lambda: True)
    assert torch.equal(pool(x), expected)  # exporting: slices; a maximum is exact, whatever the order


def test_overlapping_windows_are_torchs():
    """5 cells into 4 windows overlap (rows 0-1, 1-2, 2-3, 3-4), and so do 10 (0-2, 2-4, 5-7, 7-9)."""
    assert [(s.start, s.stop) for s in pooling._windows(5, 4)] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert [(s.start, s.stop) for s in pooling._windows(10, 4)] == [(0, 3), (2, 5), (5, 8), (7, 10)]
