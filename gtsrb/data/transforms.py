"""Augmentation pipelines built from ``conf/augmentation/`` on uint8 image tensors.

Traffic signs carry meaning in their orientation and colour, so every
augmentation here keeps the label true: flips only where a mirror image is the
same sign (or its mirror twin, whose label is swapped), small rotations, and
hue shifts too small to turn a red sign blue. The auto-augment policies are
narrowed for the same reason (TrivialAugmentWide rotates up to 135 degrees,
which turns "keep right" into "keep left").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from gtsrb.config import AugmentationConfig


class SignTrivialAugment(v2.TrivialAugmentWide):
    """TrivialAugment with RandAugment's gentle geometry (rotation <= 30 deg, shear <= 0.3)."""

    _AUGMENTATION_SPACE = {
        **v2.TrivialAugmentWide._AUGMENTATION_SPACE,
        **{k: v2.RandAugment._AUGMENTATION_SPACE[k] for k in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")},
    }


class LabelAwareFlip:
    """Horizontal flip that respects what a mirror does to a sign.

    ``flip_map[c]`` is the label of class ``c`` after a mirror flip, or -1 when
    a mirrored ``c`` is no real sign (it is then never flipped). ``None`` means
    every class may be flipped and keeps its label (for datasets where that is
    true).
    """

    def __init__(self, flip_map: Sequence[int] | None, p: float = 0.5) -> None:
        self.flip_map = None if flip_map is None else torch.as_tensor(flip_map)
        self.p = p

    def __call__(self, image: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        target = label if self.flip_map is None else int(self.flip_map[label])
        if target < 0 or torch.rand(()) >= self.p:
            return image, label
        return image.flip(-1), target


def build_flip(aug: AugmentationConfig, flip_map: Sequence[int] | None) -> LabelAwareFlip | None:
    """``label_safe`` needs to know the classes; without a map it flips nothing."""
    if aug.hflip == "any":
        return LabelAwareFlip(None)
    if aug.hflip == "label_safe" and flip_map is not None:
        return LabelAwareFlip(flip_map)
    return None


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def build_train_transform(aug: AugmentationConfig, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Geometry, then colour, then an optional auto-augment policy, then normalise and erase."""
    steps: list[v2.Transform] = []
    if aug.rotation or aug.translate or aug.shear or tuple(aug.scale) != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate),
                                     scale=tuple(aug.scale), shear=aug.shear or None))
    if aug.perspective:
        steps.append(v2.RandomPerspective(distortion_scale=aug.perspective, p=0.5))
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        steps.append(v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    if aug.blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=aug.blur))
    if aug.auto_augment == "randaugment":
        steps.append(v2.RandAugment())
    elif aug.auto_augment == "trivialaugment":
        steps.append(SignTrivialAugment())
    steps += _normalize(mean, std)
    if aug.random_erasing:
        steps.append(v2.RandomErasing(p=aug.random_erasing, scale=(0.02, 0.15)))
    return v2.Compose(steps)


def build_eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose(_normalize(mean, std))
