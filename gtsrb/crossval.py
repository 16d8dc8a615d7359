"""Cross-validation over folds: one figure per choice, and two choices compared fold by fold.

With ``data.folds=5 data.fold=0,1,2,3,4`` every track is validated once. Which tracks a fold holds out moved
one recipe by more than a point on GTSRB (benchmarks/README.md, "Five folds of blocks"), while it moves two
recipes alike. Hence the rules here:

* A choice's figure is, per seed, its mean over all the folds; with several seeds, the mean of those figures.
  A seed that missed a fold gets no figure: the folds differ too much for a mean over some of them to mean much.
* Two choices are compared by their differences on the same (seed, fold), with the standard error of the mean
  difference, not by their figures, whose fold-to-fold spread is several times larger than the difference.
* The score is the monitored metric at the last epoch. The best epoch is picked on the fold it is scored on,
  which flatters it.

This module only computes; :mod:`gtsrb.sweep` reads the runs and writes the tables, and
``benchmarks/recipe.py`` applies the same rules to its timed runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

Scores = Mapping[tuple[int, Hashable], float]  # (seed, fold) -> the last epoch's score


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return {"mean": round(statistics.mean(values), 5),
            "std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0}


def seed_figures(scores: Scores, folds: int) -> tuple[dict[int, float], list[int]]:
    """Each seed's mean over its folds, for the seeds that ran all ``folds``; and the seeds that did not."""
    by_seed: dict[int, dict[Hashable, float]] = {}
    for (seed, fold), score in scores.items():
        by_seed.setdefault(seed, {})[fold] = score
    figures = {seed: statistics.mean(s.values()) for seed, s in sorted(by_seed.items()) if len(s) == folds}
    return figures, sorted(set(by_seed) - set(figures))


def paired_difference(scores: Scores, baseline: Scores) -> dict[str, Any] | None:
    """``scores`` minus ``baseline`` on every (seed, fold) both ran: each difference, their mean and its standard
    error. ``None`` when they share no (seed, fold)."""
    pairs = [(seed, fold, score - baseline[(seed, fold)]) for (seed, fold), score in scores.items()
             if (seed, fold) in baseline]
    if not pairs:
        return None
    diffs = [d for _, _, d in pairs]
    stderr = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return {"pairs": [{"seed": s, "fold": f, "difference": round(d, 5)} for s, f, d in pairs],
            "mean": round(statistics.mean(diffs), 5), "stderr": round(stderr, 5)}


def compare_choices(runs: Iterable[Mapping[str, Any]], mode: str = "max") -> list[dict[str, Any]]:
    """Group a sweep's fold runs by what else they change, and compare every group with the best one.

    ``runs``: one mapping per finished run with ``choice`` (its overrides less seed and fold), ``seed``,
    ``fold``, ``folds`` and ``score`` (the last epoch's). Returns one row per choice, best figure first (by
    ``mode``), choices without a figure (a fold missing for every seed) last.
    """
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        group = groups.setdefault(run["choice"], {"choice": run["choice"], "folds": run["folds"], "scores": {}})
        group["scores"][(run["seed"], run["fold"])] = run["score"]
    rows = []
    for group in groups.values():
        figures, incomplete = seed_figures(group["scores"], group["folds"])
        complete = {key: v for key, v in group["scores"].items() if key[0] in figures}
        row = {"choice": group["choice"], "folds": group["folds"], "seeds": list(figures),
               "incomplete_seeds": incomplete, "scores": group["scores"],
               "figure": spread(list(figures.values())) if figures else None,
               # the spread over folds of one seed, averaged over seeds: how much the held-out tracks matter
               "std_over_folds": (round(statistics.mean(_std_over_folds(complete, seed) for seed in figures), 5)
                                  if figures else None)}
        rows.append(row)
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r["figure"] is None, sign * (r["figure"] or {"mean": 0.0})["mean"]))
    if rows and rows[0]["figure"] is not None:
        best = rows[0]
        for row in rows[1:]:
            row["paired_with_best"] = paired_difference(row["scores"], best["scores"])
    return rows


def _std_over_folds(scores: Scores, seed: int) -> float:
    values = [v for (s, _), v in scores.items() if s == seed]
    return statistics.stdev(values) if len(values) > 1 else 0.0
