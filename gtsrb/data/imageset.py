"""The two forms a dataset split takes: decoded in memory, or listed by file and decoded on access.

Both offer the same small interface to the data module, evaluation and the
Grad-CAM callback: ``len(data)``, ``data.labels``, ``data.groups``,
``data.image(i)`` (one uint8 [3, H, W] image, or None for a file skipped as
unreadable) and ``data.images[index]`` (uint8 [n, 3, H, W] for an int, slice,
list or tensor of indices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gtsrb.errors import UserError

if TYPE_CHECKING:  # gtsrb.data.gtsrb builds ImageSets: a run-time import would be circular
    from gtsrb.data.gtsrb import Record, RecordDecoder


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

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        groups = None if self.groups is None else self.groups[index]
        return ImageSet(self.images[index], self.labels[index], groups)


class LazyImageSet:
    """Images listed by file and decoded one at a time when asked for (``data.in_memory=false``).

    For image folders too large for memory: only the records (path, label,
    track) are held, and the DataLoader's workers decode each image with
    ``decode`` (:class:`gtsrb.data.gtsrb.RecordDecoder`, the in-memory path's
    own decoding and preprocessing). Labels come from the records, so they
    are known without decoding anything.
    """

    def __init__(self, records: Sequence[Record], decode: RecordDecoder) -> None:
        self.records, self.decode = list(records), decode
        self.labels = torch.tensor([r.label for r in self.records], dtype=torch.int64)
        known = any(r.group >= 0 for r in self.records)  # tracks of GTSRB train/val; -1 elsewhere, as in memory
        self.groups = torch.tensor([r.group for r in self.records], dtype=torch.int64) if known else None
        self.images = DecodedOnAccess(self)
        self._unreadable: set[int] = set()  # skipped files this process has named already: not read again

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> torch.Tensor | None:
        """Image ``index`` decoded and preprocessed now; None when it is unreadable and data.on_corrupt=skip."""
        if index in self._unreadable:
            return None
        image = self.decode(self.records[index])
        if image is None:
            self._unreadable.add(index)
        return image


class DecodedOnAccess:
    """``LazyImageSet.images``: ``images[index]`` decodes just the images indexed, like a slice of a tensor.

    Lets code written against :class:`ImageSet` (evaluation, the Grad-CAM
    callback), which reads one batch or a few images at a time, run on a lazy
    split without holding it all. Those callers line images up with
    ``labels``, so an image skipped as unreadable cannot just be left out:
    it stops with a one-line error instead.
    """

    def __init__(self, data: LazyImageSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            return self._stack(range(len(self.data))[index])
        index = torch.as_tensor(index)
        if index.ndim == 0:
            return self._one(int(index))
        return self._stack(index.flatten().tolist())

    def _stack(self, indices: Sequence[int]) -> torch.Tensor:
        if len(indices) == 0:
            size = self.data.decode.image_size
            return torch.empty((0, 3, size, size), dtype=torch.uint8)
        return torch.stack([self._one(i) for i in indices])

    def _one(self, index: int) -> torch.Tensor:
        image = self.data.image(index)
        if image is None:
            raise UserError(f"image {self.data.records[index].path} does not decode, and with data.in_memory=false "
                            "evaluation and Grad-CAM cannot leave it out; remove the file or set data.in_memory=true")
        return image
