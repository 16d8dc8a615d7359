"""Is the model's confidence to be trusted? Calibration error, reliability bins, temperature scaling.

A classifier that says "90 %" should be right nine times out of ten. The
expected calibration error (ECE) measures the gap, the reliability bins show
where it is, and temperature scaling (Guo et al., 2017) closes most of it with
one number fitted on the validation split: ``softmax(logits / T)``. Dividing
by ``T > 0`` never changes the arg-max, so accuracy stays exactly the same.
The ECE and NLL themselves are the shared metrics of :mod:`gtsrb.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gtsrb.metrics import N_BINS


@dataclass
class ReliabilityBins:
    """Per confidence bin: how many predictions, their mean confidence and their accuracy.

    Bins are ``[k/n, (k+1)/n)`` with a confidence of exactly 1 in the last one,
    the convention of torchmetrics, so :meth:`ece` equals the ``ece`` metric.
    Empty bins hold zeros.
    """

    edges: torch.Tensor  # [n_bins + 1]
    counts: torch.Tensor  # [n_bins]
    confidence: torch.Tensor  # [n_bins]
    accuracy: torch.Tensor  # [n_bins]

    def ece(self) -> float:
        """Count-weighted mean of |accuracy - confidence| over the bins."""
        total = self.counts.sum().clamp(min=1)
        return float((self.counts / total * (self.accuracy - self.confidence).abs()).sum())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> ReliabilityBins:
    """Bin the top-1 confidence of ``probs`` [N, C] and compare it with the hit rate of each bin."""
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins).float()
    safe = counts.clamp(min=1)
    mean_conf = torch.zeros(n_bins).index_add_(0, index, confidence) / safe
    accuracy = torch.zeros(n_bins).index_add_(0, index, correct) / safe
    return ReliabilityBins(edges, counts.long(), mean_conf, accuracy)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)``.

    Optimised over ``log T`` (so ``T`` stays positive) with L-BFGS on the
    cached logits: seconds even for tens of thousands of images, and
    deterministic (no sampling, no global RNG).
    """
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not torch.isfinite(torch.tensor(temperature)):
        return 1.0
    # a perfectly separated val set drives T towards 0; keep it in a range where softmax stays finite
    return min(max(temperature, 0.05), 20.0)
