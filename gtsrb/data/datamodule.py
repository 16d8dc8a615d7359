"""The LightningDataModule: one place that turns ``conf/data`` into DataLoaders.

Every source (real GTSRB, the synthetic signs, a user's image folders) is
decoded once into :class:`~gtsrb.data.imageset.ImageSet` tensors at the
configured size; the training loader then augments each sample (label-safe)
and MixUp/CutMix runs on whole batches after they reach the device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from gtsrb.classes import GTSRB_CLASS_NAMES, gtsrb_hflip_map
from gtsrb.data.imageset import ImageSet
from gtsrb.data.mixing import build_mixer
from gtsrb.data.transforms import LabelAwareFlip, build_eval_transform, build_flip, build_train_transform

log = logging.getLogger(__name__)


class TransformedImageSet(Dataset):
    """An :class:`ImageSet` seen through a per-sample transform (and an optional label-aware flip)."""

    def __init__(self, data: ImageSet, transform, flip: LabelAwareFlip | None = None) -> None:
        self.data, self.transform, self.flip = data, transform, flip

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.data.images[index], int(self.data.labels[index])
        if self.flip is not None:
            image, label = self.flip(image, label)
        return self.transform(image), label


class TrafficSignDataModule(L.LightningDataModule):
    def __init__(self, data: DictConfig, augmentation: DictConfig, mixup: DictConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.aug, self.mix_cfg, self.seed = data, augmentation, mixup, seed
        self.splits: dict[str, ImageSet] = {}
        self.class_names: list[str] = []
        self.flip_map: Sequence[int] | None = None
        self.mixer = None

    # -- loading -----------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download once per machine (Lightning calls this on one process only)."""
        if self.cfg.source == "gtsrb" and self.cfg.download:
            from gtsrb.data.gtsrb import load_gtsrb

            load_gtsrb(self.cfg.root, self.cfg.image_size, self.cfg.val_fraction, self.seed,
                       download=True, roi_crop=self.cfg.roi_crop, on_corrupt=self.cfg.on_corrupt)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # decoded already: train.py sets up early to learn the classes
            return
        cfg = self.cfg
        if cfg.source == "gtsrb":
            from gtsrb.data.gtsrb import load_gtsrb

            self.splits = load_gtsrb(cfg.root, cfg.image_size, cfg.val_fraction, self.seed, download=False,
                                     roi_crop=cfg.roi_crop, on_corrupt=cfg.on_corrupt)
            self.class_names, self.flip_map = list(GTSRB_CLASS_NAMES), gtsrb_hflip_map()
        elif cfg.source == "synthetic":
            from gtsrb.data.synthetic import make_synthetic

            sizes = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
            self.splits = {split: make_synthetic(n, cfg.image_size, seed=self.seed * 1000 + i, num_classes=cfg.num_classes)
                           for i, (split, n) in enumerate(sizes.items()) if n > 0}
            self.class_names = list(GTSRB_CLASS_NAMES[: cfg.num_classes])
            self.flip_map = gtsrb_hflip_map()[: cfg.num_classes] if cfg.num_classes == 43 else None
        else:
            from gtsrb.data.folder import load_folder

            self.splits, self.class_names = load_folder(cfg.root, cfg.image_size, on_corrupt=cfg.on_corrupt)
        self.mixer = build_mixer(self.mix_cfg, self.num_classes)
        log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def has_split(self, split: str) -> bool:
        return len(self.splits.get(split, ())) > 0

    # -- loaders -----------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool = False, sampler=None, drop_last: bool = False) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=workers, persistent_workers=workers > 0, drop_last=drop_last,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        data = self.splits["train"]
        transform = build_train_transform(self.aug, self.cfg.mean, self.cfg.std)
        dataset = TransformedImageSet(data, transform, build_flip(self.aug, self.flip_map))
        sampler = self._balanced_sampler(data.labels) if self.cfg.balanced_sampling else None
        # drop_last: a final batch of one sample would break BatchNorm
        return self._loader(dataset, shuffle=sampler is None, sampler=sampler, drop_last=len(data) > self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        if not self.has_split(split):
            return []  # Lightning skips an empty loader list
        return self._loader(TransformedImageSet(self.splits[split], build_eval_transform(self.cfg.mean, self.cfg.std)))

    def _balanced_sampler(self, labels: torch.Tensor) -> WeightedRandomSampler:
        """Every class equally likely per draw; an epoch still has len(train) samples."""
        counts = torch.bincount(labels, minlength=self.num_classes).clamp(min=1)
        weights = (1.0 / counts.double())[labels]
        generator = torch.Generator().manual_seed(self.seed)
        return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """MixUp/CutMix on the device, training batches only."""
        if self.mixer is not None and self.trainer is not None and self.trainer.training:
            images, labels = batch
            batch = self.mixer(images, labels)
        return batch
