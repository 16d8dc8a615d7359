"""The NLL metric and the multirun summary table."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from gtsrb.metrics import NegativeLogLikelihood, classification_metrics
from gtsrb.sweep import write_summary
from numerics import EPS


def test_nll_matches_cross_entropy_over_several_batches():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 7) * 3, torch.randint(0, 7, (50,))
    metric = NegativeLogLikelihood()
    metric.update(logits[:20], labels[:20])
    metric.update(logits[20:], labels[20:])
    # summed in float64, batch by batch or at once: 50 additions, each off by half a float64 ulp at most
    expected = F.cross_entropy(logits.double(), labels)
    torch.testing.assert_close(metric.compute(), expected, rtol=50 * torch.finfo(torch.float64).eps, atol=0)
    # and against float32 cross-entropy, which rounds each of its 50 terms and their sum in float32
    torch.testing.assert_close(metric.compute().float(), F.cross_entropy(logits, labels), rtol=50 * EPS, atol=0)


def test_metric_collection_reports_macro_scores():
    metrics = classification_metrics(3)
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    values = metrics(logits, torch.tensor([0, 1, 1, 2]))
    assert values["acc"] == 0.75
    assert torch.isclose(values["recall"], torch.tensor((1 + 0.5 + 1) / 3))
    assert values["top5"] == 1.0  # top-k is clipped to the number of classes


def _job(folder, num, score, override):
    job = folder / str(num)
    job.mkdir(parents=True)
    report = {"monitor": "val/acc", "best_score": score, "overrides": [override], "epochs": 1, "seconds": 2.0,
              "final": {"val": {"val/acc": score, "val/f1": 0.5}} if score is not None else {},
              "best_checkpoint": f"{job}/best.ckpt"}
    (job / "metrics.json").write_text(json.dumps(report))


def test_summary_sorts_best_first_and_puts_failed_runs_last(tmp_path):
    _job(tmp_path, 0, 0.5, "model=a")
    _job(tmp_path, 1, None, "model=b")
    _job(tmp_path, 2, 0.9, "model=c")
    rows = write_summary(tmp_path, "val/acc", "max")
    assert [r["overrides"] for r in rows] == ["model=c", "model=a", "model=b"]
    with open(tmp_path / "summary.csv") as f:
        assert [r["job"] for r in csv.DictReader(f)] == ["2", "0", "1"]
    assert write_summary(tmp_path, "val/acc", "min")[0]["overrides"] == "model=a"
    assert "model=c" in (tmp_path / "summary.md").read_text()


def _batch(correct: int, second_best: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``correct`` images classified right, then ``second_best`` with the true class ranked second."""
    n = correct + second_best
    labels = torch.arange(n) % classes
    logits = torch.zeros(n, classes)
    logits[torch.arange(n), labels] = 2.0
    logits[torch.arange(correct, n), (labels[correct:] + 1) % classes] = 3.0
    return logits, labels


@pytest.mark.parametrize("order", ["all-correct batch first", "mixed batch first"])
def test_top5_is_its_own_metric_whatever_the_order_of_batches(order):
    """Top-1 and top-5 accuracy have states of one shape; they must never be merged into one compute group.

    torchmetrics merges metrics whose states are equal after the first update: a first batch classified
    entirely right made top-5 equal to top-1 for the rest of the epoch.
    """
    batches = [_batch(4, 0), _batch(1, 1)]
    if order == "mixed batch first":
        batches.reverse()
    metrics = classification_metrics(10).clone(prefix="test/")
    for logits, labels in batches:
        metrics.update(logits, labels)
    values = metrics.compute()
    assert values["test/acc"] == pytest.approx(5 / 6)
    assert values["test/top5"] == 1.0


def test_accuracy_interval_is_wilsons():
    from gtsrb.metrics import accuracy_interval

    low, high = accuracy_interval(0.5, 100)  # the textbook case: 0.5 +- 0.0962
    assert abs(low - 0.4038) < 1e-4 and abs(high - 0.5962) < 1e-4
    low, high = accuracy_interval(1.0, 10)  # all correct: still an interval below 1, never above
    assert high == 1.0 and 0.70 < low < 0.73
    narrow = accuracy_interval(0.995, 4740)
    wide = accuracy_interval(0.995, 474)
    assert wide[0] < narrow[0] < 0.995 < narrow[1] < wide[1] <= 1.0


def test_track_interval_widens_when_the_mistakes_share_a_track():
    from gtsrb.metrics import accuracy_interval, track_accuracy_interval

    tracks = torch.arange(100).repeat_interleave(30)  # 100 tracks of 30 frames, 30 mistakes either way
    spread, together = torch.ones(3000, dtype=torch.bool), torch.ones(3000, dtype=torch.bool)
    spread[::100] = False  # one frame in each of 30 tracks
    together[:30] = False  # one whole track
    wilson = accuracy_interval(0.99, 3000)
    low, high = track_accuracy_interval(together, tracks)
    assert low < 0.99 < high and (high - low) > 4 * (wilson[1] - wilson[0])  # about 5.4x: a track is one draw
    low, high = track_accuracy_interval(spread, tracks)
    assert (high - low) < 1.2 * (wilson[1] - wilson[0])  # independent mistakes: about Wilson's
    singletons = track_accuracy_interval(together, torch.arange(3000))
    assert singletons[0] <= wilson[0] + 1e-9 and singletons[1] >= wilson[1] - 1e-9
    assert (singletons[1] - singletons[0]) < 1.1 * (wilson[1] - wilson[0])
    perfect = track_accuracy_interval(torch.ones(3000, dtype=torch.bool), tracks)
    assert perfect == accuracy_interval(1.0, 3000)  # no mistakes to cluster: never narrower than Wilson's
