"""MixUp / CutMix on whole batches, from ``conf/mixup/``, built on torchvision's v2 transforms."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from gtsrb.config import MixupConfig


class BatchMixer:
    """Mix a share ``prob`` of training batches; always return soft (one-hot or mixed) targets.

    Returning soft targets for every batch keeps the loss on one code path
    whether or not a batch was mixed.
    """

    def __init__(self, mixer: v2.Transform, num_classes: int, prob: float) -> None:
        self.mixer, self.num_classes, self.prob = mixer, num_classes, prob

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(()) < self.prob:
            return self.mixer(images, labels)
        return images, torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)


def build_mixer(cfg: MixupConfig, num_classes: int) -> BatchMixer | None:
    choices: list[v2.Transform] = []
    if cfg.mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not choices or cfg.prob == 0:
        return None
    mixer = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
    return BatchMixer(mixer, num_classes, cfg.prob)
