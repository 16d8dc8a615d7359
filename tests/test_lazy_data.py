"""``data.in_memory=false``: images decoded file by file in the DataLoader, identical to the in-memory path."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import ImageFile

from gtsrb.cli import CONF_DIR, preflight, report_user_errors
from gtsrb.config import register_evaluate_config, validate
from gtsrb.data import gtsrb as gtsrb_reader
from gtsrb.data.datamodule import AugmentedSamples, TrafficSignDataModule
from gtsrb.data.imageset import ImageSet, LazyImageSet
from gtsrb.errors import UserError
from gtsrb.evaluation.run import evaluate
from gtsrb.training import train
from test_batch_augment import aug_cfg

GTSRB = {"source": "gtsrb", "image_size": 6, "val_fraction": 0.25, "split_seed": 3, "roi_crop": True}
FOLDER = {"source": "folder", "image_size": 16}


def pair(data: dict, augmentation: str | None = None, **values) -> tuple[TrafficSignDataModule, TrafficSignDataModule]:
    """The same settings set up in memory and lazily, both on the per-sample path."""
    settings = {"augment_on": "sample", "batch_size": 4, **data, **values}
    aug = aug_cfg(augmentation) if augmentation else None
    modules = (TrafficSignDataModule(settings, aug), TrafficSignDataModule({**settings, "in_memory": False}, aug))
    for dm in modules:
        dm.setup()
    return modules


def lazy_images(data: LazyImageSet) -> torch.Tensor:
    return torch.stack([data.image(i) for i in range(len(data))])


def assert_same_splits(memory: TrafficSignDataModule, lazy: TrafficSignDataModule) -> None:
    assert set(memory.splits) == set(lazy.splits)
    for name, decoded in memory.splits.items():
        assert isinstance(decoded, ImageSet) and isinstance(lazy.splits[name], LazyImageSet)
        assert torch.equal(lazy.splits[name].labels, decoded.labels)
        assert (lazy.splits[name].groups is None) == (decoded.groups is None)
        if decoded.groups is not None:
            assert torch.equal(lazy.splits[name].groups, decoded.groups)
        assert torch.equal(lazy_images(lazy.splits[name]), decoded.images)


def test_lazy_gtsrb_gives_the_in_memory_images_labels_and_track_split(gtsrb_root, monkeypatch):
    memory = TrafficSignDataModule({**GTSRB, "root": str(gtsrb_root), "augment_on": "sample"})
    memory.setup()

    def no_decoding(*args, **kwargs):
        raise AssertionError("setup decoded an image although data.in_memory=false")

    with monkeypatch.context() as patch:
        patch.setattr(gtsrb_reader, "_decode_one", no_decoding)
        lazy = TrafficSignDataModule({**GTSRB, "root": str(gtsrb_root), "augment_on": "sample", "in_memory": False})
        lazy.setup()
    assert lazy.num_classes == memory.num_classes == 43 and lazy.class_names == memory.class_names
    assert lazy.flip_map == memory.flip_map is not None and lazy.has_split("test")
    assert_same_splits(memory, lazy)
    # the split itself: the same tracks are held out, and whole tracks at that
    val_tracks = set(lazy.splits["val"].groups.tolist())
    assert val_tracks and not val_tracks & set(lazy.splits["train"].groups.tolist())
    other = TrafficSignDataModule({**GTSRB, "root": str(gtsrb_root), "split_seed": 4, "in_memory": False})
    other.setup()
    assert set(other.splits["val"].groups.tolist()) != val_tracks  # the comparison above could tell splits apart


@pytest.mark.parametrize("preprocess", ["none", "autocontrast", "equalize", "clahe"])
def test_lazy_folder_gives_the_in_memory_images_and_labels(image_folder, preprocess):
    memory, lazy = pair({**FOLDER, "root": str(image_folder)}, preprocess=preprocess)
    assert lazy.class_names == memory.class_names == ["bus_stop", "crossing", "parking"]
    assert_same_splits(memory, lazy)
    assert torch.equal(lazy.splits["val"].images[3], memory.splits["val"].images[3])  # indexed like the tensor
    assert lazy.splits["val"].images[[]].shape == memory.splits["val"].images[[]].shape
    assert torch.equal(lazy.splits["val"].images[2:5], memory.splits["val"].images[2:5])
    assert torch.equal(lazy.splits["val"].images[torch.tensor([5, 0])], memory.splits["val"].images[[5, 0]])


def test_lazy_training_and_eval_batches_equal_the_in_memory_ones(image_folder):
    memory, lazy = pair({**FOLDER, "root": str(image_folder)}, "strong", preprocess="autocontrast",
                        balanced_sampling=True)
    for index in range(len(memory.splits["train"])):  # the shared per-sample code path, same random parameters
        torch.manual_seed(index)
        image, label = AugmentedSamples(memory.splits["train"], memory.augment)[index]
        torch.manual_seed(index)
        lazy_image, lazy_label = AugmentedSamples(lazy.splits["train"], lazy.augment)[index]
        assert torch.equal(lazy_image, image) and lazy_label == label
    batches = []
    for dm in (memory, lazy):  # the whole loaders: sampler and augmentation draw the same numbers
        torch.manual_seed(0)
        batches.append([*dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()])
    assert len(batches[0]) == len(batches[1]) == 3 + 2 + 2
    for (images, labels), (lazy_images_, lazy_labels) in zip(*batches):
        assert lazy_images_.dtype == torch.float32 and torch.equal(lazy_images_, images)
        assert torch.equal(lazy_labels, labels)


@pytest.fixture
def damaged_folder(image_folder, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the folder data with an unreadable val image and a truncated train image."""
    root = tmp_path / "images"
    shutil.copytree(image_folder, root)
    garbage = root / "val" / "crossing" / "img1.png"
    garbage.write_bytes(b"this is not an image")
    truncated = root / "train" / "parking" / "img2.png"
    truncated.write_bytes(truncated.read_bytes()[:400])
    return root, garbage, truncated


def lazy_module(root: Path, **values) -> TrafficSignDataModule:
    dm = TrafficSignDataModule({**FOLDER, "root": str(root), "augment_on": "sample", "in_memory": False,
                                "batch_size": 4, **values})
    dm.setup()  # lists the files only: the damage shows when an image is read
    return dm


def test_lazy_corrupt_file_stops_with_one_line_naming_it(damaged_folder, monkeypatch):
    root, garbage, truncated = damaged_folder
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # some other library did this
    dm = lazy_module(root, on_corrupt="error")
    with pytest.raises(UserError) as info:
        list(dm.val_dataloader())
    message = str(info.value)
    assert str(garbage) in message and "data.on_corrupt=skip" in message and "\n" not in message
    with pytest.raises(UserError, match=re.escape(str(truncated))):  # truncation is refused as in memory
        list(dm.train_dataloader())


def test_lazy_corrupt_file_in_a_worker_process_still_reaches_the_user_as_one_line(damaged_folder, capsys):
    root, garbage, _ = damaged_folder
    dm = lazy_module(root, on_corrupt="error", num_workers=1)
    with pytest.raises(SystemExit) as info:
        report_user_errors(lambda: list(dm.val_dataloader()))()
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot decode image ") and str(garbage) in lines[0]


def test_lazy_skip_names_the_file_and_keeps_the_other_samples(damaged_folder, caplog):
    root, garbage, truncated = damaged_folder
    dm = lazy_module(root, on_corrupt="skip", batch_size=64)
    with caplog.at_level(logging.WARNING, logger="gtsrb.data.gtsrb"):
        (val_images, val_labels), = dm.val_dataloader()
        train_labels = torch.cat([labels for _, labels in dm.train_dataloader()])
    assert val_labels.tolist() == [0, 0, 1, 2, 2]  # img1 of class 1 is gone
    assert sorted(train_labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 3
    assert str(garbage) in caplog.text and str(truncated) in caplog.text
    memory = TrafficSignDataModule({**dm.cfg, "in_memory": True})  # skips the same files, decoding up front
    memory.setup()
    (memory_images, memory_labels), = memory.val_dataloader()
    assert torch.equal(val_images, memory_images) and torch.equal(val_labels, memory_labels)  # nothing shifted
    with pytest.raises(UserError, match=re.escape(str(garbage))):  # evaluation cannot leave it out: labels would shift
        dm.splits["val"].images[:]


def test_lazy_batch_with_every_file_skipped_is_left_out(damaged_folder):
    root, _, _ = damaged_folder
    for name in ("img0.png", "img1.png"):  # the whole first val batch: both bus_stop images
        (root / "val" / "bus_stop" / name).write_bytes(b"broken")
    dm = lazy_module(root, on_corrupt="skip", batch_size=2)
    batches = [labels.tolist() for _, labels in dm.val_dataloader()]
    assert batches == [[1], [2, 2]]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["data.augment_on=batch"], ["data.in_memory=false", "data.augment_on=sample"]),
    (["data.augment_on=sample", "data.cache_dir=/tmp/cache"], ["data.in_memory=false", "data.cache_dir=null"]),
    (["data=synthetic", "data.augment_on=sample"], ["data.in_memory=false", "data.source=synthetic"]),
], ids=["batched", "cache", "synthetic"])
def test_meaningless_in_memory_combinations_fail_with_one_line(make_cfg, image_folder, overrides, expected):
    cfg = make_cfg("data=folder", f"data.root={image_folder}", "data.in_memory=false", *overrides)
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert all(text in str(info.value) for text in expected) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="data.in_memory=false"):  # the command line checks it before starting
        preflight(["data=folder", f"data.root={image_folder}", "data.in_memory=false", *overrides], "train")
    validate(make_cfg("data=folder", f"data.root={image_folder}", "data.in_memory=false", "data.augment_on=sample"))


def test_lazy_data_module_built_by_hand_refuses_batched_loading(image_folder):
    dm = TrafficSignDataModule({**FOLDER, "root": str(image_folder), "in_memory": False, "augment_on": "batch"})
    dm.setup()  # evaluation reads the splits directly and needs no loader
    with pytest.raises(UserError, match="data.augment_on=sample"):
        dm.train_dataloader()


def test_lazy_folder_trains_and_evaluates_like_in_memory(make_cfg, image_folder, one_thread, tmp_path):
    cfg = make_cfg("data=folder", f"data.root={image_folder}", "data.in_memory=false", "data.augment_on=sample",
                   "data.num_workers=0", "data.image_size=32", "data.batch_size=4", "callbacks=gradcam",
                   "trainer.fast_dev_run=false", "trainer.max_epochs=1")
    assert 0.0 <= train(cfg) <= 1.0
    run = Path(cfg.output_dir)
    report = json.loads((run / "metrics.json").read_text())
    assert report["config"]["data"]["in_memory"] is False and set(report["final"]) == {"val", "test"}
    assert list((run / "gradcam").glob("epoch_*/grid.png"))  # the callback read the lazy val split

    register_evaluate_config()
    metrics = {}
    for in_memory in (False, True):  # the checkpoint says lazy; the override decodes up front
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            eval_cfg = compose("evaluate", overrides=[f"ckpt_path={run}", f"output_dir={tmp_path / str(in_memory)}",
                                                      f"data.in_memory={in_memory}", "gallery_size=2",
                                                      "fgsm_epsilons=[0.01]", "device=cpu"])
        metrics[in_memory] = evaluate(eval_cfg)
        assert metrics[in_memory]["config"]["data"]["in_memory"] is in_memory
    for key in ("metrics", "temperature", "fgsm", "num_images"):
        assert metrics[False][key] == metrics[True][key]


@pytest.mark.parametrize("split", [{"val_split": "tracks"}, {"folds": 2, "fold": 1}])
def test_the_validation_protocol_reaches_both_loading_paths_and_the_cache_key(gtsrb_root, tmp_path, split):
    """data.val_split / folds choose other tracks, in memory and lazily alike, and a cached dataset of another
    protocol is not reused."""
    settings = {**GTSRB, "root": str(gtsrb_root), "augment_on": "sample", "cache_dir": str(tmp_path / "cache")}
    default = TrafficSignDataModule(settings)
    default.setup()
    memory = TrafficSignDataModule({**settings, **split})
    memory.setup()  # the cache now holds the default split: this must decode its own
    lazy = TrafficSignDataModule({**settings, **split, "in_memory": False, "cache_dir": None})
    lazy.setup()
    assert torch.equal(memory.splits["val"].groups, lazy.splits["val"].groups)
    assert set(memory.splits["val"].groups.tolist()) != set(default.splits["val"].groups.tolist())
    assert not set(memory.splits["val"].groups.tolist()) & set(memory.splits["train"].groups.tolist())
