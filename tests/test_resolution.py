"""resolution=progressive: training batches shrink early and grow to data.image_size; validation never shrinks."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from resuming import fit_resumed_mid_epoch

from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.errors import UserError
from gtsrb.module import TrafficSignClassifier
from gtsrb.resolution import ProgressiveResizing
from gtsrb.training import train


def test_size_rises_in_steps_from_start_to_end_epoch_and_then_holds():
    assert [ProgressiveResizing(24, 32, 0, 4, 4).size_at(e) for e in range(6)] == [24, 24, 28, 28, 32, 32]
    assert [ProgressiveResizing(16, 32, 2, 4, 8).size_at(e) for e in range(6)] == [16, 16, 16, 24, 32, 32]
    assert [ProgressiveResizing(32, 32, 0, 0).size_at(e) for e in range(2)] == [32, 32]  # no ramp: always full


class _SizeSpy(L.Callback):
    """The image size of every batch the model is given, by stage and epoch."""

    def __init__(self) -> None:
        self.train: dict[int, set[int]] = {}
        self.val: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.setdefault(trainer.current_epoch, set()).add(tuple(batch[0].shape[-2:]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.add(tuple(batch[0].shape[-2:]))


@pytest.mark.parametrize("augment_on", ["batch", "sample"])
def test_training_batches_follow_the_schedule_and_validation_stays_full_size(make_cfg, one_thread, augment_on):
    cfg = make_cfg("data.image_size=32", f"data.augment_on={augment_on}", "augmentation=standard")
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    datamodule.setup("fit")
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names)
    spy = _SizeSpy()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[ProgressiveResizing(16, 32, 0, 2, 8), spy])
    trainer.fit(model, datamodule=datamodule)

    assert spy.train == {0: {(16, 16)}, 1: {(24, 24)}, 2: {(32, 32)}}
    assert spy.val == {(32, 32)}
    assert datamodule.train_image_size is None  # a later fit or predict on this data module sees full size


def test_a_run_resumed_inside_a_small_epoch_trains_the_rest_of_it_small(make_cfg, one_thread, tmp_path):
    """Lightning calls no on_train_epoch_start for the epoch a mid-epoch checkpoint resumes in."""
    cfg = make_cfg("data.image_size=32", "augmentation=none")
    spy = _SizeSpy()  # step 7 is the third batch of epoch 1, which trains at 24 px
    fit_resumed_mid_epoch(cfg, lambda: ProgressiveResizing(16, 32, 0, 2, 8), spy, tmp_path, at_step=7)
    assert spy.train == {1: {(24, 24)}, 2: {(32, 32)}}


def test_a_smaller_batch_is_the_whole_image_scaled_not_a_crop(make_cfg):
    """An image whose left quarter is black keeps a black left quarter at half the size (a crop would not)."""
    cfg = make_cfg("augmentation=none")
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    datamodule.setup("fit")
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    images[..., :8] = 0
    datamodule.train_image_size = 16
    resized, labels = datamodule.augment_batch(images, torch.tensor([0, 1]))
    assert resized.shape == (2, 3, 16, 16) and labels.tolist() == [0, 1]
    assert resized[..., :3].amax() < 0 < resized[..., 5:].amin()  # normalised: black below the mean, white above


def test_train_runs_the_ramp_and_reports_each_epochs_size(make_cfg, one_thread):
    cfg = make_cfg("resolution=progressive", "resolution.min_size=16", "resolution.end_epoch=2",
                   "resolution.multiple_of=8", "trainer.fast_dev_run=false", "trainer.max_epochs=3",
                   "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "callbacks.progress_bar=null",
                   "+trainer.enable_progress_bar=false", "test=false")
    train(cfg)
    history = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["history"]
    assert [row["train/image_size"] for row in history] == [16.0, 24.0, 32.0]


@pytest.mark.parametrize(("overrides", "names"), [
    (["resolution.min_size=40"], "resolution.min_size=40"),
    (["resolution.end_epoch=3", "trainer.max_epochs=3"], "resolution.end_epoch=3"),
    (["resolution.start_epoch=3", "resolution.end_epoch=1"], "resolution.start_epoch=3"),
    (["model=resnet18", "model.pretrained=false", "resolution.min_size=16"], "resolution.min_size=16 is too small"),
])
def test_a_ramp_that_cannot_work_is_refused_before_training(make_cfg, overrides, names):
    cfg = make_cfg("resolution=progressive", "trainer.fast_dev_run=false", "trainer.max_epochs=5", *overrides)
    with pytest.raises(UserError, match=names):
        train(cfg)


def test_an_epoch_count_planned_below_the_ramp_stops_before_training(make_cfg):
    """time_budget_s sets the epochs after the config was checked; the callback checks again when fit starts."""
    cfg = make_cfg()
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, ["a", "b"])
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[ProgressiveResizing(16, 32, 0, 2)])
    with pytest.raises(UserError, match="resolution.end_epoch=2 leaves no epoch at full size.*end_epoch=1"):
        trainer.fit(model, datamodule=datamodule)
