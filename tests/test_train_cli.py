"""``train.py`` end to end, as a user runs it: a run's artifacts, resuming, a sweep, and the error messages."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["experiment=quickstart", "data.train_per_class=3", "data.val_per_class=2", "data.test_per_class=2",
            "callbacks.progress_bar=null", "trainer.log_every_n_steps=1"]


def run_train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    return run_dir, run_train(*TINY_RUN, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}")


def test_quickstart_leaves_a_complete_run(quickstart_run):
    run_dir, proc = quickstart_run
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    report = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in report["history"]] == [0, 1]
    assert {"train/loss", "train/acc", "val/acc", "val/f1", "val/ece", "val/nll", "val/top5"} <= set(report["history"][-1])
    assert {"val", "test"} == set(report["final"])
    assert report["best_score"] == report["final"]["val"]["val/acc"]
    assert report["config"]["model"]["name"] == "simple_cnn"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1  # the latest epoch, whichever was best
    # the run says where everything went
    assert f"run directory: {run_dir}" in proc.stdout and "tensorboard --logdir" in proc.stdout


def test_tensorboard_has_scalars_learning_rates_and_hparams(quickstart_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = quickstart_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/acc", "train/loss_epoch", "hp/val/acc", "hp/test/acc"} <= scalars
    assert any(tag.startswith("lr-AdamW/head") for tag in scalars)
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_resume_from_last_checkpoint_continues_and_keeps_the_first_run(quickstart_run, tmp_path):
    run_dir, _ = quickstart_run
    before = (run_dir / "metrics.json").read_text()
    resumed = tmp_path / "resumed"
    run_train(*TINY_RUN, "trainer.max_epochs=3", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
              f"hydra.run.dir={resumed}")
    report = json.loads((resumed / "metrics.json").read_text())
    assert [row["epoch"] for row in report["history"]] == [0, 1, 2]  # history travels in the checkpoint
    assert report["epochs"] == 3
    assert (run_dir / "metrics.json").read_text() == before


def test_multirun_sweeps_every_combination_and_writes_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    run_train("-m", *TINY_RUN, "trainer.max_epochs=1", "mixup=none,cutmix", f"hydra.sweep.dir={sweep}")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"].split("mixup=")[-1].split()[0] for r in rows) == ["cutmix", "none"]
    scores = [float(r["score"]) for r in rows]
    assert scores == [float(r["val/acc"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert "| job |" in (sweep / "summary.md").read_text()


def test_a_sweep_over_folds_ends_with_one_figure_per_choice(gtsrb_root, tmp_path):
    """Each choice's figure is the mean of its folds' last-epoch accuracies, as the jobs' own reports give them."""
    sweep = tmp_path / "sweep"
    run_train("-m", "data=gtsrb", f"data.root={gtsrb_root}", "data.folds=2", "data.fold=0,1", "mixup=none,cutmix",
              "model=simple_cnn", "model.pretrained=false", "data.batch_size=8", "trainer.max_epochs=1", "seed=3",
              "callbacks.progress_bar=null", "test=false", f"hydra.sweep.dir={sweep}")
    last: dict[str, list[float]] = {}
    for report in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")):
        mixup = next(o for o in report["overrides"] if o.startswith("mixup="))
        last.setdefault(mixup, []).append(report["history"][-1]["val/acc"])
    with open(sweep / "crossval.csv") as f:
        table = {row["choice"]: row for row in csv.DictReader(f)}
    assert set(table) == {"mixup=none", "mixup=cutmix"} and all(len(v) == 2 for v in last.values())
    for choice, row in table.items():
        assert float(row["figure"]) == pytest.approx(sum(last[choice]) / 2, abs=1e-5)  # rounded to 5 places
        assert row["seeds"] == "3" and row["runs"] == "2"  # the seed and the folds are not the choice
    assert "## Cross-validation" in (sweep / "summary.md").read_text()


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["model=resnet_9000"], ["unknown model 'resnet_9000'", "simple_cnn", "mobilenet_v3_small"]),
    (["-m", "mixup=none,mixdown"], ["unknown mixup 'mixdown'", "cutmix"]),
    (["data.batch_size=abc"], ["data.batch_size", "abc"]),
    (["data.val_fraction=1.5"], ["data.val_fraction=1.5", "between"]),
    (["scheduler.name=step"], ["scheduler.name=step", "onecycle"]),
    (["augmentation.cooldown.rotation=5"], ["augmentation.cooldown.rotation", "use +augmentation.cooldown.rotation=5"]),
], ids=["unknown-option", "unknown-sweep-option", "wrong-type", "out-of-range", "bad-choice", "new-key-without-plus"])
def test_bad_overrides_fail_fast_with_one_line(args, expected, tmp_path):
    line = _error_line(run_train(*args, f"hydra.run.dir={tmp_path}", check=False))
    for text in expected:
        assert text in line
    assert not list(tmp_path.iterdir())  # nothing was started


def test_a_misspelt_key_is_not_offered_as_a_new_one(tmp_path):
    """The schema refuses ``+optimizer.lrr`` too: the fix for a typo is the right name, not a plus."""
    line = _error_line(run_train("optimizer.lrr=1e-3", f"hydra.run.dir={tmp_path}", check=False))
    assert "optimizer.lrr" in line and "not in 'OptimizerConfig'" in line and "+optimizer" not in line


@pytest.mark.parametrize(("args", "expected"), [
    (["data=gtsrb", "data.root=/nonexistent/gtsrb"], ["/nonexistent/gtsrb", "data.download"]),
    (["model=resnet18", "model.pretrained=false", "data.image_size=16"], ["data.image_size=16", "data.image_size=32"]),
    (["model=resnet18", "model.pretrained=true"], ["model.pretrained=false", "model.weights="]),
    (["model=simple_cnn", "+model.kwargs.widht=[8]"], ["simple_cnn", "model.kwargs.widht=[8]", "widht"]),
], ids=["missing-dataset", "image-too-small", "offline-pretrained", "misspelt-model-kwarg"])
def test_runtime_problems_fail_with_one_line(args, expected, tmp_path):
    line = _error_line(run_train(*TINY_RUN, *args, f"hydra.run.dir={tmp_path / 'run'}", check=False))
    for text in expected:
        assert text in line
