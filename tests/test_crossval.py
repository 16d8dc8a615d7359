"""Cross-validation over folds: a figure per choice, choices compared fold by fold, and a fold sweep's table."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from gtsrb.cli import preflight
from gtsrb.config import validate
from gtsrb.crossval import compare_choices
from gtsrb.errors import UserError
from gtsrb.sweep import write_summary


def fold_runs(choice: str, scores: dict[int, list[float]]) -> list[dict]:
    """``scores``: per seed, the last-epoch score of folds 0, 1, ...; every choice here has 3 folds."""
    return [{"choice": choice, "seed": seed, "fold": fold, "folds": 3, "score": score}
            for seed, per_fold in scores.items() for fold, score in enumerate(per_fold)]


def test_a_figure_averages_the_folds_of_each_complete_seed_then_the_seeds():
    runs = fold_runs("model=a", {0: [0.90, 0.92, 0.94], 1: [0.91, 0.93, 0.95], 2: [0.10, 0.20]})  # seed 2: 2 of 3
    (row,) = compare_choices(runs)
    assert row["seeds"] == [0, 1] and row["incomplete_seeds"] == [2]
    assert row["figure"]["mean"] == pytest.approx(0.925)
    assert row["figure"]["std"] == pytest.approx(statistics.stdev([0.92, 0.93]), abs=1e-5)  # two figures, not six runs
    assert row["std_over_folds"] == pytest.approx(0.02, abs=1e-5)


def test_choices_are_ranked_by_figure_and_compared_with_the_best_on_the_same_seed_and_fold():
    """The folds spread each choice by several points; the difference between the choices is steady fold by
    fold, and its standard error says so."""
    a = fold_runs("model=a", {0: [0.90, 0.95, 0.97]})
    b = fold_runs("model=b", {0: [0.91, 0.955, 0.972], 1: [0.96, 0.96, 0.96]})  # seed 1: no partner in a
    best, other = compare_choices(a + b)
    assert (best["choice"], other["choice"]) == ("model=b", "model=a")
    assert "paired_with_best" not in best
    paired = other["paired_with_best"]
    assert [(p["seed"], p["fold"]) for p in paired["pairs"]] == [(0, 0), (0, 1), (0, 2)]
    diffs = [-0.01, -0.005, -0.002]
    assert paired["mean"] == pytest.approx(statistics.mean(diffs), abs=1e-5)
    assert paired["stderr"] == pytest.approx(statistics.stdev(diffs) / 3 ** 0.5, abs=1e-5)
    assert paired["stderr"] < other["std_over_folds"] / 5
    # a monitor to minimise (a loss) ranks the other way
    assert [row["choice"] for row in compare_choices(a + b, mode="min")] == ["model=a", "model=b"]


def test_a_choice_that_missed_a_fold_for_every_seed_has_no_figure_and_comes_last():
    rows = compare_choices(fold_runs("model=a", {0: [0.99, 0.99]}) + fold_runs("model=b", {0: [0.5, 0.5, 0.5]}))
    assert [(row["choice"], row["figure"]) for row in rows] == [("model=b", {"mean": 0.5, "std": 0.0}),
                                                                ("model=a", None)]
    assert rows[1]["paired_with_best"]["mean"] == pytest.approx(0.49)  # its two folds still pair


def _fold_job(folder, num: int, choice: str, fold: int, curve: list[float], status: str = "completed") -> None:
    """A job's metrics.json as train.py writes it: the config, one history row per epoch, the best score."""
    job = folder / str(num)
    job.mkdir(parents=True)
    history = [{"epoch": e, "val/acc": acc, "val/loss": 1 - acc} for e, acc in enumerate(curve)]
    report = {"status": status, "monitor": "val/acc", "best_score": max(curve) if curve else None,
              "overrides": [choice, "seed=0", "data.folds=3", f"data.fold={fold}"], "history": history,
              "epochs": len(curve), "seconds": 1.0, "final": {}, "best_checkpoint": "",
              "config": {"seed": 0, "data": {"folds": 3, "fold": fold}}}
    (job / "metrics.json").write_text(json.dumps(report))


def test_a_fold_sweep_adds_one_row_per_choice_scored_at_the_last_epoch(tmp_path):
    # model=a peaks higher on every fold but ends lower: the best epoch is picked on the fold it is scored on
    for fold in range(3):
        _fold_job(tmp_path, fold, "model=a", fold, [0.90, 0.99, 0.95 + 0.01 * fold])
        _fold_job(tmp_path, 3 + fold, "model=b", fold, [0.90, 0.97, 0.96 + 0.01 * fold])
    _fold_job(tmp_path, 6, "model=c", 0, [], status="failed")
    rows = write_summary(tmp_path, "val/acc", "max")
    assert rows[0]["overrides"].startswith("model=a")  # the per-run table still ranks by the best epoch
    with open(tmp_path / "crossval.csv") as f:
        table = list(csv.DictReader(f))
    # what the choices share is left out; model=c failed: no score to average
    assert [row["choice"] for row in table] == ["model=b", "model=a"]
    assert float(table[0]["figure"]) == pytest.approx(0.97)
    assert float(table[1]["difference_from_best"]) == pytest.approx(-0.01) and table[1]["pairs"] == "3"
    text = (tmp_path / "summary.md").read_text()
    assert "## Cross-validation: val/acc at the last epoch" in text
    assert "| model=a | 3 | 0 | 0.9600 |" in text and "-0.0100" in text


def test_a_sweep_without_folds_writes_no_cross_validation(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    (job / "metrics.json").write_text(json.dumps({"monitor": "val/acc", "best_score": 0.9, "overrides": ["model=a"],
                                                  "history": [{"val/acc": 0.9}],
                                                  "config": {"seed": 0, "data": {"folds": 0, "fold": 0}}}))
    write_summary(tmp_path, "val/acc", "max")
    assert not (tmp_path / "crossval.csv").exists()
    assert "Cross-validation" not in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("source", ["folder", "synthetic"])
def test_folds_of_a_source_that_has_its_own_validation_set_fail_with_one_line(make_cfg, image_folder, source):
    """Its validation images are fixed, so five folds would be five runs of the same split, averaged as if not."""
    cfg = make_cfg(f"data={source}", f"data.root={image_folder}", "data.folds=5", "data.fold=1")
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert all(text in str(info.value) for text in ["data.folds=5", f"data.source={source}", "data=gtsrb"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="same run"):  # the command line checks it before the first job
        preflight([f"data={source}", f"data.root={image_folder}", "data.folds=5", "data.fold=0"], "train")
    validate(make_cfg("data=gtsrb", "data.root=/anywhere", "data.folds=5", "data.fold=1"))
