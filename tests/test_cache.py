"""The on-disk data cache: reused while the source is unchanged, rebuilt when it changes, honest about bad files."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from test_gtsrb_data import build_torchvision_tree, write_ppm

from gtsrb.data import cache as cache_module
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.errors import UserError


@pytest.fixture
def tree(tmp_path):
    return build_torchvision_tree(tmp_path / "data")


def datamodule(root, cache_dir, **data):
    dm = TrafficSignDataModule({"source": "gtsrb", "root": str(root), "image_size": 16, "val_fraction": 0.25,
                                "cache_dir": str(cache_dir), **data})
    dm.setup()
    return dm


def cache_files(cache_dir):
    return sorted(p.name for p in cache_dir.glob("*.pt"))


def first_image(root):
    return sorted((root / "gtsrb/GTSRB/Training/00000").glob("*.ppm"))[0]


def test_second_setup_loads_the_cache_without_decoding(tree, tmp_path, monkeypatch):
    first = datamodule(tree, tmp_path / "cache")
    assert len(cache_files(tmp_path / "cache")) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is current")

    monkeypatch.setattr("gtsrb.data.gtsrb.load_gtsrb", no_decoding)
    second = datamodule(tree, tmp_path / "cache")
    for split in first.splits:
        assert torch.equal(first.splits[split].images, second.splits[split].images)
        assert torch.equal(first.splits[split].labels, second.splits[split].labels)
        assert split == "test" or torch.equal(first.splits[split].groups, second.splits[split].groups)
    assert second.class_names == first.class_names


def test_changed_source_file_rebuilds_the_cache(tree, tmp_path):
    before = datamodule(tree, tmp_path / "cache")
    image = first_image(tree)
    write_ppm(image, (250, 0, 250))  # new pixels, new size/mtime
    os.utime(image, ns=(1, 1))  # and an mtime that surely differs
    after = datamodule(tree, tmp_path / "cache")
    assert not torch.equal(before.splits["train"].images, after.splits["train"].images) or \
        not torch.equal(before.splits["val"].images, after.splits["val"].images)
    assert len(cache_files(tmp_path / "cache")) == 1  # rebuilt in place, no stale copy left beside it


def test_added_and_removed_files_rebuild_the_cache(tree, tmp_path):
    n = len(datamodule(tree, tmp_path / "cache").splits["train"]) + len(datamodule(tree, tmp_path / "cache").splits["val"])
    first_image(tree).unlink()
    assert len(datamodule(tree, tmp_path / "cache").splits["train"]) + \
        len(datamodule(tree, tmp_path / "cache").splits["val"]) == n - 1


def test_settings_that_shape_the_tensors_get_their_own_cache(tree, tmp_path):
    datamodule(tree, tmp_path / "cache")
    small = datamodule(tree, tmp_path / "cache", image_size=8)
    eq = datamodule(tree, tmp_path / "cache", preprocess="clahe")
    assert small.splits["train"].images.shape[-1] == 8
    assert len(cache_files(tmp_path / "cache")) == 3
    assert not torch.equal(eq.splits["train"].images, datamodule(tree, tmp_path / "cache").splits["train"].images)


def test_unreadable_cache_file_is_rebuilt(tree, tmp_path, caplog):
    datamodule(tree, tmp_path / "cache")
    path = tmp_path / "cache" / cache_files(tmp_path / "cache")[0]
    path.write_bytes(path.read_bytes()[:100])  # a cache cut short, e.g. by a full disk
    with caplog.at_level(logging.WARNING):
        dm = datamodule(tree, tmp_path / "cache")
    assert "unreadable" in caplog.text and len(dm.splits["train"]) > 0
    assert torch.load(path, weights_only=True)["version"] == cache_module.CACHE_VERSION


def test_no_temporary_files_are_left_behind(tree, tmp_path):
    datamodule(tree, tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]


def truncate_one(root):
    victim = first_image(root)
    write_ppm(victim, (1, 2, 3), size=32)
    victim.write_bytes(victim.read_bytes()[:1000])
    return victim


def test_corrupt_file_is_rejected_by_name_and_nothing_is_cached(tree, tmp_path):
    victim = truncate_one(tree)
    with pytest.raises(UserError, match=victim.name):
        datamodule(tree, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or cache_files(tmp_path / "cache") == []


def test_skipped_corrupt_file_is_named_again_when_the_cache_is_loaded(tree, tmp_path, caplog):
    clean = datamodule(shutil.copytree(tree, tmp_path / "clean"), tmp_path / "other")
    victim = truncate_one(tree)
    with caplog.at_level(logging.WARNING):
        skipped = datamodule(tree, tmp_path / "cache", on_corrupt="skip")
    assert victim.name in caplog.text
    def total(dm):
        return sum(len(dm.splits[s]) for s in ("train", "val"))

    assert total(skipped) == total(clean) - 1  # exactly the one bad file is missing
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        datamodule(tree, tmp_path / "cache", on_corrupt="skip")
    assert victim.name in caplog.text and "data cache" in caplog.text
