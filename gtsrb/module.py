"""The LightningModule: a timm classifier, its loss, metrics and optimisation.

Hyperparameters (model, optimizer, scheduler, class names) are saved in every
checkpoint, so ``TrafficSignClassifier.load_from_checkpoint(path)`` rebuilds
the exact model without the Hydra config that trained it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric

from gtsrb.metrics import classification_metrics
from gtsrb.models import build_model
from gtsrb.optim import build_optimizer, build_scheduler, parameter_groups


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class TrafficSignClassifier(L.LightningModule):
    def __init__(self, model: dict, optimizer: dict, scheduler: dict, class_names: list[str],
                 label_smoothing: float = 0.1, backbone_lr_ratio: float = 1.0, channels_last: bool = False,
                 monitor: str = "val/acc", monitor_mode: str = "max") -> None:
        super().__init__()
        model, optimizer, scheduler = _plain(model), _plain(optimizer), _plain(scheduler)
        class_names = list(class_names)
        # logger=False: train.py logs the hyperparameters once, together with the final metrics
        self.save_hyperparameters(logger=False)
        self.model = build_model(model["name"], len(class_names), pretrained=model.get("pretrained", False),
                                 weights=model.get("weights"), drop_rate=model.get("drop_rate", 0.0),
                                 kwargs=model.get("kwargs"))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Softmax temperature fitted after training (see evaluation); 1 means uncalibrated.
        # A buffer, so it travels with the weights in every checkpoint.
        self.register_buffer("temperature", torch.ones(()))
        num_classes = len(class_names)
        self.train_metrics = classification_metrics(num_classes, full=False).clone(prefix="train/")
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        # Losses are averaged over images by metrics too: under DDP they are reduced over the processes exactly
        # (Lightning's sync_dist mean of a logged tensor rounds a process's image count down when shards differ).
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()

    @property
    def class_names(self) -> list[str]:
        return self.hparams.class_names

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        # targets are class ids, or class probabilities after MixUp/CutMix
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        hard = targets.argmax(dim=1) if targets.ndim == 2 else targets
        self.train_metrics(logits, hard)
        self.train_loss(loss.detach(), len(images))  # the step value is this process's batch
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch, metrics, losses: MeanMetric, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        metrics.update(logits, labels)
        losses.update(loss, len(images))
        self.log(f"{stage}/loss", losses, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss, "test")

    # Under DDP, torchmetrics' compute() reduces the metric states of all processes, so every process logs the
    # same values; sync_dist=True only tells Lightning that they are reduced (averaging equal values).
    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log("val/acc", values.pop("val/acc"), prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Calibrated class probabilities."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return (self(images) / self.temperature).softmax(dim=1)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Hold the final learning rate once a OneCycle schedule is complete.

        A run resumed with more epochs than it was started with restores the
        scheduler's original length; stepping past it would crash.
        """
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.last_epoch + 1 >= scheduler.total_steps:
            return
        super().lr_scheduler_step(scheduler, metric)

    def configure_optimizers(self):
        opt = self.hparams.optimizer
        groups = parameter_groups(self.model, opt["lr"], opt["weight_decay"], self.hparams.backbone_lr_ratio)
        optimizer = build_optimizer(DictConfig(opt), groups)
        steps = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        scheduler = build_scheduler(DictConfig(self.hparams.scheduler), optimizer, steps, max(1, steps // epochs),
                                    self.hparams.monitor, self.hparams.monitor_mode)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
