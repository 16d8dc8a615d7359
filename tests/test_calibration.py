"""Calibration maths against numbers worked out by hand (the reliability bins and the shared ``ece`` and ``nll``
metrics), and temperature scaling on an over-confident model."""

from __future__ import annotations

import math

import pytest
import torch

from gtsrb.evaluation.calibration import fit_temperature, reliability_bins
from gtsrb.metrics import ExpectedCalibrationError, NegativeLogLikelihood


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """The ``ece`` metric of training and evaluation, on one set of logits."""
    return float(ExpectedCalibrationError(logits.shape[1], n_bins=n_bins, norm="l1")(logits, labels))


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(NegativeLogLikelihood()(logits, labels))

# Four predictions over three classes: (top-1 confidence, right?) = (0.9, yes), (0.8, no), (0.5, yes), (0.4, no).
PROBS = torch.tensor([[0.90, 0.05, 0.05],
                      [0.80, 0.10, 0.10],
                      [0.20, 0.50, 0.30],
                      [0.40, 0.35, 0.25]])
LABELS = torch.tensor([0, 1, 1, 2])


def test_reliability_bins_and_ece_match_the_hand_computed_example():
    # 3 bins [0, 1/3), [1/3, 2/3), [2/3, 1]: empty | {0.5 right, 0.4 wrong} | {0.9 right, 0.8 wrong}
    bins = reliability_bins(PROBS, LABELS, n_bins=3)
    assert bins.counts.tolist() == [0, 2, 2]
    assert bins.confidence.tolist() == pytest.approx([0.0, 0.45, 0.85])
    assert bins.accuracy.tolist() == pytest.approx([0.0, 0.5, 0.5])
    # ECE = 2/4 * |0.5 - 0.45| + 2/4 * |0.5 - 0.85| = 0.025 + 0.175
    assert bins.ece() == pytest.approx(0.2)
    assert expected_calibration_error(PROBS.log(), LABELS, n_bins=3) == pytest.approx(0.2, abs=1e-6)


def test_fifteen_bins_put_each_prediction_in_its_own_bin():
    # bins 6, 7, 12, 13 hold one prediction each: ECE = (0.4 + 0.5 + 0.8 + 0.1) / 4
    bins = reliability_bins(PROBS, LABELS)
    assert len(bins.counts) == 15 and bins.counts.sum() == 4
    assert bins.counts[[12, 13]].tolist() == [1, 1]
    assert bins.ece() == pytest.approx(0.45)
    assert expected_calibration_error(PROBS.log(), LABELS) == pytest.approx(0.45, abs=1e-6)


def test_confidence_of_one_lands_in_the_last_bin():
    bins = reliability_bins(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), n_bins=15)
    assert bins.counts[-1] == 1 and bins.ece() == pytest.approx(0.0)


def test_nll_is_the_mean_negative_log_probability_of_the_true_class():
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.5) + math.log(0.25)) / 4
    assert nll(PROBS.log(), LABELS) == pytest.approx(expected)


def _overconfident_logits(n: int = 2000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a model that is right ~70 % of the time but sharpened 5x: far too sure of itself."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5
    return 5.0 * logits, labels


def test_temperature_scaling_lowers_nll_and_ece_and_keeps_accuracy():
    val_logits, val_labels = _overconfident_logits(seed=0)
    test_logits, test_labels = _overconfident_logits(seed=1)
    temperature = fit_temperature(val_logits, val_labels)
    assert 3.0 < temperature < 7.0  # the 5x sharpening is undone
    assert nll(test_logits / temperature, test_labels) < 0.7 * nll(test_logits, test_labels)
    assert expected_calibration_error(test_logits / temperature, test_labels) < \
        0.5 * expected_calibration_error(test_logits, test_labels)
    assert torch.equal((test_logits / temperature).argmax(1), test_logits.argmax(1))


def test_fitted_temperature_is_the_nll_minimum():
    logits, labels = _overconfident_logits(n=500)
    t = fit_temperature(logits, labels)
    for other in (0.9 * t, 1.1 * t):
        assert nll(logits / t, labels) < nll(logits / other, labels)


def test_ece_reads_logits_as_logits_even_when_they_lie_in_zero_one():
    """torchmetrics' own calibration error takes such a batch for probabilities; ours always applies softmax."""
    logits = torch.tensor([[0.9, 0.1], [0.2, 0.6]])
    labels = torch.tensor([0, 1])
    probs = logits.softmax(dim=1)  # confidences 0.690 and 0.599, both right: ECE = 1 - mean confidence
    expected = 1 - probs.max(dim=1).values.mean()
    assert expected_calibration_error(logits, labels) == pytest.approx(float(expected), abs=1e-6)
