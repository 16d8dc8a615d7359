"""The recipe benchmark: train a recipe over seeds and folds, summarise, and compare two recipes fold by fold.

The protocol (benchmarks/README.md, "Five folds of blocks"): every seed trains once on each of five folds of
held-out blocks of tracks. A recipe's figure is its mean over the folds, per seed; two recipes are compared by
their differences on the same (seed, fold), because which tracks a fold holds out moved one recipe by more
than a point, while it moves two recipes alike. The arithmetic is :mod:`gtsrb.crossval`'s, which a sweep over
``data.fold`` uses too; this adds the clock: time to a target accuracy on the protocol.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from gtsrb import crossval

REPO = Path(__file__).resolve().parent.parent


def run_dir(out: str | Path, seed: int, fold: int | None = None) -> Path:
    """Where :func:`run_recipe` trains ``seed`` (on ``fold``) under ``out``."""
    return Path(out) / "recipe" / (f"seed{seed}" if fold is None else f"seed{seed}_fold{fold}")


def run_recipe(args, seed: int, fold: int | None = None) -> Path:
    """Train the recipe once into :func:`run_dir`; ``fold`` holds out that part of ``--recipe-folds`` (k-fold over
    blocks of tracks) instead of the one fixed split."""
    out = run_dir(args.out, seed, fold)
    folds = [] if fold is None else [f"data.folds={args.recipe_folds}", f"data.fold={fold}"]
    cmd = [sys.executable, str(REPO / "train.py"), f"experiment={args.recipe}", f"data.root={args.root}",
           f"seed={seed}", *folds, *args.recipe_overrides, "logger=csv", "callbacks.progress_bar=null",
           "+trainer.enable_progress_bar=false", "test=false",
           "+callbacks.clock._target_=benchmarks.recipe_clock.EpochClock", f"hydra.run.dir={out}"]
    print("recipe:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def summarise_recipe(run_dirs: list[Path], targets: list[float]) -> dict:
    """Per run: accuracies, times to ``targets``, precision, load; over runs: mean and spread, and with folds
    the protocol's figure per seed (:func:`over_folds`)."""
    runs = []
    for run in run_dirs:
        metrics = json.loads((run / "metrics.json").read_text())
        clock = json.loads((run / "clock.json").read_text())
        first = {target: next((row["since_process_start_s"] for row in clock if row["val_acc"] >= target), None)
                 for target in targets}
        data = metrics["config"]["data"]
        probe = metrics.get("precision_probe_s_per_step") or {}
        runs.append({"run": str(run), "seed": metrics["config"]["seed"], "best_val_acc": metrics["best_score"],
                     "val_split": data.get("val_split", "tracks"),
                     "fold": f"{data['fold']} of {data['folds']}" if data.get("folds") else None,
                     "precision": str(metrics["config"]["trainer"].get("precision", "32-true")),
                     "bf16_speedup": (round(probe["32-true"] / probe["bf16-mixed"], 2) if len(probe) == 2 else None),
                     "last_val_acc": clock[-1]["val_acc"], "wall_s": metrics["seconds"], "epochs": len(clock),
                     "done_s": clock[-1]["since_process_start_s"],
                     "time_to_target_s": {str(target): first[target] for target in targets},
                     "curve": [[row["since_process_start_s"], row["val_acc"]] for row in clock],
                     "loadavg_during": [row["loadavg"][0] for row in clock]})
    summary = {"targets": targets, "runs": runs, "best_val_acc": crossval.spread([r["best_val_acc"] for r in runs]),
               "last_val_acc": crossval.spread([r["last_val_acc"] for r in runs]),
               "wall_s_mean": round(statistics.mean(r["wall_s"] for r in runs), 1),
               "done_s_mean": round(statistics.mean(r["done_s"] for r in runs), 1)}
    if any(r["fold"] for r in runs):
        summary["over_folds"] = over_folds(runs, targets)
    return summary


def over_folds(runs: list[dict], targets: list[float] = ()) -> dict:
    """The protocol's figure (:func:`gtsrb.crossval.seed_figures`): each seed's mean over its folds (seeds that
    ran every fold), then their mean and spread over seeds; so "three seeds" means three five-fold figures, not
    fifteen runs pooled.

    Time to a target on the protocol: the first epoch at which the seed's mean over folds reaches it, at the
    folds' mean time to that epoch (runs with a curve of equal length only)."""
    fold_runs = [run for run in runs if run["fold"]]
    folds = max(int(r["fold"].split(" of ")[1]) for r in fold_runs)
    result: dict = {"folds": folds}
    for key in ("best_val_acc", "last_val_acc"):
        figures, incomplete = crossval.seed_figures({(r["seed"], r["fold"]): r[key] for r in fold_runs}, folds)
        result[key] = {"per_seed": {str(s): round(v, 5) for s, v in figures.items()},
                       **crossval.spread(list(figures.values()))} if figures else None
    result["seeds"], result["incomplete_seeds"] = list(figures), incomplete
    result["time_to_target_s"] = {str(t): {str(seed): _time_to([r for r in fold_runs if r["seed"] == seed], t)
                                           for seed in figures} for t in targets}
    return result


def _time_to(runs: list[dict], target: float) -> float | None:
    """Seconds until the mean over ``runs`` (one seed's folds) of the validation accuracy first reaches ``target``."""
    curves = [r.get("curve") or [] for r in runs]
    if not curves[0] or len({len(c) for c in curves}) != 1:
        return None
    for epoch in range(len(curves[0])):
        if statistics.mean(c[epoch][1] for c in curves) >= target:
            return round(statistics.mean(c[epoch][0] for c in curves), 1)
    return None


def paired_difference(runs: list[dict], baseline: list[dict], key: str = "last_val_acc") -> dict | None:
    """``runs`` minus ``baseline`` on every (seed, fold) both ran (:func:`gtsrb.crossval.paired_difference`).
    ``None`` when they share no (seed, fold)."""
    paired = crossval.paired_difference({(r["seed"], r["fold"]): r[key] for r in runs},
                                        {(r["seed"], r["fold"]): r[key] for r in baseline})
    return None if paired is None else {"key": key, **paired}


def compare_with(runs: list[dict], baseline_json: str | Path) -> dict:
    """:func:`paired_difference` against the runs of another benchmark's ``benchmark.json``."""
    path = Path(baseline_json)
    try:
        baseline = json.loads(path.read_text())["recipe"]["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--recipe-baseline {path}: not a recipe benchmark.json ({error!r}); "
                         "give the benchmark.json that benchmarks.run --only recipe wrote") from None
    paired = paired_difference(runs, baseline)
    if paired is None:
        raise SystemExit(f"--recipe-baseline {path} ran no (seed, fold) that these runs ran; "
                         "measure both with the same --recipe-seeds and --recipe-folds")
    return {"baseline": str(path), **paired}


def recipe_markdown(r: dict, a: dict) -> list[str]:
    """The recipe's table: one row per run, the mean over runs, the protocol's figure and the paired comparison."""
    splits = ", ".join(sorted({run["val_split"] for run in r["runs"]}))
    variant = "".join(f" {o}" for o in a.get("recipe_overrides") or [])
    lines = [f"Recipe `experiment={a['recipe']}{variant}` (validation split: `data.val_split={splits}`):", "",
             "| seed | val acc of the checkpoint kept | last-epoch val acc | "
             + "".join(f"time to {t:.1%} val (s) | " for t in r["targets"])
             + "last epoch validated (s) | precision | load avg per epoch |",
             "|---:|---:|---:|" + "---:|" * len(r["targets"]) + "---:|---|---|"]
    for run in r["runs"]:
        times = "".join("not reached | " if s is None else f"{s:.0f} | " for s in run["time_to_target_s"].values())
        precision = run.get("precision", "")
        if run.get("bf16_speedup"):  # trainer.precision=fastest measured both: say by how much it chose
            precision += f" (bf16 {run['bf16_speedup']:.2f}x fp32 at start)"
        seed = run["seed"] if not run.get("fold") else f"{run['seed']}, fold {run['fold']}"
        lines.append(f"| {seed} | {run['best_val_acc']:.4f} | {run['last_val_acc']:.4f} | {times}"
                     f"{run['done_s']:.0f} | {precision} | {', '.join(str(x) for x in run['loadavg_during'])} |")
    best, last = r["best_val_acc"], r["last_val_acc"]
    gap = "| " * len(r["targets"])
    lines.append(f"| mean ± std over runs | {best['mean']:.4f} ± {best['std']:.4f} | "
                 f"{last['mean']:.4f} ± {last['std']:.4f} | {gap}{r['done_s_mean']:.0f} | | |")
    folds = r.get("over_folds")
    if folds and folds["best_val_acc"]:
        best, last = folds["best_val_acc"], folds["last_val_acc"]
        if len(folds["seeds"]) > 1:
            what = f"mean over {folds['folds']} folds, mean ± std over seeds {', '.join(map(str, folds['seeds']))}"
            cells = f"{best['mean']:.4f} ± {best['std']:.4f} | {last['mean']:.4f} ± {last['std']:.4f}"
        else:
            what = f"mean over {folds['folds']} folds (seed {folds['seeds'][0]})"
            cells = f"{best['mean']:.4f} | {last['mean']:.4f}"
        times = "".join(f"{_seconds(list(per_seed.values()))} | " for per_seed in folds["time_to_target_s"].values())
        lines.append(f"| {what} | {cells} | {times}| | |")
    paired = r.get("paired")
    if paired:
        each = ", ".join(f"{p['difference'] * 100:+.2f}" for p in paired["pairs"])
        lines += ["", f"Paired with `{paired['baseline']}` on the same (seed, fold), {paired['key']}: "
                      f"{paired['mean'] * 100:+.2f} points (standard error {paired['stderr'] * 100:.2f}; "
                      f"pair by pair {each})."]
    return lines


def _seconds(values: list[float | None]) -> str:
    """Seconds per seed, as one cell: their mean, or "not reached" when a seed never got there."""
    if not values or any(v is None for v in values):
        return "not reached" if values else ""
    return f"{statistics.mean(values):.0f}"
