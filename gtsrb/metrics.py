"""The metric collection logged for every split, built from torchmetrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


class NegativeLogLikelihood(Metric):
    """Mean cross-entropy of the logits against hard labels (no label smoothing).

    The training loss is smoothed and mixed, so it is no measure of how well
    the probabilities fit; this one is, and pairs with the calibration error.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.total += F.cross_entropy(preds.float(), target, reduction="sum").double()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def classification_metrics(num_classes: int, full: bool = True) -> MetricCollection:
    """Accuracy always; with ``full`` also macro F1/precision/recall, top-5, NLL and ECE (15 bins).

    All metrics take logits and integer labels; the macro averages weigh rare
    classes (210 training images in GTSRB) as much as common ones (2,250).
    """
    metrics: dict[str, Metric] = {"acc": MulticlassAccuracy(num_classes, average="micro")}
    if full:
        metrics.update(
            f1=MulticlassF1Score(num_classes, average="macro"),
            precision=MulticlassPrecision(num_classes, average="macro"),
            recall=MulticlassRecall(num_classes, average="macro"),
            top5=MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            nll=NegativeLogLikelihood(),
            ece=MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
        )
    return MetricCollection(metrics)
