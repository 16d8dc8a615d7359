"""Two-phase fine-tuning, built on Lightning's :class:`BackboneFinetuning`.

Phase 1 trains only the new classifier head on a frozen pretrained backbone;
from ``unfreeze_at_epoch`` on, phase 2 also trains the last ``unfreeze_blocks``
backbone blocks (all of them by default), at the backbone/head learning-rate
ratio that the LightningModule gave their parameter group.

The stock callback has four traps, each avoided here:

* It adds the backbone's parameter group when phase 2 starts. Schedulers
  capture per-group state when built, so OneCycleLR and ReduceLROnPlateau
  crash on the new group and LambdaLR never schedules it. Here all groups
  exist from the start (see :mod:`gtsrb.optim`); phases only flip
  ``requires_grad``, and the optimizer skips parameters without gradients.
* Its freeze leaves frozen BatchNorm layers in train mode, normalising with
  batch statistics instead of the pretrained running statistics. Here they
  are put in eval mode before every training batch (Lightning switches the
  whole model back to train mode after each validation).
* After resuming from a checkpoint past the unfreeze epoch, it leaves the
  backbone frozen. Here the phase is a function of the epoch alone and is
  applied again when fitting starts.
* Under DDP the set of parameters that require gradients must not change
  after the model is wrapped. With more than one process the frozen
  parameters keep ``requires_grad`` and have their gradients dropped before
  each optimizer step instead.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gtsrb.models.factory import parameter_blocks

log = logging.getLogger(__name__)

NEVER = 1 << 30


class TwoPhaseFinetuning(BackboneFinetuning):
    def __init__(self, unfreeze_at_epoch: int | None = 1, unfreeze_blocks: int | None = None,
                 freeze_bn_stats: bool = True, mask_gradients: bool | None = None) -> None:
        """``unfreeze_at_epoch=None`` keeps the backbone frozen for good (a linear probe).

        ``mask_gradients`` forces the DDP-safe way of freezing (default: only
        with more than one process).
        """
        super().__init__(unfreeze_backbone_at_epoch=NEVER if unfreeze_at_epoch is None else unfreeze_at_epoch,
                         train_bn=not freeze_bn_stats)
        self.unfreeze_blocks = unfreeze_blocks
        self.mask_gradients = mask_gradients
        self._blocks: list[list[nn.Module]] = []
        self._frozen_count = -1  # number of leading blocks frozen right now

    # -- which blocks are frozen ------------------------------------------------
    def frozen_blocks(self, epoch: int) -> int:
        """How many leading backbone blocks are frozen during ``epoch``."""
        total = len(self._blocks)
        if epoch < self.unfreeze_backbone_at_epoch:
            return total
        trainable = total if self.unfreeze_blocks is None else min(self.unfreeze_blocks, total)
        return total - trainable

    def frozen_modules(self) -> list[nn.Module]:
        return [m for block in self._blocks[: self._frozen_count] for m in block]

    def _apply_phase(self, pl_module: L.LightningModule, epoch: int) -> None:
        frozen = self.frozen_blocks(epoch)
        if frozen == self._frozen_count:
            return
        for k, block in enumerate(self._blocks):
            for module in block:
                for param in module.parameters(recurse=False):
                    param.requires_grad = self.mask_gradients or k >= frozen
        if self._frozen_count >= 0 or frozen < len(self._blocks):
            log.info("epoch %d: training the head and the last %d of %d backbone blocks",
                     epoch, len(self._blocks) - frozen, len(self._blocks))
        self._frozen_count = frozen

    # -- BackboneFinetuning hooks -----------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.mask_gradients is None:
            self.mask_gradients = trainer.world_size > 1
        self._blocks, _ = parameter_blocks(pl_module.model)
        super().setup(trainer, pl_module, stage)  # calls freeze_before_training

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self._frozen_count = -1
        self._apply_phase(pl_module, epoch=0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Nothing to restore into the optimizer (its groups never change); a resumed
        # run starts in the phase of the epoch it resumes at.
        self._apply_phase(pl_module, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer) -> None:
        self._apply_phase(pl_module, epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if not self.train_bn:
            for module in self.frozen_modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.mask_gradients:
            for module in self.frozen_modules():
                for param in module.parameters(recurse=False):
                    param.grad = None
