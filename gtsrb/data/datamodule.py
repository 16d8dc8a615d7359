"""The LightningDataModule: one place that turns ``conf/data`` into DataLoaders.

Every source (real GTSRB, the synthetic signs, a user's image folders) is
decoded once into :class:`~gtsrb.data.imageset.ImageSet` uint8 tensors at the
configured size, contrast-normalised if ``data.preprocess`` says so, and kept
in ``data.cache_dir`` when set (:mod:`gtsrb.data.cache`).

Two ways to augment the training images, with the same result for the same
random parameters (:mod:`gtsrb.data.batch_augment`):

* ``data.augment_on=batch`` (default): the loader only slices uint8 batches
  out of the tensor (no per-sample Python, no workers); the whole batch is
  augmented and normalised on the training device in
  :meth:`TrafficSignDataModule.on_after_batch_transfer`, on the GPU when there
  is one. Eval batches are normalised as whole batches too.
* ``data.augment_on=sample``: each image is augmented on its own in the
  DataLoader (with ``data.num_workers`` processes). The path for data read
  image by image and for checking the batched path: both call the same
  functional ops with the same parameter sampler.

With ``data.in_memory=false`` (gtsrb and folder, per-sample path only)
nothing is decoded up front: each split is a
:class:`~gtsrb.data.imageset.LazyImageSet` of file records, split exactly as
the in-memory path splits them, and the DataLoader's workers decode,
preprocess and augment each image with the in-memory path's own functions.

MixUp/CutMix then runs on the augmented training batch.

Under DDP (``trainer=ddp``) every process builds its own loaders, and
``data.batch_size`` is per process (per device): the effective batch is
``data.batch_size`` times the number of processes. The module shards the
splits itself, both paths alike, and trainers pass
``use_distributed_sampler=False`` (Lightning's sampler injection would deal
out the batched path's whole batches, repeat batches in evaluation and rely
on every process shuffling alike). Each process trains on its own shard of
the training set, reshuffled every epoch from ``seed`` and the epoch, and
padded by a few repeated images to an equal share (DDP needs the same number
of steps everywhere); it draws its own augmentation, MixUp and dropout
randomness, seeded from ``seed`` and its rank, so runs are reproducible.
Validation and test shards are not padded, so metrics reduced over the
processes count every image exactly once, as on one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import (BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler,
                              Sampler, WeightedRandomSampler, default_collate)

from gtsrb.config import AugmentationConfig, DataConfig, MixupConfig
from gtsrb.data.batch_augment import BatchAugment, normalize, one_thread_on_cpu, to_float
from gtsrb.data.cache import load_or_build
from gtsrb.data.imageset import ImageSet, LazyImageSet
from gtsrb.data.mixing import build_mixer
from gtsrb.data.preprocess import preprocess_images
from gtsrb.data.sources import SOURCES, Source
from gtsrb.data.transforms import build_eval_transform
from gtsrb.errors import UserError

log = logging.getLogger(__name__)


Split = ImageSet | LazyImageSet  # both give len(), .labels and .image(i)


class _PerSample(Dataset):
    """One image of a split at a time, in-memory or lazy alike (they differ only in how ``image(i)`` gets it).

    Yields None for an image skipped as unreadable (lazy splits only); :func:`collate_readable` drops it.
    """

    def __init__(self, data: Split) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image = self.data.image(index)
        return None if image is None else self.prepare(image, self.data.labels[index:index + 1])

    def prepare(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class TransformedImageSet(_PerSample):
    """A split seen through a per-image transform (evaluation on the per-sample path)."""

    def __init__(self, data: Split, transform) -> None:
        super().__init__(data)
        self.transform = transform

    def prepare(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.transform(image), int(label[0])


class AugmentedSamples(_PerSample):
    """The per-sample path: each image gets its own parameters and the same functional ops as a batch.

    Returns normalised float images, so the DataLoader's batches are ready for the model.
    """

    def __init__(self, data: Split, augment: BatchAugment) -> None:
        super().__init__(data)
        self.augment = augment

    def prepare(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, int]:
        images, labels = self.augment(image[None], label)
        return images[0], int(labels[0])


def collate_readable(samples: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A batch of the samples that decoded (a skipped file yields None); None when not one did."""
    readable = [s for s in samples if s is not None]
    return default_collate(readable) if readable else None


class LazyLoader(DataLoader):
    """The DataLoader of lazy splits: leaves out batches in which every file was skipped as unreadable,
    and gives a :class:`UserError` raised in a worker process (a corrupt file) back its own one line.

    PyTorch re-raises a worker's exception as the same type with the worker's
    whole traceback as the message; the command line would print all of it.
    """

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UserError as exc:
                message = _worker_message(str(exc))
                if message is None:  # raised in this process: already one line
                    raise
                raise UserError(message) from None
            if batch is not None:
                yield batch


def _worker_message(text: str) -> str | None:
    """The original message of a UserError re-raised from a DataLoader worker (its traceback's last line), else None."""
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return lines[-1][len(prefix):] if text.startswith("Caught ") and lines else None


class TensorBatches(Dataset):
    """Whole batches by index list: ``dataset[[i, j, ...]]`` is one tensor slice, no per-sample Python.

    Used with a ``BatchSampler`` as sampler and ``batch_size=None``. Training
    batches stay uint8 (4x less to copy to the device; augmented there);
    eval batches are normalised here, so any consumer gets model-ready input.
    """

    def __init__(self, data: ImageSet, mean=None, std=None) -> None:
        self.data, self.mean, self.std = data, mean, std

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        with one_thread_on_cpu(self.data.images):  # a small copy: a second thread only adds a barrier
            images = self.data.images[index]
            if self.mean is not None:
                images = normalize(to_float(images), self.mean, self.std)
        return images, self.data.labels[index]


class EpochBatchSampler(BatchSampler):
    """A ``BatchSampler`` that passes ``set_epoch`` on to its sampler.

    The batched path hands Lightning a loader whose ``sampler`` is this batch
    sampler; Lightning calls ``set_epoch`` on it every epoch, and a
    ``DistributedSampler`` inside only reshuffles when it gets the call.
    """

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)


def process_share() -> tuple[int, int]:
    """``(number of processes, rank of this one)`` of the DDP run this process belongs to; ``(1, 0)`` outside DDP."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _typed(schema, values) -> DictConfig:
    """Plain dicts (from a checkpoint) or configs, checked against the schema and completed with its defaults."""
    return OmegaConf.merge(OmegaConf.structured(schema), values)


class TrafficSignDataModule(L.LightningDataModule):
    def __init__(self, data: dict, augmentation: dict | None = None, mixup: dict | None = None, seed: int = 0) -> None:
        """Hyperparameters are saved into every checkpoint, so evaluation can rebuild the same splits."""
        super().__init__()
        self.cfg = _typed(DataConfig, data)
        self.aug = _typed(AugmentationConfig, augmentation or {})
        self.mix_cfg = _typed(MixupConfig, mixup or {})
        self.seed = seed
        self.save_hyperparameters({"data": OmegaConf.to_container(self.cfg), "seed": seed,
                                   "augmentation": OmegaConf.to_container(self.aug),
                                   "mixup": OmegaConf.to_container(self.mix_cfg)}, logger=False)
        self.splits: dict[str, Split] = {}
        self.class_names: list[str] = []
        self.flip_map: Sequence[int] | None = None
        self.augment: BatchAugment | None = None
        self.mixer = None
        self.train_image_size: int | None = None  # set per epoch by ProgressiveResizing (gtsrb/resolution.py)
        self._seeded_rank: int | None = None  # under DDP: the rank this process's random stream was seeded for

    # -- loading -----------------------------------------------------------------
    @property
    def source(self) -> Source:
        """The kind of data ``data.source`` names (:mod:`gtsrb.data.sources`)."""
        return SOURCES[self.cfg.source]

    def prepare_data(self) -> None:
        """Download once per machine (Lightning calls this on one process only); decoding waits for setup."""
        self.source.download(self.cfg)

    @property
    def lazy(self) -> bool:
        """Decode image by image in the DataLoader (``data.in_memory=false``); rendered images are always in memory."""
        return not self.cfg.in_memory and self.source.from_files

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # decoded already: train.py sets up early to learn the classes
            return
        cfg, source = self.cfg, self.source
        if self.lazy:  # only the file lists: nothing decoded, nothing to cache
            self.splits, self.class_names = self._index()
        elif not source.from_files:  # rendered, nothing to cache
            self.splits, self.class_names = self._decode()
        else:
            settings = {"source": cfg.source, "root": str(Path(cfg.root).expanduser().resolve()),
                        "image_size": cfg.image_size, "roi_crop": cfg.roi_crop, "on_corrupt": cfg.on_corrupt,
                        "preprocess": cfg.preprocess, "split": source.split_key(cfg)}
            self.splits, self.class_names = load_or_build(cfg.cache_dir, settings, source.files(cfg.root), self._decode)
        self.flip_map = source.flip_map(cfg)
        self.augment = BatchAugment(self.aug, self.cfg.mean, self.cfg.std, self.flip_map)
        self.mixer = build_mixer(self.mix_cfg, self.num_classes)
        log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))

    def _index(self) -> tuple[dict[str, LazyImageSet], list[str]]:
        """Every split as a list of files with labels (and tracks), split as :meth:`_decode` splits it."""
        from gtsrb.data.gtsrb import RecordDecoder

        cfg = self.cfg
        records, class_names = self.source.index(cfg)
        decode = RecordDecoder(cfg.image_size, cfg.roi_crop, cfg.on_corrupt, cfg.preprocess)
        return {name: LazyImageSet(split, decode) for name, split in records.items()}, class_names

    def _decode(self) -> tuple[dict[str, ImageSet], list[str]]:
        """Decode (or render) every split, then apply ``data.preprocess`` once."""
        cfg = self.cfg
        splits, class_names = self.source.decode(cfg, self.seed)
        if cfg.preprocess != "none":
            splits = {name: ImageSet(preprocess_images(s.images, cfg.preprocess), s.labels, s.groups)
                      for name, s in splits.items()}
        return splits, class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def has_split(self, split: str) -> bool:
        return len(self.splits.get(split, ())) > 0

    # -- loaders -----------------------------------------------------------------
    @property
    def batched(self) -> bool:
        """Augment whole batches on the device (``data.augment_on=batch``)."""
        return self.cfg.augment_on == "batch"

    def _loader(self, dataset: Dataset, shuffle: bool = False, sampler=None, drop_last: bool = False) -> DataLoader:
        pin = torch.cuda.is_available()
        if self.lazy and self.batched:  # validate() says so before training; this catches a data module built by hand
            raise UserError("data.in_memory=false decodes each image in the DataLoader; set data.augment_on=sample")
        if self.batched:  # one slice per batch: no workers needed
            if sampler is None:
                sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            batches = EpochBatchSampler(sampler, self.cfg.batch_size, drop_last=drop_last)
            return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0, pin_memory=pin)
        workers = self.cfg.num_workers
        loader, collate = (LazyLoader, collate_readable) if self.lazy else (DataLoader, None)
        return loader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=drop_last, pin_memory=pin, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        data = self.splits["train"]
        dataset = TensorBatches(data) if self.batched else AugmentedSamples(data, self.augment)
        sampler = self._balanced_sampler(data.labels) if self.cfg.balanced_sampling else None
        processes, rank = process_share()
        if processes > 1:  # this process's shard, and its own random draws (see the module docstring)
            if self._seeded_rank != rank:  # once: a loader built again every epoch continues the stream
                torch.manual_seed(self.seed + rank)
                self._seeded_rank = rank
            sampler = self._train_shard(dataset, sampler, processes, rank)
        size = len(sampler) if sampler is not None else len(data)
        # drop_last: a final batch of one sample would break BatchNorm
        return self._loader(dataset, shuffle=sampler is None, sampler=sampler, drop_last=size > self.cfg.batch_size)

    def _train_shard(self, dataset: Dataset, sampler: Sampler | None, processes: int, rank: int) -> DistributedSampler:
        """Disjoint shards of one order that every process derives alike from ``seed`` (and the epoch)."""
        if sampler is None:
            return DistributedSampler(dataset, processes, rank, shuffle=True, seed=self.seed)
        # the balanced sampler draws the same sequence in every process (its generator is seeded); each takes a share
        return DistributedSamplerWrapper(sampler, num_replicas=processes, rank=rank, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        if not self.has_split(split):
            return []  # Lightning skips an empty loader list
        data = self.splits[split]
        if self.batched:
            dataset = TensorBatches(data, self.cfg.mean, self.cfg.std)
        else:
            dataset = TransformedImageSet(data, build_eval_transform(self.cfg.mean, self.cfg.std))
        processes, rank = process_share()
        if processes > len(data):  # a process without a batch would leave the others waiting for it
            raise UserError(f"the {split} split has {len(data)} images, fewer than the {processes} processes that "
                            "evaluate it; use fewer trainer.devices or more images")
        # every image once, none repeated: a padded shard would count its repeats in the metrics
        sampler = UnrepeatedDistributedSampler(dataset, processes, rank, shuffle=False) if processes > 1 else None
        return self._loader(dataset, sampler=sampler)

    def _balanced_sampler(self, labels: torch.Tensor) -> WeightedRandomSampler:
        """Every class equally likely per draw; an epoch still has len(train) samples."""
        counts = torch.bincount(labels, minlength=self.num_classes).clamp(min=1)
        weights = (1.0 / counts.double())[labels]
        generator = torch.Generator().manual_seed(self.seed)
        return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)

    def augment_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch as the model sees it: augmented (uint8 batches from the batched path), scaled to this
        epoch's size (``resolution=progressive``), then mixed."""
        if images.dtype == torch.uint8:
            images, labels = self.augment(images, labels)
        if self.train_image_size is not None and images.shape[-1] != self.train_image_size:
            with one_thread_on_cpu(images):
                images = F.interpolate(images, size=self.train_image_size, mode="bilinear", antialias=True)
        if self.mixer is not None:
            images, labels = self.mixer(images, labels)
        return images, labels

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augmentation (batched path) and MixUp/CutMix on the device, training batches only."""
        if self.trainer is not None and self.trainer.training:
            batch = self.augment_batch(*batch)
        return batch
