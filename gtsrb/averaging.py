"""Weight averaging: validate, keep and ship a moving average of the weights rather than the last step's.

``weight_averaging=ema`` adds :class:`EMA`, which is Lightning's
``EMAWeightAveraging``. That callback keeps an exponential moving average of
every parameter and buffer after each optimiser step, and swaps the average in
for each validation. So the monitored metric, the best checkpoint and early
stopping all judge the average. It writes the average as the checkpoint's
``state_dict`` and the weights being trained as ``current_model_state``, so
``evaluate``, ``export``, ``predict`` and ``serve`` use the average unchanged,
and a resumed run restores both.

It leaves one trap, closed here. After ``fit`` the callback still holds the
average. Loading the best checkpoint for the final ``trainer.test`` then puts
the *trained* weights (``current_model_state``) into the module, because only
validation swaps the average in. ``train.py``'s test figure would then come
from other weights than ``evaluate.py``'s. :class:`EMA` drops the average when
``fit`` ends, so the final validation and test load the checkpoint's
``state_dict``, the average, as every later command does.

``decay`` sets the horizon: the average spans about ``1 / (1 - decay)``
optimiser steps (0.99: the last 100). Under OneCycle, which anneals the
learning rate towards zero, the average mostly helps the middle of a run, not
its end (benchmarks/README.md). A longer one is not better there: decay 0.999
on ``gtsrb_cpu_long`` averaged over its 4-epoch augmentation cooldown, weights
the run was still adapting, and read 0.03 points below 0.99.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # the module holds the average now (on_train_end); later loads take the state_dict
            self._average_model = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # resuming fit: the average and the trained weights both come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # after fit the module's weights are the average already
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
