"""The Grad-CAM callback: watch what the model looks at while it learns.

Every ``every_n_epochs`` epochs and once more when training ends, it explains
the same class-diverse validation images (so epochs can be compared) plus the
most confident current mistakes, and writes

* ``<dirpath>/epoch_XXX/NN_true-<class>_pred-<class>_conf0.87.png`` (image
  and overlay side by side) and ``grid.png`` (all of them, captioned),
* the grid to every TensorBoard logger, tag ``gradcam``.

It runs after the epoch's validation, in eval mode, without touching
parameters, gradients, module modes or the RNG (see :mod:`gtsrb.explain.gradcam`),
so a run with the callback trains exactly like the same run without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gtsrb.classes import class_name
from gtsrb.explain.gradcam import find_target_layer
from gtsrb.explain.overlays import overlay_filename, overlay_grid, save_overlay
from gtsrb.inference import InputSpec, Predictor

log = logging.getLogger(__name__)


def diverse_indices(labels: torch.Tensor, count: int) -> list[int]:
    """``count`` image indices spread over the classes: evenly spaced class ids first, then round-robin.

    Deterministic (the first images of each class), so the same images come back every epoch.
    """
    classes = labels.unique().tolist()
    by_class = {c: (labels == c).nonzero().flatten().tolist() for c in classes}
    step = max(1.0, len(classes) / max(count, 1))
    spread = [classes[int(i * step)] for i in range(min(count, len(classes)))]
    order = spread + [c for c in classes if c not in spread]
    picked: list[int] = []
    for rank in range(max(len(v) for v in by_class.values()) if by_class else 0):
        for c in order:
            if len(picked) < count and rank < len(by_class[c]):
                picked.append(by_class[c][rank])
    return picked


class GradCamCallback(L.Callback):
    def __init__(self, dirpath: str = "gradcam", every_n_epochs: int = 5, num_images: int = 16,
                 num_misclassified: int = 4, method: str = "gradcam", target_layer: str | None = None,
                 batch_size: int = 256) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = max(1, every_n_epochs)
        self.num_images, self.num_misclassified = num_images, num_misclassified
        self.method, self.target_layer, self.batch_size = method, target_layer, batch_size
        self._fixed: list[int] | None = None
        self._last_epoch: int | None = None
        self._dumped: set[int] = set()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_epoch = trainer.current_epoch
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.dump(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_epoch is not None and self._last_epoch not in self._dumped:
            self.dump(trainer, pl_module, self._last_epoch)

    def dump(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> Path | None:
        """Explain the chosen validation images with the current weights; returns the epoch folder."""
        self._dumped.add(epoch)
        datamodule = trainer.datamodule
        val = getattr(datamodule, "splits", {}).get("val") if datamodule is not None else None
        if not trainer.is_global_zero or val is None or len(val) == 0:
            if val is None:
                log.warning("Grad-CAM callback: no validation images in the datamodule; nothing to explain")
            return None
        # the module as it is now, in the middle of training: the predictor puts back its modes and the RNG
        predictor = Predictor(pl_module, InputSpec.of(datamodule.cfg), self.batch_size, pl_module.device)
        chosen = self._choose(predictor, val)
        explained = predictor.explain(val.images[chosen], None, self.method, self.target_layer)
        probs = (explained.logits / predictor.temperature).softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        names = pl_module.class_names
        true_names = [class_name(int(val.labels[i]), names) for i in chosen]
        pred_names = [class_name(int(p), names) for p in predicted]

        folder = self.dirpath / f"epoch_{epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(chosen):
            save_overlay(folder / overlay_filename(k, true_names[k], pred_names[k], float(confidence[k])),
                         val.images[i], explained.heatmaps[k])
        wrong = sum(t != p for t, p in zip(true_names, pred_names))
        fig = overlay_grid(val.images[chosen], explained.heatmaps, pred_names, confidence.tolist(), true_names,
                           title=f"Grad-CAM{'++' if self.method == 'gradcam++' else ''} "
                                 f"({find_target_layer(pl_module, self.target_layer)[0]}), "
                                 f"epoch {epoch}: {len(chosen) - wrong} right, {wrong} wrong")
        fig.savefig(folder / "grid.png", dpi=110)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("gradcam", fig, global_step=epoch, close=False)
        plt.close(fig)
        return folder

    def _choose(self, predictor: Predictor, val) -> list[int]:
        """The fixed class-diverse images, plus this epoch's most confident mistakes among the others."""
        if self._fixed is None:
            self._fixed = diverse_indices(val.labels, self.num_images)
        if self.num_misclassified <= 0:
            return list(self._fixed)
        confidence, predicted = predictor.logits(val.images).softmax(dim=1).max(dim=1)
        wrong = (predicted != val.labels).nonzero().flatten().tolist()
        fixed = set(self._fixed)
        extra = sorted((i for i in wrong if i not in fixed), key=lambda i: -float(confidence[i]))
        return list(self._fixed) + extra[: self.num_misclassified]
