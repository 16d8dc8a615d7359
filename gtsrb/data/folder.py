"""A user's own images: ``root/train/<class>/*``, ``root/val/<class>/*`` and optionally ``root/test/<class>/*``.

The class list comes from ``train/`` (sorted folder names, as torchvision's
ImageFolder does); ``val/`` and ``test/`` must use the same names, or the
labels would silently mean different classes on each side.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from gtsrb.data.gtsrb import Record, records_to_imageset
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


def folder_records(root: str) -> tuple[dict[str, list[Record]], list[str]]:
    """The image files of every split found under ``root`` with their labels, and the class names; decodes nothing.

    Shared by the in-memory path (:func:`load_folder`) and the lazy one
    (``data.in_memory=false``), so both see the same files with the same labels.
    """
    root_path = Path(root).expanduser()
    train_dir = root_path / "train"
    if not train_dir.is_dir():
        raise UserError(f"no train/ folder under {root_path} (expected {root_path}/train/<class>/*.jpg and "
                        f"{root_path}/val/<class>/*.jpg); set data.root to the folder that holds them")
    classes, class_to_idx = find_classes(str(train_dir))
    splits = {}
    for split in SPLITS:
        split_dir = root_path / split
        records = _records(split_dir, class_to_idx) if split_dir.is_dir() else []
        if records:
            splits[split] = records
    if "train" not in splits:
        raise UserError(f"no images found in {train_dir}; put them in one subfolder per class")
    return splits, classes


def load_folder(root: str, image_size: int, on_corrupt: str = "error") -> tuple[dict[str, ImageSet], list[str]]:
    """Decode every split found under ``root``; returns the splits and the class names."""
    records, classes = folder_records(root)
    splits = {split: records_to_imageset(split_records, image_size, False, on_corrupt, with_groups=False)
              for split, split_records in records.items()}
    return splits, classes
