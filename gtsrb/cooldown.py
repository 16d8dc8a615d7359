"""Augmentation cooldown: the last epochs of a run train on milder augmentation than the rest.

Strong augmentation (TrivialAugment, random erasing) keeps a long schedule learning, but the images it makes are
further from the ones the model will be tested on than the standard pose and lighting changes are. He et al.
("Data Augmentation Revisited", 2019) closed that gap by refining on less augmented images for the last epochs;
YOLOv8's ``close_mosaic`` and timm's ``--mixup-off-epoch`` do the same for mosaic and MixUp. Here
``augmentation.cooldown_epochs=N`` trains the last N epochs with the changes listed under
``augmentation.cooldown`` (``conf/augmentation/strong.yaml`` lists the ones that turn it back into ``standard``:
no auto-augment, no erasing). As with Lightning's ``limit_train_batches``, an int counts and a float between 0 and
1 is a share: ``cooldown_epochs=0.25`` cools the last quarter of the epochs the run trains, rounded half up, at
least one.

The recipes go further and keep only the label-safe mirror. ``gtsrb_cpu_long`` cools its last 4 epochs (+0.08
points on five folds, resumed from shared checkpoints, where strong's own cooldown gave +0.03). Even the 5-minute
``gtsrb_cpu``, whose standard augmentation is milder, gains from it: +0.08 on five folds over three seeds for its
last epoch of 5. It gives the cooldown as a share, a quarter, because its time budget plans 3 to 8 epochs
depending on the machine: of 8 epochs, the last 2 read +0.03 points over the last 1 (standard error 0.01); of 5,
2 were no better than 1 (benchmarks/README.md, ``benchmarks/late_lever.py``).

How, and the traps it avoids:

* The augmentation is a function of the epoch alone, set when training starts as well as at each epoch: a run
  resumed in the middle of an epoch (``interrupted.ckpt``, gtsrb/preemption.py) starts there, where Lightning
  calls no ``on_train_epoch_start``, and still trains the rest of that epoch with the augmentation it had.
* "The last N" (or the share) counts from ``trainer.max_epochs`` when training starts, after ``time_budget_s``
  has planned the epochs, so a budgeted run cools down in the epochs it will actually train. The budget plans at
  least one epoch more than the cooldown (:func:`fewest_epochs`), over budget if need be (gtsrb/budget.py); a
  ``trainer.max_epochs`` the cooldown would cover entirely is refused then, with the fix. A share always leaves
  one epoch of full augmentation, so it needs only two. A run that stops before ``trainer.max_epochs`` (early
  stopping, a pruned trial, ``max_steps``) may end before its cooldown: the recipes turn early stopping off, and a
  warning says so when it is on.
* ``fast_dev_run`` (one batch) is a smoke test of the augmentation most epochs use, the full one.
* Only the batched path (``data.augment_on=batch``) can change it between epochs: the per-sample loader holds the
  augmentation it was built with (and its worker processes a copy of it), so that combination is refused when the
  config is checked, and again here for a data module built by hand.
* Validation, test and everything shipped never see training augmentation, so nothing else changes.
"""

from __future__ import annotations

import logging
import math

import lightning as L
from omegaconf import DictConfig

from gtsrb.config import cooled_augmentation
from gtsrb.data.batch_augment import BatchAugment
from gtsrb.errors import UserError

log = logging.getLogger(__name__)


def is_share(cooldown: int | float) -> bool:
    """Whether ``augmentation.cooldown_epochs`` is a share of the run (a float) rather than a count (an int)."""
    return isinstance(cooldown, float)


def cooled_epochs(cooldown: int | float, epochs: int) -> int:
    """How many of a run's ``epochs`` cool down: the count itself, or the share rounded half up, at least one and
    never all of them (a share cannot know the epoch count it will meet, so it leaves one of full augmentation)."""
    if not is_share(cooldown):
        return cooldown
    return max(1, min(epochs - 1, math.floor(cooldown * epochs + 0.5)))


def fewest_epochs(cooldown: int | float) -> int:
    """The fewest epochs a run with this cooldown can train: the cooled ones and one of full augmentation before
    (one with no cooldown, ``0``)."""
    return 2 if is_share(cooldown) else cooldown + 1


class AugmentationCooldown(L.Callback):
    def __init__(self, augmentation: DictConfig | dict) -> None:
        self.cooled = cooled_augmentation(augmentation)
        self.cooldown = augmentation["cooldown_epochs"]  # a count (int) or a share of the run (float)
        if not (0 < self.cooldown < 1 if is_share(self.cooldown) else self.cooldown >= 1):
            raise ValueError(f"cooldown_epochs={self.cooldown}: a cooldown needs at least one epoch (an int) "
                             "or a share of the run between 0 and 1 (a float)")
        self._full: BatchAugment | None = None  # the datamodule's own augmentation, put back outside the cooldown
        self._mild: BatchAugment | None = None

    def cools(self, epoch: int, max_epochs: int) -> bool:
        """Whether ``epoch`` (0-based) of a run of ``max_epochs`` trains with the cooled augmentation."""
        return epoch >= max_epochs - cooled_epochs(self.cooldown, max_epochs)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At least one epoch with the full augmentation. ``fast_dev_run`` (one batch) is a smoke test, and passes."""
        if trainer.fast_dev_run:
            return
        cooldown, epochs = self.cooldown, trainer.max_epochs
        if epochs is None or epochs < 0:
            raise UserError(f"augmentation.cooldown_epochs={cooldown} counts back from the last epoch, so it needs "
                            "trainer.max_epochs (or time_budget_s); set one, or augmentation.cooldown_epochs=0")
        if trainer.early_stopping_callback is not None:
            log.warning("augmentation.cooldown_epochs=%s counts back from epoch %d, and early stopping may end the run "
                        "before it: set callbacks.early_stopping=null to be sure it cools down", cooldown, epochs)
        if epochs < fewest_epochs(cooldown):
            fewer = "" if is_share(cooldown) else f"at most augmentation.cooldown_epochs={epochs - 1} or "
            raise UserError(f"augmentation.cooldown_epochs={cooldown} leaves no epoch of full augmentation in the "
                            f"{epochs} this run trains (trainer.max_epochs, or what time_budget_s planned); "
                            f"use {fewer}at least {fewest_epochs(cooldown)} epochs")
        log.info("augmentation cooldown: the last %d of %d epochs", cooled_epochs(cooldown, epochs), epochs)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also here: a run resumed mid-epoch gets no ``on_train_epoch_start`` for the epoch it resumes in."""
        self._apply(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cool = self._apply(trainer)
        pl_module.log("train/augmentation_cooldown", float(cool), on_step=False, on_epoch=True, sync_dist=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule is not None and self._full is not None:
            trainer.datamodule.augment = self._full
        self._full = self._mild = None  # a later fit may bring another data module

    def _apply(self, trainer: L.Trainer) -> bool:
        """Give the data module the augmentation of the current epoch; whether it is the cooled one."""
        datamodule = trainer.datamodule
        if datamodule is None or not isinstance(getattr(datamodule, "augment", None), BatchAugment):
            raise TypeError("AugmentationCooldown changes the augmentation of TrafficSignDataModule; "
                            "pass one to trainer.fit(datamodule=...)")
        if not datamodule.batched:
            raise UserError("augmentation.cooldown_epochs changes the augmentation between epochs, which "
                            "data.augment_on=sample cannot; use data.augment_on=batch")
        if self._full is None:
            self._full = datamodule.augment
            self._mild = BatchAugment(self.cooled, self._full.mean, self._full.std, datamodule.flip_map)
        cool = not trainer.fast_dev_run and self.cools(trainer.current_epoch, trainer.max_epochs)
        datamodule.augment = self._mild if cool else self._full
        return cool
