"""Sweeps that survive failures: every grid job checked before the first starts, a job that fails at run time
recorded as failed while the others run, and a NaN loss stopped at once with one line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gtsrb.errors import UserError
from gtsrb.reporting import StopOnNonFiniteLoss
from test_train_cli import TINY_RUN, run_train


def test_a_bad_combination_stops_the_sweep_before_any_job_runs(tmp_path):
    proc = run_train("-m", *TINY_RUN, "data.image_size=32,4", f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: the sweep job with data.image_size=4 cannot run: "
                                                "data.image_size=4 is out of range; use a value between 8 and 1024"]
    assert not (tmp_path / "sweep").exists()


def test_a_job_that_fails_is_summarised_and_the_others_run(image_folder, tmp_path):
    """The issue's case: one truncated image; on_corrupt=error fails its job, on_corrupt=skip trains."""
    root = tmp_path / "images"
    shutil.copytree(image_folder, root)
    broken = root / "train" / "crossing" / "img0.png"
    broken.write_bytes(broken.read_bytes()[:80])
    sweep = tmp_path / "sweep"
    proc = run_train("-m", "experiment=quickstart", "data=folder", f"data.root={root}", "data.image_size=32",
                     "data.batch_size=4", "trainer.max_epochs=1", "callbacks.progress_bar=null", "logger=csv",
                     "data.on_corrupt=error,skip", f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(sweep / "summary.csv") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert rows["0"]["status"] == "failed" and "cannot decode image" in rows["0"]["error"]
    assert str(broken) in rows["0"]["error"] and rows["0"]["score"] == ""
    assert rows["1"]["status"] == "completed" and 0 <= float(rows["1"]["score"]) <= 1
    assert "data.on_corrupt=skip" in rows["1"]["overrides"]
    assert "failed" in (sweep / "summary.md").read_text()
    assert "error: 1 of 2 sweep jobs failed" in proc.stderr


def _trainer(epoch: int = 2, lr: float = 0.5) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, optimizers=[SimpleNamespace(param_groups=[{"lr": lr}])])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training_with_one_line(bad):
    guard = StopOnNonFiniteLoss()
    guard.on_train_batch_end(_trainer(), None, {"loss": torch.tensor(1.25)}, None, 0)  # a finite loss passes
    with pytest.raises(UserError, match=r"the training loss became (nan|inf) at epoch 2, batch 17 \(learning rate "
                                        r"0\.5\); lower optimizer\.lr") as info:
        guard.on_train_batch_end(_trainer(), None, {"loss": torch.tensor(bad)}, None, 17)
    assert "\n" not in str(info.value)


def test_a_run_whose_loss_turns_nan_stops_at_that_step(make_cfg, monkeypatch, one_thread):
    from gtsrb.module import TrafficSignClassifier
    from gtsrb.training import train

    original = TrafficSignClassifier.training_step

    def diverging(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 2 else loss

    monkeypatch.setattr(TrafficSignClassifier, "training_step", diverging)
    cfg = make_cfg("trainer.fast_dev_run=false", "trainer.max_epochs=3")
    with pytest.raises(UserError, match="the training loss became nan at epoch 0, batch 2 "):
        train(cfg)
    assert not (Path(cfg.output_dir) / "metrics.json").exists()
