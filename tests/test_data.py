"""Label-safe augmentation, class-balanced sampling, image folders, and seeded reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gtsrb.classes import GTSRB_CLASS_NAMES, gtsrb_hflip_map
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.data.folder import load_folder
from gtsrb.errors import UserError
from gtsrb.training import train


def test_class_names_and_mirror_map_are_consistent():
    assert len(GTSRB_CLASS_NAMES) == 43
    names, mapping = GTSRB_CLASS_NAMES, gtsrb_hflip_map()
    for c, m in enumerate(mapping):
        if m >= 0:
            assert mapping[m] == c  # flipping twice gives the sign back
        if m not in (-1, c):  # mirror twins differ only by left/right in their names
            assert names[c].replace("left", "X").replace("right", "X") == names[m].replace("left", "X").replace("right", "X")
    assert mapping[names.index("Turn left ahead")] == names.index("Turn right ahead")
    assert mapping[names.index("Stop")] == -1


def test_balanced_sampling_evens_out_class_frequencies():
    dm = TrafficSignDataModule({"source": "synthetic", "balanced_sampling": True, "train_per_class": 1,
                                "val_per_class": 0, "test_per_class": 0, "num_classes": 4})
    dm.setup()
    labels = torch.tensor([0] * 90 + [1] * 6 + [2] * 3 + [3] * 1)
    counts = torch.bincount(labels[list(dm._balanced_sampler(labels))], minlength=4)
    assert counts.min() > 10  # without balancing class 3 would appear about once


def test_folder_dataset_reads_every_split_and_class(image_folder):
    splits, classes = load_folder(str(image_folder), image_size=16)
    assert classes == ["bus_stop", "crossing", "parking"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert splits["train"].images.shape[1:] == (3, 16, 16)
    assert torch.equal(torch.bincount(splits["val"].labels), torch.tensor([2, 2, 2]))


def test_folder_with_a_class_that_train_lacks_is_rejected(image_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "val" / "crossing").rename(root / "val" / "crosing")
    with pytest.raises(UserError, match="crosing"):
        load_folder(str(root), image_size=16)


def test_same_seed_gives_the_same_metrics(make_cfg, tmp_path):
    overrides = ["trainer.fast_dev_run=false", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                 "augmentation=standard", "mixup=cutmix"]
    scores = []
    for attempt in range(2):
        cfg = make_cfg(*overrides, f"output_dir={tmp_path / str(attempt)}")
        train(cfg)
        scores.append(json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["final"])
    assert scores[0] == scores[1]
    cfg = make_cfg(*overrides, "seed=7", f"output_dir={tmp_path / 'other'}")
    train(cfg)
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["final"] != scores[0]
