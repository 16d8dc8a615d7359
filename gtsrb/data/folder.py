"""A user's own images: ``root/train/<class>/*``, ``root/val/<class>/*`` and optionally ``root/test/<class>/*``.

The class list comes from ``train/`` (sorted folder names, as torchvision's
ImageFolder does); ``val/`` and ``test/`` must use the same names, or the
labels would silently mean different classes on each side.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from gtsrb.data.gtsrb import Record, decode_images
from gtsrb.data.imageset import ImageSet
from gtsrb.errors import UserError

SPLITS = ("train", "val", "test")


def _records(split_dir: Path, class_to_idx: dict[str, int]) -> list[Record]:
    unknown = sorted({p.name for p in split_dir.iterdir() if p.is_dir()} - set(class_to_idx))
    if unknown:
        raise UserError(f"{split_dir} has class folders that train/ lacks ({', '.join(unknown[:5])}); "
                        "use the same class folder names in every split")
    samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return [Record(Path(path), label) for path, label in samples]


def load_folder(root: str, image_size: int, on_corrupt: str = "error") -> tuple[dict[str, ImageSet], list[str]]:
    """Decode every split found under ``root``; returns the splits and the class names."""
    root_path = Path(root).expanduser()
    train_dir = root_path / "train"
    if not train_dir.is_dir():
        raise UserError(f"no train/ folder under {root_path} (expected {root_path}/train/<class>/*.jpg and "
                        f"{root_path}/val/<class>/*.jpg); set data.root to the folder that holds them")
    classes, class_to_idx = find_classes(str(train_dir))
    splits = {}
    for split in SPLITS:
        split_dir = root_path / split
        if split_dir.is_dir():
            records = _records(split_dir, class_to_idx)
            if records:
                images, kept = decode_images(records, image_size, on_corrupt=on_corrupt)
                labels = [records[i].label for i in kept]
                splits[split] = ImageSet(images, torch.tensor(labels, dtype=torch.int64))
    if "train" not in splits:
        raise UserError(f"no images found in {train_dir}; put them in one subfolder per class")
    return splits, classes
