"""Label-safe test-time augmentation (TTA): the views of a batch and their averaged scores.

TTA averages the model's log-probabilities over a few views of each image:
small shifts (translation is part of the training augmentation) and a mirror
image where a mirror keeps the sign's meaning. As in training
(:func:`gtsrb.classes.gtsrb_hflip_map`), a mirrored "turn left" is
read as evidence for "turn right": the flipped view's scores are mapped back
through the flip map, and classes whose mirror image is no sign take their
score from the unflipped view. :meth:`gtsrb.inference.Predictor.logits` runs
it batch by batch with ``tta=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate by (dx, dy) pixels, repeating the border (no black edges the model never saw)."""
    pad = max(abs(dx), abs(dy))
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    h, w = images.shape[-2:]
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w].to(images.dtype)


def _unflip(log_probs_flipped: torch.Tensor, log_probs: torch.Tensor, flip_map: Sequence[int] | None) -> torch.Tensor:
    """Scores of the original classes from the mirrored view (see the module docstring)."""
    if flip_map is None:  # every class keeps its label in a mirror
        return log_probs_flipped
    mapping = torch.as_tensor(flip_map, device=log_probs.device)
    valid = mapping >= 0
    out = log_probs.clone()
    out[:, valid] = log_probs_flipped[:, mapping[valid]]
    return out


@torch.no_grad()
def tta_logits(model: nn.Module, images: torch.Tensor, flip_map: Sequence[int] | None, shift: int = 2,
               mirror: bool = True) -> torch.Tensor:
    """Mean log-softmax over the views of normalised ``images`` (usable as logits)."""
    views = [model(images).float().log_softmax(dim=1)]
    if shift:
        for dx, dy in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)):
            views.append(model(_shift(images, dx, dy)).float().log_softmax(dim=1))
    if mirror:
        views.append(_unflip(model(images.flip(-1)).float().log_softmax(dim=1), views[0], flip_map))
    return torch.stack(views).mean(dim=0)
