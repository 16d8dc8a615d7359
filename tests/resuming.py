"""Resume a tiny fit from a checkpoint written in the middle of an epoch.

Lightning calls no ``on_train_epoch_start`` for the epoch such a checkpoint resumes in, so a callback that sets its
per-epoch state only there (the cooldown's augmentation, progressive resizing's size) would train the rest of that
epoch with whatever the data module was built with. The tests of those callbacks watch the resumed batches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.module import TrafficSignClassifier

EPOCHS, BATCHES = 3, 4  # so step n ends batch (n - 1) % 4 + 1 of epoch (n - 1) // 4


def fit_resumed_mid_epoch(cfg, make_callback: Callable[[], L.Callback], spy: L.Callback, root: Path,
                          at_step: int) -> None:
    """Fit once, keeping the checkpoint after ``at_step`` (not a multiple of the batches: mid-epoch), then fit
    again from it, with a fresh ``make_callback()`` each time and ``spy`` watching the second fit only."""
    assert at_step % BATCHES and at_step * 2 > EPOCHS * BATCHES  # mid-epoch, and saved once only

    def fit(callbacks: list[L.Callback], ckpt_path: str | None = None) -> None:
        datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
        datamodule.setup("fit")
        model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names)
        trainer = L.Trainer(accelerator="cpu", max_epochs=EPOCHS, limit_train_batches=BATCHES, limit_val_batches=1,
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=root, callbacks=[make_callback(), *callbacks])
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    fit([ModelCheckpoint(dirpath=root, filename="mid", every_n_train_steps=at_step, save_top_k=-1)])
    fit([spy], ckpt_path=str(root / "mid.ckpt"))
