"""final_checkpoint: the run ends on the best epoch by ``monitor`` (the default) or on the last epoch, and every
figure after training (the final validation and test, ``metrics.json``, ``evaluate.py ckpt_path=<run>``) comes from
that one checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gtsrb.checkpoint import resolve_checkpoint
from gtsrb.config import validate
from gtsrb.errors import UserError
from gtsrb.training import train

# monitor_mode=min on val/acc makes "best" the worst epoch, so best and last differ
THREE_EPOCHS = ("trainer.fast_dev_run=false", "trainer.max_epochs=3", "optimizer.lr=0.01", "monitor_mode=min",
                "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false")


def _report(cfg) -> dict:
    train(cfg)
    return json.loads((Path(cfg.output_dir) / "metrics.json").read_text())


@pytest.mark.parametrize("which", ["best", "last"])
def test_the_run_ends_on_the_checkpoint_it_names(make_cfg, one_thread, which):
    cfg = make_cfg(*THREE_EPOCHS, f"final_checkpoint={which}")
    report = _report(cfg)
    history = report["history"]
    chosen = min(history, key=lambda row: row["val/acc"]) if which == "best" else history[-1]
    other = history[-1] if which == "best" else min(history, key=lambda row: row["val/acc"])
    assert chosen["epoch"] != other["epoch"]  # the setup tells the two apart

    ended_on = Path(report["best_checkpoint"])
    assert ended_on.name == ("last.ckpt" if which == "last" else f"best-epoch{chosen['epoch']:03d}.ckpt")
    assert report["final_checkpoint"] == which
    assert report["final"]["val"]["val/loss"] == pytest.approx(chosen["val/loss"], rel=1e-4)
    assert report["final"]["val"]["val/loss"] != pytest.approx(other["val/loss"], rel=1e-4)
    assert resolve_checkpoint(cfg.output_dir) == ended_on  # what evaluate.py, export and serve load


def test_last_without_a_checkpoint_of_the_last_epoch_is_refused(make_cfg):
    cfg = make_cfg("final_checkpoint=last", "callbacks.last_checkpoint=null")
    with pytest.raises(UserError, match="callbacks.last_checkpoint"):
        validate(cfg)
    validate(make_cfg("final_checkpoint=last", "callbacks=none"))  # nothing saved: the weights in memory are the last
    with pytest.raises(UserError, match="final_checkpoint"):
        validate(make_cfg("final_checkpoint=latest"))
