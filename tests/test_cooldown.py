"""augmentation.cooldown_epochs: the last epochs train with the cooled augmentation, the others with the full one."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from resuming import fit_resumed_mid_epoch

from gtsrb.config import cooled_augmentation
from gtsrb.cooldown import AugmentationCooldown, cooled_epochs
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.errors import UserError
from gtsrb.module import TrafficSignClassifier
from gtsrb.training import train


def test_the_cooldown_changes_only_the_listed_settings(make_cfg):
    cfg = make_cfg("augmentation=strong", "augmentation.cooldown_epochs=2", "+augmentation.cooldown.rotation=5")
    cooled = cooled_augmentation(cfg.augmentation)
    assert (cooled.auto_augment, cooled.random_erasing, cooled.rotation) == (None, 0.0, 5.0)
    changed = {"auto_augment", "random_erasing", "rotation", "cooldown", "cooldown_epochs"}
    unchanged = set(cfg.augmentation) - changed
    assert "hue" in unchanged and {k: cooled[k] for k in unchanged} == {k: cfg.augmentation[k] for k in unchanged}
    assert (cooled.cooldown_epochs, dict(cooled.cooldown)) == (0, {})  # nothing left to cool
    assert cfg.augmentation.auto_augment == "trivialaugment"  # the run's own config is left as it was


def test_the_last_epochs_cool_down_counted_from_the_end():
    cooldown = AugmentationCooldown({"cooldown_epochs": 2, "cooldown": {"random_erasing": 0.0}})
    assert [cooldown.cools(epoch, 5) for epoch in range(5)] == [False, False, False, True, True]
    assert [cooldown.cools(epoch, 3) for epoch in range(3)] == [False, True, True]


@pytest.mark.parametrize(("cooldown", "cooled"), [
    (0.25, {2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2, 28: 7}),  # a quarter, rounded half up, at least one
    (0.9, {2: 1, 3: 2, 8: 7, 10: 9}),  # a share never covers every epoch: one keeps the full augmentation
    (3, {4: 3, 8: 3, 28: 3}),  # a count is a count
])
def test_a_share_of_the_run_cools_that_share_of_the_epochs_it_trains(cooldown, cooled):
    assert {epochs: cooled_epochs(cooldown, epochs) for epochs in cooled} == cooled
    callback = AugmentationCooldown({"cooldown_epochs": cooldown, "cooldown": {"random_erasing": 0.0}})
    assert [epoch for epoch in range(8) if callback.cools(epoch, 8)] == list(range(8 - cooled[8], 8))


def test_gtsrb_cpu_cools_a_quarter_of_whatever_its_budget_plans(make_cfg):
    """The recipe's budget plans 3 to 8 epochs depending on the machine: 1 cooled epoch up to 5, 2 from 6."""
    cfg = make_cfg("experiment=gtsrb_cpu")
    callback = AugmentationCooldown(cfg.augmentation)
    assert {epochs: sum(callback.cools(e, epochs) for e in range(epochs)) for epochs in (3, 5, 6, 8)} == \
        {3: 1, 5: 1, 6: 2, 8: 2}
    assert cfg.trainer.max_epochs == 8
    long = make_cfg("experiment=gtsrb_cpu_long").augmentation.cooldown_epochs
    assert (long, type(long)) == (4, int)  # its own count, not the share (a float 4.0 would be refused)


class _AugmentSpy(L.Callback):
    """The augmentation each training batch was made with, by epoch, and whether its images were erased."""

    def __init__(self) -> None:
        self.settings: dict[int, set[tuple]] = {}
        self.erased: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        aug = trainer.datamodule.augment.aug
        self.settings.setdefault(trainer.current_epoch, set()).add((aug.auto_augment, aug.random_erasing))
        # erasing fills a box with 0 in every channel (the mean colour after normalisation); no uint8 level
        # normalises to exactly 0 in all three channels, so without erasing no pixel is 0 in all of them
        zero_pixels = (batch[0] == 0).all(dim=1).flatten(1).sum(dim=1)
        self.erased[trainer.current_epoch] = self.erased.get(trainer.current_epoch, False) or bool(zero_pixels.any())


def test_training_batches_follow_the_cooldown_and_the_full_augmentation_comes_back(make_cfg, one_thread):
    cfg = make_cfg("augmentation=none", "augmentation.random_erasing=1.0", "augmentation.cooldown_epochs=1",
                   "+augmentation.cooldown.random_erasing=0.0")
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    datamodule.setup("fit")
    full = datamodule.augment
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names)
    spy = _AugmentSpy()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[AugmentationCooldown(cfg.augmentation), spy])
    trainer.fit(model, datamodule=datamodule)

    assert spy.settings == {0: {(None, 1.0)}, 1: {(None, 1.0)}, 2: {(None, 0.0)}}
    assert spy.erased == {0: True, 1: True, 2: False}
    assert datamodule.augment is full  # a later fit on this data module starts with the full augmentation


def test_a_run_resumed_inside_a_cooldown_epoch_trains_the_rest_of_it_cooled(make_cfg, one_thread, tmp_path):
    """Lightning calls no on_train_epoch_start for the epoch a mid-epoch checkpoint resumes in."""
    cfg = make_cfg("augmentation=none", "augmentation.random_erasing=1.0", "augmentation.cooldown_epochs=1",
                   "+augmentation.cooldown.random_erasing=0.0")

    spy = _AugmentSpy()  # step 10 is the second batch of epoch 2, the cooldown epoch
    fit_resumed_mid_epoch(cfg, lambda: AugmentationCooldown(cfg.augmentation), spy, tmp_path, at_step=10)
    assert spy.settings == {2: {(None, 0.0)}} and spy.erased == {2: False}


def test_fast_dev_run_tries_the_full_augmentation(make_cfg, one_thread):
    cfg = make_cfg("augmentation=strong", "augmentation.cooldown_epochs=3")
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    datamodule.setup("fit")
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names)
    spy = _AugmentSpy()
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[AugmentationCooldown(cfg.augmentation), spy])
    trainer.fit(model, datamodule=datamodule)
    assert spy.settings == {0: {("trivialaugment", 0.25)}}


def test_train_reports_which_epochs_cooled_down(make_cfg, one_thread):
    cfg = make_cfg("augmentation=strong", "augmentation.cooldown_epochs=1", "trainer.fast_dev_run=false",
                   "trainer.max_epochs=3", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                   "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false", "test=false")
    train(cfg)
    history = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["history"]
    assert [row["train/augmentation_cooldown"] for row in history] == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(("overrides", "names"), [
    (["+augmentation.cooldown.rotations=5"], r"cooldown.rotations is not an augmentation setting.*rotation"),
    (["+augmentation.cooldown.rotation=90"], r"augmentation.cooldown.rotation=90.0 is out of range"),
    (["+augmentation.cooldown.auto_augment=autoaugment"], r"augmentation.cooldown.auto_augment=autoaugment is not"),
    (["+augmentation.cooldown.scale=[1.2,0.8]"], r"augmentation.cooldown.scale=\[1.2, 0.8\] must be"),
    (["+augmentation.cooldown.rotation=abc"], r"augmentation.cooldown.rotation: Value 'abc'"),
    (["data.augment_on=sample"], r"data.augment_on=sample cannot.*use data.augment_on=batch"),
    (["trainer.max_epochs=2"], r"cooldown_epochs=2 leaves no epoch of full augmentation in the 2 .*"
                               r"at most augmentation.cooldown_epochs=1 or at least 3 epochs"),
    (["augmentation.cooldown_epochs=0.5", "trainer.max_epochs=1"], r"cooldown_epochs=0.5 leaves no epoch.*at least 2"),
    (["augmentation.cooldown_epochs=1.5"], r"cooldown_epochs=1.5: a float is a share.*augmentation.cooldown_epochs=2"),
    (["augmentation=standard"], r"augmentation=standard: augmentation.cooldown lists no change.*\+augmentation"),
    (["augmentation.cooldown_epochs=0", "+augmentation.cooldown.rotations=5"], r"cooldown.rotations is not"),
])
def test_a_cooldown_that_cannot_work_is_refused_before_training(make_cfg, overrides, names):
    cfg = make_cfg("augmentation=strong", "augmentation.cooldown_epochs=2", "trainer.fast_dev_run=false",
                   "trainer.max_epochs=5", *overrides)
    with pytest.raises(UserError, match=names):
        train(cfg)
    assert not (Path(cfg.output_dir) / "checkpoints").exists()
