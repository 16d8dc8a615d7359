"""Progressive resizing: train the first epochs on smaller images, the last ones and every validation at full size.

A convolution's cost grows with the pixels it sees, so a training step at 24 px costs about 0.63x one at 32 px
for ``simple_cnn_stn`` on a 2-core CPU (``benchmarks/step_cost.py``). Early in training, while the learning rate
is high, the network learns coarse shapes that small images still show; the fine detail pays once the rate
anneals. fast.ai's DAWNBench entries, FFCV's ImageNet recipes and EfficientNetV2's progressive learning all spend
the saved time on more epochs. ``resolution=progressive`` does the same here. On GTSRB at 32 px it did not pay:
six epochs ramped from 24 px scored below five at full size that took as long (benchmarks/README.md), so no
recipe uses it; it is for larger images, whose early epochs have detail to spare.

How, and the traps it avoids:

* The size rises linearly from ``min_size`` at ``start_epoch`` to ``data.image_size`` at ``end_epoch``, in steps
  of ``multiple_of`` pixels (rounded down, as FFCV's ramp is rounded to its block size), and stays there. The
  size is a function of the epoch alone, set when training starts as well as at each epoch: a run resumed in the
  middle of an epoch (``interrupted.ckpt``, gtsrb/preemption.py) gets no ``on_train_epoch_start`` for it from
  Lightning, and still trains the rest of that epoch at the size it had.
* The images are scaled down on the training device after augmentation (antialiased bilinear, as
  ``transforms.v2.Resize`` does), by :meth:`~gtsrb.data.datamodule.TrafficSignDataModule.augment_batch`. The
  data, its cache and the augmentation stay at the full size: the same pose and lighting at any scale.
* Validation, test, the precision probe, the checkpoint and everything shipped see ``data.image_size`` only, so
  the last epochs must train at that size for BatchNorm's statistics to match it: ``end_epoch`` is checked to
  leave at least one full-size epoch when training starts, once the epoch count is known (``time_budget_s``
  may have planned fewer epochs than ``trainer.max_epochs``).
* The network must accept every size on the way: ``min_size`` is checked against the model's downsampling
  (``train.py`` says which size is too small before training starts).
"""

from __future__ import annotations

import lightning as L

from gtsrb.errors import UserError


class ProgressiveResizing(L.Callback):
    def __init__(self, min_size: int, max_size: int, start_epoch: int, end_epoch: int, multiple_of: int = 4) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"min_size={min_size} must be between 1 and max_size={max_size}")
        if not 0 <= start_epoch <= end_epoch:
            raise ValueError(f"start_epoch={start_epoch} must be between 0 and end_epoch={end_epoch}")
        self.min_size, self.max_size = min_size, max_size
        self.start_epoch, self.end_epoch, self.multiple_of = start_epoch, end_epoch, multiple_of

    def size_at(self, epoch: int) -> int:
        """The training image size of ``epoch`` (0-based)."""
        if epoch >= self.end_epoch:
            return self.max_size
        ramp = max(0, epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        size = self.min_size + ramp * (self.max_size - self.min_size)
        return max(self.min_size, int(size) // self.multiple_of * self.multiple_of)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At least one epoch at full size, whoever set the epochs (``trainer.max_epochs`` or ``time_budget_s``).
        ``fast_dev_run`` (one batch, one epoch) is a smoke test of the ramp's first size, and passes."""
        if not trainer.fast_dev_run and trainer.max_epochs is not None and 0 < trainer.max_epochs <= self.end_epoch:
            raise UserError(f"resolution.end_epoch={self.end_epoch} leaves no epoch at full size in the "
                            f"{trainer.max_epochs} epochs this run trains (trainer.max_epochs, or what time_budget_s "
                            f"planned); use resolution.end_epoch={max(0, trainer.max_epochs - 1)} or less, "
                            "or a larger budget")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also here: a run resumed mid-epoch gets no ``on_train_epoch_start`` for the epoch it resumes in."""
        self._apply(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        size = self._apply(trainer)
        pl_module.log("train/image_size", float(size), on_step=False, on_epoch=True, sync_dist=True)

    def _apply(self, trainer: L.Trainer) -> int:
        """Set the training image size of the current epoch on the data module, and return it."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "train_image_size"):
            raise TypeError("ProgressiveResizing resizes the batches of TrafficSignDataModule; "
                            "pass one to trainer.fit(datamodule=...)")
        size = self.size_at(trainer.current_epoch)
        datamodule.train_image_size = None if size == self.max_size else size
        return size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule is not None:
            trainer.datamodule.train_image_size = None
