"""A Hydra callback that tabulates a finished multirun: ``summary.csv`` and ``summary.md``.

Each job writes ``metrics.json`` into its own sub-directory; when the sweep
ends the table lists every job's overrides next to its monitored metric and
final scores, best first, so a sweep answers its question at a glance.

A sweep over ``data.fold`` is cross-validation: ``summary.md`` then also has one
row per choice, its figure over the folds and its difference from the best
choice fold by fold (:mod:`gtsrb.crossval`), and ``crossval.csv`` the same rows.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gtsrb.crossval import compare_choices
from gtsrb.metrics import HEADLINE

log = logging.getLogger(__name__)


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        report = json.loads(path.read_text())
        overrides = report.get("overrides") or []
        row: dict[str, Any] = {"job": path.parent.name, "overrides": " ".join(overrides),
                               "status": report.get("status", "completed"), "score": report.get("best_score"),
                               "monitor": report["monitor"]}
        for split, values in report.get("final", {}).items():
            for name in HEADLINE:
                if f"{split}/{name}" in values:
                    row[f"{split}/{name}"] = values[f"{split}/{name}"]
        row["epochs"], row["seconds"] = report.get("epochs"), report.get("seconds")
        row["checkpoint"] = report.get("best_checkpoint", "")
        row["error"] = report.get("error", "")
        row.update(_fold(report))
        rows.append(row)
    return rows


def _fold(report: dict[str, Any]) -> dict[str, Any]:
    """For a run on one of ``data.folds``: its seed, fold and number of folds, and the monitored value at its
    last epoch, the score cross-validation averages. Empty for other runs."""
    config = report.get("config") or {}
    data = config.get("data") or {}
    if not data.get("folds"):
        return {}
    monitor = report["monitor"]
    last = next((epoch[monitor] for epoch in reversed(report.get("history") or []) if monitor in epoch), None)
    return {"seed": config.get("seed"), "fold": data["fold"], "folds": data["folds"], "last_score": last}


def fold_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The completed runs of a cross-validation, as :func:`gtsrb.crossval.compare_choices` takes them: a run's
    choice is its overrides less seed and fold, the only things the runs of one choice differ in."""
    return [{"choice": " ".join(o for o in r["overrides"].split() if not o.startswith(("seed=", "data.fold="))),
             "seed": r["seed"], "fold": r["fold"], "folds": r["folds"], "score": r["last_score"]}
            for r in rows if r.get("folds") and r["status"] == "completed" and r["last_score"] is not None]


def sort_runs(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Best score first; runs without a score (failed or interrupted) last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0)))


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_summary(sweep_dir: Path, monitor: str, mode: str) -> list[dict[str, Any]]:
    rows = sort_runs(collect_runs(sweep_dir), mode)
    if not rows:
        return rows
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    text = f"# Sweep summary, sorted by {monitor} ({mode})\n\n" + "\n".join(lines) + "\n"
    folds = fold_runs(rows)
    if folds:
        table = crossval_table(compare_choices(folds, mode))
        with open(sweep_dir / "crossval.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        text += "\n" + crossval_markdown(table, monitor)
    (sweep_dir / "summary.md").write_text(text)
    return rows


def crossval_table(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per choice of :func:`gtsrb.crossval.compare_choices`, best first, each named by the overrides
    that set it apart (all of them when there is one choice)."""
    shared = set.intersection(*(set(c["choice"].split()) for c in choices)) if len(choices) > 1 else set()
    table = []
    for i, choice in enumerate(choices):
        figure, paired = choice["figure"], choice.get("paired_with_best")
        name = " ".join(o for o in choice["choice"].split() if o not in shared)
        table.append({"choice": name or "(no overrides)", "folds": choice["folds"],
                      "seeds": " ".join(map(str, choice["seeds"])) or "none complete",
                      "figure": figure["mean"] if figure else None,
                      "std_over_seeds": figure["std"] if figure and len(choice["seeds"]) > 1 else None,
                      "std_over_folds": choice["std_over_folds"],
                      "difference_from_best": 0.0 if i == 0 and figure else (paired or {}).get("mean"),
                      "stderr": (paired or {}).get("stderr"),
                      "pairs": len(paired["pairs"]) if paired else None,
                      "runs": len(choice["scores"]),
                      "incomplete_seeds": " ".join(map(str, choice["incomplete_seeds"]))})
    return table


def crossval_markdown(table: list[dict[str, Any]], monitor: str) -> str:
    lines = [f"## Cross-validation: {monitor} at the last epoch", "",
             "Figure: each seed's mean over all the folds, then the mean over seeds. Two choices differ by the mean "
             "of their differences on the same (seed, fold), with its standard error; the folds move every choice "
             "alike, so their spread (std over folds) says little about the difference.", "",
             "| choice | folds | seeds | figure | std over seeds | std over folds | "
             "difference from the best (standard error, pairs) | runs | seeds missing a fold |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for row in table:
        diff = row["difference_from_best"]
        if diff is None:
            compared = ""
        elif row["pairs"] is None:
            compared = "best"
        else:
            compared = f"{diff:+.4f} ({row['stderr']:.4f}, {row['pairs']})"
        lines.append(f"| {row['choice']} | {row['folds']} | {row['seeds']} | {_cell(row['figure'])} | "
                     f"{_cell(row['std_over_seeds'])} | {_cell(row['std_over_folds'])} | {compared} | {row['runs']} | "
                     f"{row['incomplete_seeds']} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Writes the summary when the sweep ends; a grid sweep with a failed job then exits with status 1.

    In a search (``hparams_search``) failed trials are part of the search, marked failed in the summary:
    ``failed_jobs_are_fatal=false`` keeps the exit status 0 unless no job completed.
    """

    def __init__(self, failed_jobs_are_fatal: bool = True) -> None:
        self.failed_jobs_are_fatal = failed_jobs_are_fatal

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir, config.monitor, config.monitor_mode)
        if rows:
            print(f"sweep summary ({len(rows)} runs, best first): {sweep_dir / 'summary.md'}", flush=True)
        if fold_runs(rows):
            print(f"cross-validation, one figure per choice: {sweep_dir / 'summary.md'}", flush=True)
        failed = [row for row in rows if row["status"] == "failed"]
        completed = [row for row in rows if row["status"] == "completed"]
        if failed and (self.failed_jobs_are_fatal or not completed):
            for row in failed:
                print(f"error: sweep job {row['job']} ({row['overrides']}) failed: {row['error']}", file=sys.stderr)
            print(f"error: {len(failed)} of {len(rows)} sweep jobs failed; the others are in the summary",
                  file=sys.stderr, flush=True)
            sys.exit(1)
