"""A lever that acts on the last epochs only, measured from one shared checkpoint per fold.

Why: two whole runs of the same recipe, seed and fold diverge. Float rounding differs between machines, and from
there the runs take different paths: ``gtsrb_cpu_long``'s seed 0 read 99.81% and 99.59% after epoch 23 of fold 0
on two machines (benchmarks/README.md). A lever compared by whole runs must therefore beat that noise, several
times over. A lever that changes only the last epochs can be measured much more finely. Examples:
``augmentation.cooldown_epochs``, or anything a run resumed from a checkpoint may change.

How:
* Each (seed, fold) trains the recipe once, as :mod:`benchmarks.recipe` runs it, keeping the checkpoint written
  after epoch ``--from-epoch`` validated (:class:`CheckpointAt`).
* From that checkpoint it resumes twice, to the same last epoch:
  * once with ``--lever`` (the lever arm);
  * once without it (the control).
* Both arms start from the same weights, optimiser state, schedule position and weight average. They differ in
  the lever, and in the random draws of the epochs after the checkpoint: Lightning restores no random state.
* The control measures that second part. Its distance from the uninterrupted run is the noise floor that the
  lever's difference from the control must clear.
* Once the noise floor is known for a recipe, ``--no-control`` skips the control: the lever is then paired with
  the uninterrupted run, at half the cost.
* A finished run (one with ``metrics.json``) is kept, so an interrupted benchmark continues where it stopped.

    uv run python -m benchmarks.late_lever --root data --recipe gtsrb_cpu_long --from-epoch 23 \\
        --overrides trainer.precision=bf16-mixed time_budget_s=null trainer.max_epochs=28 \\
        --lever augmentation.cooldown_epochs=4 --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L

from benchmarks.recipe import run_dir, run_recipe
from gtsrb import crossval


class CheckpointAt(L.Callback):
    """Save the checkpoint of one epoch, once its validation has run. This is when the checkpoints of
    ``conf/callbacks`` are saved, so resuming from it starts the next epoch, as resuming from ``last.ckpt`` does."""

    def __init__(self, epoch: int, path: str) -> None:
        self.epoch, self.path = epoch, path

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def checkpoint_path(run: Path, epoch: int) -> Path:
    return run / f"resume_epoch{epoch}.ckpt"


def _train(args, out: Path, overrides: list[str], seed: int, fold: int) -> Path:
    """One run into :func:`~benchmarks.recipe.run_dir`, unless a finished one is there already."""
    run = run_dir(out, seed, fold)
    if (run / "metrics.json").is_file():
        print(f"kept: {run}", flush=True)
        return run
    spec = SimpleNamespace(out=str(out), recipe=args.recipe, root=args.root, recipe_folds=args.folds,
                           recipe_overrides=[*args.overrides, *overrides])
    return run_recipe(spec, seed, fold)


def run_fold(args, seed: int, fold: int) -> dict[str, Path]:
    """The uninterrupted run, then both arms (or the lever's alone) resumed from its checkpoint."""
    out = Path(args.out)
    ckpt = checkpoint_path(run_dir(out, seed, fold), args.from_epoch)
    save = ["+callbacks.resume_from._target_=benchmarks.late_lever.CheckpointAt",
            f"+callbacks.resume_from.epoch={args.from_epoch}", f"+callbacks.resume_from.path='{ckpt}'"]
    runs = {"uninterrupted": _train(args, out, save, seed, fold)}
    if not ckpt.is_file():
        raise SystemExit(f"{runs['uninterrupted']} saved no checkpoint after epoch {args.from_epoch}: does the "
                         "recipe train that many epochs? use a smaller --from-epoch")
    resume = f"ckpt_path='{ckpt}'"
    runs["lever"] = _train(args, out / "lever", [*args.lever, resume], seed, fold)
    if args.control:
        runs["control"] = _train(args, out / "control", [resume], seed, fold)
    return runs


def last_val_acc(run: Path) -> float:
    return json.loads((run / "clock.json").read_text())[-1]["val_acc"]


def at_epoch(run: Path, epoch: int) -> float | None:
    return next((row["val_acc"] for row in json.loads((run / "clock.json").read_text()) if row["epoch"] == epoch), None)


def summarise(runs: dict[tuple[int, int], dict[str, Path]], from_epoch: int) -> dict:
    """Per (seed, fold): the uninterrupted run at the checkpoint and at its end, each arm at its end; then the
    paired differences: lever minus control (the lever), control minus uninterrupted (the noise floor), and lever
    minus uninterrupted (the lever measured against the noise floor, where the control was skipped)."""
    rows = [{"seed": seed, "fold": fold, "at_checkpoint": at_epoch(r["uninterrupted"], from_epoch),
             "uninterrupted": last_val_acc(r["uninterrupted"]), "lever": last_val_acc(r["lever"]),
             "control": last_val_acc(r["control"]) if "control" in r else None}
            for (seed, fold), r in sorted(runs.items())]

    def scores(key: str) -> dict[tuple[int, int], float]:
        return {(row["seed"], row["fold"]): row[key] for row in rows if row[key] is not None}

    return {"from_epoch": from_epoch, "runs": rows,
            "mean": {key: crossval.spread(list(scores(key).values())) if scores(key) else None
                     for key in ("at_checkpoint", "uninterrupted", "lever", "control")},
            "lever_minus_control": crossval.paired_difference(scores("lever"), scores("control")),
            "control_minus_uninterrupted": crossval.paired_difference(scores("control"), scores("uninterrupted")),
            "lever_minus_uninterrupted": crossval.paired_difference(scores("lever"), scores("uninterrupted"))}


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def markdown(summary: dict, args) -> str:
    lever = " ".join(args.lever)
    arms = "and without (control)" if args.control else "only (no control: paired with the uninterrupted run)"
    lines = [f"`experiment={args.recipe}` {' '.join(args.overrides)}; from the checkpoint after epoch "
             f"{summary['from_epoch']}, resumed with `{lever}` (lever) {arms}:", "",
             f"| seed, fold | epoch {summary['from_epoch']} | uninterrupted, last epoch | control, last epoch | "
             "lever, last epoch | lever - control |", "|---|---:|---:|---:|---:|---:|"]
    for row in summary["runs"]:
        paired = "" if row["control"] is None else f"{(row['lever'] - row['control']) * 100:+.2f}"
        cells = " | ".join(_percent(row[k]) for k in ("at_checkpoint", "uninterrupted", "control", "lever"))
        lines.append(f"| {row['seed']}, {row['fold']} | {cells} | {paired} |")
    mean = summary["mean"]
    cells = " | ".join(_percent(mean[k]["mean"] if mean[k] else None)
                       for k in ("at_checkpoint", "uninterrupted", "control", "lever"))
    lines.append(f"| mean | {cells} | |")
    for key, what in (("lever_minus_control", "lever minus control"),
                      ("control_minus_uninterrupted", "control minus uninterrupted (the noise floor)"),
                      ("lever_minus_uninterrupted", "lever minus uninterrupted")):
        paired = summary[key]
        if paired and len(paired["pairs"]) > 1:
            lines.append(f"\n{what}: {paired['mean'] * 100:+.2f} points (standard error {paired['stderr'] * 100:.2f},"
                         f" {len(paired['pairs'])} pairs).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="data.root of the real GTSRB (torchvision layout)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", default="gtsrb_cpu_long")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, default=5, help="data.folds")
    parser.add_argument("--only-folds", type=int, nargs="+", default=None,
                        help="run these folds only (e.g. to share them between machines); default: all")
    parser.add_argument("--from-epoch", type=int, required=True,
                        help="resume both arms from the checkpoint after this epoch (0-based)")
    parser.add_argument("--lever", nargs="+", required=True, help="Hydra overrides of the lever arm")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of every run")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="resume a control arm without the lever (--no-control: pair the lever with the "
                             "uninterrupted run, where the noise floor is already known)")
    args = parser.parse_args(argv)
    folds = range(args.folds) if args.only_folds is None else args.only_folds
    runs = {(seed, fold): run_fold(args, seed, fold) for seed in args.seeds for fold in folds}
    summary = {"args": vars(args), **summarise(runs, args.from_epoch)}
    out = Path(args.out)
    (out / "late_lever.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "late_lever.md").write_text(markdown(summary, args))
    print(markdown(summary, args))


if __name__ == "__main__":
    main()
