"""benchmarks/late_lever.py: both arms resume from the same checkpoint, and only the lever arm changes its epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.late_lever import main, summarise


def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]


def test_both_arms_resume_after_the_checkpoint_and_only_the_lever_cools_down(gtsrb_root, tmp_path, capsys):
    out = tmp_path / "late"
    argv = ["--root", str(gtsrb_root), "--out", str(out), "--recipe", "gtsrb_cpu", "--folds", "2", "--only-folds", "1",
            "--from-epoch", "0", "--lever", "augmentation.cooldown_epochs=1",
            "--overrides", "time_budget_s=null", "trainer.max_epochs=2", "augmentation=strong",
            "augmentation.cooldown_epochs=0", "model=simple_cnn",
            "trainer=cpu", "data.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}"]
    main(argv)
    run = "recipe/seed0_fold1"
    assert [row["epoch"] for row in _history(out / run)] == [0, 1]
    for arm in ("lever", "control"):  # resumed: trained the epoch after the checkpoint only, on the same fold
        assert [row["epoch"] for row in json.loads((out / arm / run / "clock.json").read_text())] == [1]
        assert json.loads((out / arm / run / "metrics.json").read_text())["config"]["data"]["fold"] == 1
    # the history carries on from the checkpoint's; only the lever's resumed epoch cooled down
    assert [row.get("train/augmentation_cooldown") for row in _history(out / "lever" / run)] == [None, 1.0]
    assert [row.get("train/augmentation_cooldown") for row in _history(out / "control" / run)] == [None] * 2
    summary = json.loads((out / "late_lever.json").read_text())
    assert [(row["seed"], row["fold"]) for row in summary["runs"]] == [(0, 1)]
    assert summary["runs"][0]["at_checkpoint"] == pytest.approx(_history(out / run)[0]["val/acc"])

    capsys.readouterr()
    main(argv)  # a second call keeps every finished run
    assert capsys.readouterr().out.count("kept: ") == 3

    main([*argv, "--no-control"])  # the lever paired with the uninterrupted run; the control is left out
    assert capsys.readouterr().out.count("kept: ") == 2
    summary = json.loads((out / "late_lever.json").read_text())
    assert summary["runs"][0]["control"] is None and summary["lever_minus_control"] is None
    assert summary["lever_minus_uninterrupted"]["pairs"][0]["difference"] == pytest.approx(
        summary["runs"][0]["lever"] - summary["runs"][0]["uninterrupted"], abs=1e-5)


def _run(path: Path, accs: dict[int, float]) -> Path:
    path.mkdir(parents=True)
    (path / "clock.json").write_text(json.dumps([{"epoch": e, "val_acc": a} for e, a in accs.items()]))
    return path


def test_the_lever_is_paired_with_its_control_and_the_control_with_the_uninterrupted_run(tmp_path):
    runs = {}
    for fold, (base, control, lever) in enumerate([(0.990, 0.991, 0.994), (0.980, 0.978, 0.982)]):
        d = tmp_path / str(fold)
        runs[(0, fold)] = {"uninterrupted": _run(d / "u", {3: 0.97, 4: base}), "control": _run(d / "c", {4: control}),
                           "lever": _run(d / "l", {4: lever})}
    summary = summarise(runs, from_epoch=3)
    assert [row["at_checkpoint"] for row in summary["runs"]] == [0.97, 0.97]
    assert summary["lever_minus_control"]["mean"] == pytest.approx(0.0035)  # +0.003 and +0.004
    assert summary["control_minus_uninterrupted"]["mean"] == pytest.approx(-0.0005)  # +0.001 and -0.002
    assert summary["mean"]["lever"]["mean"] == pytest.approx(0.988)
    assert summary["lever_minus_uninterrupted"]["mean"] == pytest.approx(0.003)  # +0.004 and +0.002

    for arms in runs.values():  # --no-control: the lever against the uninterrupted run alone
        del arms["control"]
    summary = summarise(runs, from_epoch=3)
    assert summary["lever_minus_control"] is None and summary["mean"]["control"] is None
    assert summary["lever_minus_uninterrupted"]["mean"] == pytest.approx(0.003)
