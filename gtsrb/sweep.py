"""A Hydra callback that tabulates a finished multirun: ``summary.csv`` and ``summary.md``.

Each job writes ``metrics.json`` into its own sub-directory; when the sweep
ends the table lists every job's overrides next to its monitored metric and
final scores, best first, so a sweep answers its question at a glance.
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
        rows.append(row)
    return rows


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
    (sweep_dir / "summary.md").write_text(f"# Sweep summary, sorted by {monitor} ({mode})\n\n" + "\n".join(lines) + "\n")
    return rows


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
        failed = [row for row in rows if row["status"] == "failed"]
        completed = [row for row in rows if row["status"] == "completed"]
        if failed and (self.failed_jobs_are_fatal or not completed):
            for row in failed:
                print(f"error: sweep job {row['job']} ({row['overrides']}) failed: {row['error']}", file=sys.stderr)
            print(f"error: {len(failed)} of {len(rows)} sweep jobs failed; the others are in the summary",
                  file=sys.stderr, flush=True)
            sys.exit(1)
