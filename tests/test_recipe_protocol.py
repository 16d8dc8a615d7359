"""The recipe benchmark's protocol arithmetic: a figure per seed over its folds, and two recipes paired by fold."""

from __future__ import annotations

import json

import pytest

from benchmarks.recipe import compare_with, over_folds, paired_difference, summarise_recipe


def run(seed: int, fold: int | None, acc: float, folds: int = 5) -> dict:
    return {"seed": seed, "fold": None if fold is None else f"{fold} of {folds}", "last_val_acc": acc,
            "best_val_acc": acc + 0.001}


def test_each_seed_is_one_figure_over_its_folds():
    runs = [run(0, f, 0.99 + 0.001 * f) for f in range(5)] + [run(1, f, 0.98 + 0.001 * f) for f in range(5)]
    runs += [run(2, f, 0.5) for f in range(3)]  # seed 2 ran three of five folds: no figure of its own
    result = over_folds(runs)
    assert result["seeds"] == [0, 1] and result["incomplete_seeds"] == [2]
    assert result["last_val_acc"]["per_seed"] == {"0": pytest.approx(0.992), "1": pytest.approx(0.982)}
    assert result["last_val_acc"]["mean"] == pytest.approx(0.987)
    assert result["last_val_acc"]["std"] == pytest.approx(0.01 / 2 ** 0.5, abs=1e-5)  # two figures, not ten runs


def test_recipes_are_compared_on_the_same_seed_and_fold_only():
    baseline = [run(0, f, 0.99) for f in range(5)]
    runs = [run(0, 0, 0.995), run(0, 1, 0.985), run(0, 2, 0.99), run(1, 0, 0.2)]  # seed 1 has no partner
    paired = paired_difference(runs, baseline)
    assert [(p["seed"], p["fold"]) for p in paired["pairs"]] == [(0, "0 of 5"), (0, "1 of 5"), (0, "2 of 5")]
    assert paired["mean"] == pytest.approx(0.0, abs=1e-9)
    assert paired["stderr"] == pytest.approx(0.005 / 3 ** 0.5, abs=1e-5)  # stdev of +0.005, -0.005, 0 over sqrt(3)
    assert paired_difference([run(0, None, 0.9)], baseline) is None  # the one split is no fold of theirs


def test_a_baseline_that_is_no_recipe_benchmark_is_one_line(tmp_path):
    other = tmp_path / "benchmark.json"
    other.write_text(json.dumps({"pipeline": []}))
    with pytest.raises(SystemExit, match="not a recipe benchmark.json"):
        compare_with([run(0, 0, 0.99)], other)
    other.write_text(json.dumps({"recipe": {"runs": [run(3, 0, 0.99)]}}))
    with pytest.raises(SystemExit, match="same --recipe-seeds and --recipe-folds"):
        compare_with([run(0, 0, 0.99)], other)


def test_finished_runs_are_read_with_their_fold(tmp_path):
    dirs = []
    for fold, accs in enumerate([[0.97, 0.991], [0.96, 0.985]]):
        d = tmp_path / f"seed0_fold{fold}"
        d.mkdir()
        config = {"seed": 0, "data": {"val_split": "blocks", "folds": 2, "fold": fold}, "trainer": {"precision": "32"}}
        (d / "metrics.json").write_text(json.dumps({"config": config, "best_score": max(accs), "seconds": 10.0}))
        (d / "clock.json").write_text(json.dumps([{"since_process_start_s": 5.0 * (e + 1), "val_acc": a,
                                                   "loadavg": [1.0]} for e, a in enumerate(accs)]))
        dirs.append(d)
    summary = summarise_recipe(dirs, targets=[0.99])
    assert [r["fold"] for r in summary["runs"]] == ["0 of 2", "1 of 2"]
    assert [r["time_to_target_s"]["0.99"] for r in summary["runs"]] == [10.0, None]  # fold 1 never reached 99%
    assert summary["over_folds"]["last_val_acc"]["per_seed"] == {"0": pytest.approx(0.988)}


def test_the_protocol_reaches_a_target_when_the_mean_over_folds_does():
    """Fold 0 alone passes 99% at epoch 1; the mean over both folds only at epoch 2, at their mean time then."""
    runs = [dict(run(0, 0, 0.995, folds=2), curve=[[10.0, 0.991], [20.0, 0.995]]),
            dict(run(0, 1, 0.990, folds=2), curve=[[12.0, 0.980], [22.0, 0.990]])]
    times = over_folds(runs, targets=[0.99, 0.999])["time_to_target_s"]
    assert times == {"0.99": {"0": 21.0}, "0.999": {"0": None}}
