"""The classification metrics: one definition for training, evaluation and the sweep summary.

Training logs them per split (``val/acc``, ``test/f1``, ...), the evaluation
report computes the same collection on its cached logits and writes them
under the same names (``acc``, ``f1``, ...), and the sweep summary tabulates
:data:`HEADLINE`. So a number in TensorBoard, ``metrics.json``, a sweep's
``summary.csv`` and an evaluation report means the same thing and comes
from the same code.

| name | what |
|---|---|
| ``acc`` | top-1 accuracy (share of images classified right) |
| ``top5`` (``top3``) | the true class among the 5 (3) highest scores |
| ``f1``, ``precision``, ``recall`` | macro averages: every class weighs the same |
| ``*_weighted`` | averages weighted by class support (evaluation only) |
| ``nll`` | mean negative log-likelihood of the true class (no label smoothing) |
| ``ece`` | expected calibration error of the top-1 confidence, 15 equal-width bins, L1 |

Two traps avoided here:

* torchmetrics merges metrics into one *compute group* when their states
  are equal after the first update, to update them once. Top-1 and top-5
  accuracy have states of the same shape, so a first batch classified
  entirely right merged them, and top-5 reported top-1 for the rest of the
  epoch. The groups are given explicitly: only metrics that truly share
  their state (the precision/recall/F1 family) share it.
* ``MulticlassCalibrationError`` applies softmax only to a batch that has a
  value outside [0, 1]; a batch of logits that happen to lie in [0, 1] would
  be read as probabilities. :class:`ExpectedCalibrationError` always takes
  logits and always applies softmax.
"""

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

N_BINS = 15
HEADLINE = ("acc", "f1", "ece", "nll")  # the columns of a sweep summary, per split


class NegativeLogLikelihood(Metric):
    """Mean cross-entropy of the logits against hard labels (no label smoothing).

    The training loss is smoothed and mixed, so it is no measure of how well
    the probabilities fit; this one is, and pairs with the calibration error.
    Summed in float64, so the value does not depend on how the images were
    split into batches.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.total += F.cross_entropy(preds.double(), target, reduction="sum")
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class ExpectedCalibrationError(MulticlassCalibrationError):
    """ECE of ``softmax(logits)``: the same logits every other metric here takes (see the module docstring)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.float().softmax(dim=1), target)


def classification_metrics(num_classes: int, full: bool = True, extra: bool = False) -> MetricCollection:
    """Accuracy always; with ``full`` also macro F1/precision/recall, top-5, NLL and ECE; with ``extra`` also
    top-3 and the support-weighted F1/precision/recall of the evaluation report.

    All metrics take logits and integer labels; the macro averages weigh rare
    classes (210 training images in GTSRB) as much as common ones (2,250).
    """
    metrics: dict[str, Metric] = {"acc": MulticlassAccuracy(num_classes, average="micro")}
    # precision, recall and F1 are all computed from one table of per-class counts, which they may share
    family = []
    if full:
        family += ["f1", "precision", "recall"]
        metrics.update(
            f1=MulticlassF1Score(num_classes, average="macro"),
            precision=MulticlassPrecision(num_classes, average="macro"),
            recall=MulticlassRecall(num_classes, average="macro"),
            top5=MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            nll=NegativeLogLikelihood(),
            ece=ExpectedCalibrationError(num_classes, n_bins=N_BINS, norm="l1"),
        )
    if extra:
        family += ["f1_weighted", "precision_weighted", "recall_weighted"]
        metrics.update(
            top3=MulticlassAccuracy(num_classes, top_k=min(3, num_classes), average="micro"),
            f1_weighted=MulticlassF1Score(num_classes, average="weighted"),
            precision_weighted=MulticlassPrecision(num_classes, average="weighted"),
            recall_weighted=MulticlassRecall(num_classes, average="weighted"),
        )
    return MetricCollection(metrics, compute_groups=[family] if family else False)


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, extra: bool = True) -> dict[str, float]:
    """Every metric of :func:`classification_metrics` on all of ``logits`` [N, C] at once, as plain floats."""
    metrics = classification_metrics(logits.shape[1], extra=extra).to(logits.device)
    metrics.update(logits, labels.to(logits.device))
    return {name: float(value) for name, value in metrics.compute().items()}


def accuracy_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95% interval for an accuracy measured on ``n`` images.

    At 99.5% on a few thousand images the normal approximation's interval
    runs past 100%; Wilson's stays inside [0, 1] and is what a difference
    between two recipes has to clear before it means anything.
    """
    if n <= 0:
        return float("nan"), float("nan")
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def track_accuracy_interval(correct: torch.Tensor, groups: torch.Tensor, z: float = 1.96) -> tuple[float, float]:
    """95% interval for an accuracy whose images come in tracks (GTSRB: about 30 frames of one physical sign).

    Wilson's interval counts every image as an independent draw. On held-out tracks a model that misreads
    a sign tends to misread most of its track, so a track is closer to one draw than to thirty. Five folds of
    held-out blocks moved one recipe by four of Wilson's standard errors (benchmarks/README.md), and
    the mistakes of a fold came in whole tracks. This interval takes the tracks as the units: the normal
    interval of a ratio estimator with a cluster-robust variance. It is never narrower than Wilson's,
    which still bounds it where a split has too few mistakes to estimate their clustering from.
    """
    wilson = accuracy_interval(float(correct.double().mean()), correct.numel(), z)
    _, track = torch.unique(groups, return_inverse=True)
    tracks = int(track.max()) + 1 if track.numel() else 0
    if tracks < 2:
        return wilson
    images = torch.bincount(track, minlength=tracks).double()
    right = torch.bincount(track, weights=correct.double(), minlength=tracks)
    accuracy = float(right.sum() / images.sum())
    variance = tracks / (tracks - 1) * float(((right - accuracy * images) ** 2).sum()) / float(images.sum()) ** 2
    half = z * variance ** 0.5
    return min(wilson[0], max(0.0, accuracy - half)), max(wilson[1], min(1.0, accuracy + half))



def split_accuracy_interval(correct: torch.Tensor, groups: torch.Tensor | None) -> dict[str, float | str]:
    """The accuracy's 95% interval for one split: over tracks where every image's track is known (the training
    data's splits), else over images (Wilson's; the GTSRB test CSV and image folders name no tracks)."""
    if groups is not None and groups.numel() == correct.numel() and bool((groups >= 0).all()):
        low, high = track_accuracy_interval(correct, groups)
        return {"low": low, "high": high, "over": f"{len(torch.unique(groups))} tracks"}
    low, high = accuracy_interval(float(correct.double().mean()), correct.numel())
    return {"low": low, "high": high, "over": f"{correct.numel()} images"}
