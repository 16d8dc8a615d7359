"""Tolerances for comparing float32 results of two code paths, derived from float32 rounding.

Two computations of the same formula (a batch of 86 and a batch of 1, one
thread and two, an in-place op chain and an out-of-place one, AVX-512 and
NEON) may round differently: a matrix product picks its kernel, blocking and
fused multiply-adds by shape and CPU, a reduction splits its sum by thread
count. Each rounding is off by at most half an ulp, so the results agree to a
few ulps of the values involved, not to the bit. The helpers here turn that
into tolerances; a bit-exact claim belongs only where the arithmetic is exact
(integers, copies, uint8 data, a multiply by 1 or -1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EPS = torch.finfo(torch.float32).eps  # 2**-23: the relative spacing of float32 numbers


def rounding_tolerance(magnitude: float, roundings: int) -> float:
    """How far two float32 evaluations of a formula may drift apart.

    ``roundings`` operations, each on values up to ``magnitude``, each off by
    at most half an ulp in either evaluation: ``roundings * EPS * magnitude``
    covers both sides.
    """
    return roundings * EPS * magnitude


def uint8_step(std: Sequence[float]) -> float:
    """One level of a uint8 input image after normalisation by ``std``: the smallest change the data can make."""
    return 1.0 / (255 * min(std))


def augmentation_tolerance(size: int, std: Sequence[float]) -> float:
    """How far two float32 evaluations of one augmentation of a ``size`` x ``size`` image may differ, normalised.

    The largest term is the warp: each output pixel samples the input at a
    coordinate computed in float32 from values up to ``size`` pixels (a 3x3
    matrix product, a division, a rescale to [-1, 1] and back: about ten
    roundings). Bilinear sampling of a [0, 1] image changes by at most 1 per
    pixel of displacement, and the colour ops after it amplify a difference by
    their factors (at most about 2 each, 4 in all for the configs here);
    normalisation divides by ``std``. Measured differences sit an order of
    magnitude below this bound, and the bound sits far below one uint8 step
    (1/25 of it for 32 px and std 0.25), so a sample augmented with another
    sample's parameters or in another order cannot pass.
    """
    return 4 * rounding_tolerance(size, roundings=10) / min(std)


def assert_same_augmentation(actual: torch.Tensor, expected: torch.Tensor, atol: float,
                             quantised: torch.Tensor | None = None, max_share_jumped: float = 0.02) -> None:
    """Two float32 evaluations of the same augmentation [n, C, H, W], allowing for float32 rounding.

    ``quantised`` [n] marks samples that went through a discontinuous op
    (posterize, equalize, solarize: rounding to a uint8 level or a threshold).
    There a difference of one ulp upstream can move a pixel across a level
    and change it by a whole step or more; such pixels may differ freely, but
    only a few of them (``max_share_jumped`` of the sample). Every other value
    must agree within ``atol``.
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    far = ((actual - expected).abs() > atol).flatten(1)
    quantised = torch.zeros(len(actual), dtype=torch.bool) if quantised is None else quantised.cpu()
    smooth_far = far[~quantised].sum().item()
    worst = (actual - expected).abs().flatten(1)[~quantised].max().item() if (~quantised).any() else 0.0
    assert smooth_far == 0, f"{smooth_far} values differ by more than {atol:.2e} (worst {worst:.2e})"
    if quantised.any():
        share = far[quantised].float().mean(dim=1)
        assert share.max() <= max_share_jumped, \
            f"a quantised sample differs in {share.max():.1%} of its values (allowed: {max_share_jumped:.0%})"
