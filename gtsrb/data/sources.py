"""The kinds of data behind ``data.source``, one class each: real GTSRB, a user's image folders, synthetic signs.

A source says where its files are (fingerprinted for the cache), how to download them, how to decode (or
render) its splits, how to list them for reading image by image (``data.in_memory=false``), which classes
are mirror images of each other, and how its validation split was drawn (for the model card). The data
module, the cache key, the config check and the model card ask the source instead of comparing
``data.source`` with names in each place, so a new kind of data is one new class and one entry in
:data:`SOURCES`.

Readers are imported inside the methods: ``train.py --help`` and the config check stay fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gtsrb.classes import GTSRB_CLASS_NAMES, gtsrb_hflip_map
from gtsrb.errors import UserError

Splits = tuple[dict[str, Any], list[str]]  # {split name: ImageSet or list of Records}, class names


class Source:
    name: str
    dataset_id: str  # the model card's dataset tag
    title: str  # the model card's words for it
    from_files = True  # decoded from image files: cached by fingerprint, and readable one image at a time
    draws_validation = False  # holds out part of its training data itself, so data.folds can pick another part

    def download(self, cfg: Mapping) -> None:
        """Fetch the data where the source can (``data.download=true``); called once per machine."""

    def files(self, root: str) -> list[Path]:
        """The folders whose files make up the data: the cache is rebuilt when any of them changes."""
        return []

    def split_key(self, cfg: Mapping) -> dict | None:
        """The settings that choose the validation split, where the source draws one itself (part of the cache
        key)."""
        return None

    def decode(self, cfg: Mapping, seed: int) -> Splits:
        """Every split as uint8 images at ``data.image_size``, before ``data.preprocess``."""
        raise NotImplementedError

    def require_files(self) -> None:
        """Refuse ``data.in_memory=false`` for a source that has no image files to read one by one."""
        if not self.from_files:
            raise UserError(f"data.in_memory=false reads image files one by one, but data.source={self.name} renders "
                            "its images in memory; set data.in_memory=true or use data=gtsrb or data=folder")

    def index(self, cfg: Mapping) -> Splits:
        """Every split as file records, split exactly as :meth:`decode` splits it (``data.in_memory=false``)."""
        self.require_files()
        raise NotImplementedError

    def flip_map(self, cfg: Mapping) -> Sequence[int] | None:
        """Class ids after a horizontal flip (mirror twins swapped, symmetric signs kept), where known."""
        return None

    def validation(self, data: Mapping) -> str:
        """How the validation images were chosen, in the model card's words."""
        raise NotImplementedError


class GTSRB(Source):
    """The official GTSRB archives (torchvision's layout or the official one); validation holds out whole tracks."""

    name, dataset_id, title = "gtsrb", "gtsrb", "GTSRB (German Traffic Sign Recognition Benchmark)"
    draws_validation = True

    @staticmethod
    def track_split(cfg: Mapping) -> dict:
        """Which tracks are held out (:func:`gtsrb.data.gtsrb.split_by_track`), as the reader's keyword
        arguments: the same for downloading, decoding, the lazy path and the cache key."""
        return {"val_fraction": cfg["val_fraction"], "seed": cfg["split_seed"], "how": cfg["val_split"],
                "folds": cfg["folds"], "fold": cfg["fold"]}

    def download(self, cfg: Mapping) -> None:
        if cfg["download"]:
            from gtsrb.data.gtsrb import index_gtsrb

            index_gtsrb(cfg["root"], **self.track_split(cfg), download=True)

    def files(self, root: str) -> list[Path]:
        from gtsrb.data.gtsrb import find_test, find_train_dir

        root_path = Path(root).expanduser()
        folders = [find_train_dir(root_path)]
        test = find_test(root_path)
        if test is not None:
            folders += [test[0], test[1]]
        return [f for f in folders if f is not None]

    def split_key(self, cfg: Mapping) -> dict:
        return self.track_split(cfg)

    def decode(self, cfg: Mapping, seed: int) -> Splits:
        from gtsrb.data.gtsrb import load_gtsrb

        splits = load_gtsrb(cfg["root"], cfg["image_size"], **self.track_split(cfg), download=False,
                            roi_crop=cfg["roi_crop"], on_corrupt=cfg["on_corrupt"])
        return splits, list(GTSRB_CLASS_NAMES)

    def index(self, cfg: Mapping) -> Splits:
        from gtsrb.data.gtsrb import index_gtsrb

        return index_gtsrb(cfg["root"], **self.track_split(cfg), download=False).splits(), list(GTSRB_CLASS_NAMES)

    def flip_map(self, cfg: Mapping) -> Sequence[int]:
        return gtsrb_hflip_map()

    def validation(self, data: Mapping) -> str:
        how = ("one block of consecutive tracks per class" if data.get("val_split") == "blocks"
               else "tracks drawn at random per class")
        if data.get("folds"):
            share = f"fold {data.get('fold')} of {data.get('folds')} (1/{data.get('folds')} of each class's tracks)"
        else:
            share = f"{data.get('val_fraction')} of each class's tracks"
        return (f"{share} held out whole, as {how} (`data.val_split={data.get('val_split')}`, "
                f"`data.split_seed={data.get('split_seed')}`), so no track appears on both sides")


class Folder(Source):
    """A user's ``train/``, ``val/`` and optional ``test/`` folders, one subfolder per class."""

    name, dataset_id, title = "folder", "image-folder", "a user's image folder"

    def files(self, root: str) -> list[Path]:
        root_path = Path(root).expanduser()
        return [root_path / split for split in ("train", "val", "test") if (root_path / split).is_dir()]

    def decode(self, cfg: Mapping, seed: int) -> Splits:
        from gtsrb.data.folder import load_folder

        return load_folder(cfg["root"], cfg["image_size"], on_corrupt=cfg["on_corrupt"])

    def index(self, cfg: Mapping) -> Splits:
        from gtsrb.data.folder import folder_records

        return folder_records(cfg["root"])

    def validation(self, data: Mapping) -> str:
        return "the images of the data's own `val/` folder"


class Synthetic(Source):
    """Traffic signs rendered in memory (tests, the quickstart); with 43 classes, drawn like GTSRB's."""

    name, dataset_id, title = "synthetic", "synthetic-traffic-signs", "synthetic traffic signs rendered by this project"
    from_files = False

    def decode(self, cfg: Mapping, seed: int) -> Splits:
        from gtsrb.data.synthetic import make_synthetic

        sizes = {"train": cfg["train_per_class"], "val": cfg["val_per_class"], "test": cfg["test_per_class"]}
        splits = {split: make_synthetic(n, cfg["image_size"], seed=seed * 1000 + i, num_classes=cfg["num_classes"])
                  for i, (split, n) in enumerate(sizes.items()) if n > 0}
        return splits, list(GTSRB_CLASS_NAMES[: cfg["num_classes"]])

    def flip_map(self, cfg: Mapping) -> Sequence[int] | None:
        return gtsrb_hflip_map() if cfg["num_classes"] == 43 else None

    def validation(self, data: Mapping) -> str:
        return f"{data.get('val_per_class')} rendered images per class, from a random seed of their own"


SOURCES: dict[str, Source] = {source.name: source for source in (GTSRB(), Synthetic(), Folder())}
