"""time_budget_s: the epochs that fit are planned before training, trained, recorded, and kept on resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import gtsrb.budget
from gtsrb.budget import limited_batches, plan_epochs, time_training_step
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.errors import UserError
from gtsrb.models.factory import build_model
from gtsrb.training import train


@pytest.mark.parametrize("elapsed", [0.0, 10.0, 55.0])
def test_plan_is_the_most_epochs_that_end_within_the_budget(elapsed):
    plan = plan_epochs(100.0, elapsed, step_s=0.1, train_batches=100, val_batches=20, closing_batches=40,
                       ceiling=None)
    end = elapsed + plan.closing_s
    assert end + plan.epochs * plan.epoch_s <= 100.0 < end + (plan.epochs + 1) * plan.epoch_s
    assert plan.epoch_s > 0.1 * 100  # a whole epoch costs more than its training steps alone


def test_plan_keeps_to_the_ceiling_and_trains_at_least_one_epoch():
    roomy = dict(step_s=0.01, train_batches=10, val_batches=2, closing_batches=4)
    assert plan_epochs(1000.0, 0.0, **roomy, ceiling=3).epochs == 3
    assert plan_epochs(1000.0, 0.0, **roomy, ceiling=-1).epochs > 3  # -1: Lightning's "no limit"
    assert plan_epochs(1.0, 5.0, **roomy, ceiling=3).epochs == 1  # over budget already: one epoch, with a warning


def test_plan_trains_the_fewest_epochs_the_run_needs_and_says_by_how_much_it_overruns(caplog):
    """A cooldown of N epochs needs N + 1: a slow machine trains them over budget rather than being refused."""
    tight = dict(step_s=1.0, train_batches=10, val_batches=2, closing_batches=4)  # 13.2 s an epoch, 2.4 s closing
    assert plan_epochs(30.0, 0.0, **tight, ceiling=10).epochs == 2  # 2 fit
    with caplog.at_level("WARNING", logger="gtsrb.budget"):
        plan = plan_epochs(30.0, 0.0, **tight, ceiling=10, fewest=5, why_fewest=" (the cooldown)")
    assert plan.epochs == 5
    assert "2 fit; training 5 (the cooldown), about 38 s over" in caplog.text  # 2.4 + 5 * 13.2 - 30 = 38.4
    assert plan_epochs(1000.0, 0.0, **tight, ceiling=10, fewest=5).epochs == 10  # room: the floor changes nothing
    assert plan_epochs(30.0, 0.0, **tight, ceiling=3, fewest=5).epochs == 3  # never above the ceiling


def test_timing_a_step_leaves_the_network_and_the_random_stream_alone(make_cfg):
    cfg = make_cfg("augmentation=standard", "data.batch_size=16")
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    datamodule.setup("fit")
    network = build_model("simple_cnn", datamodule.num_classes)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    torch.manual_seed(0)
    train_set = datamodule.splits["train"]
    seconds = time_training_step(network, datamodule.augment, train_set.images[:16], train_set.labels[:16],
                                 bf16=False, channels_last=True, steps=2, warmup=1)
    assert seconds > 0
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # trained a copy
    drawn = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(1))  # augmentation drew from a forked stream


def test_plan_counts_only_the_batches_lightning_will_run():
    assert [limited_batches(100, limit) for limit in (None, 1.0, 0.25, 10, 500)] == [100, 100, 25, 10, 100]


@pytest.fixture
def step_seconds(monkeypatch):
    """Training steps that take ``seconds`` each as far as the plan knows, and a process that starts now: the
    plan then depends on the budget alone, not on this machine or on how long the test session has run."""
    started = time.time()
    monkeypatch.setattr(gtsrb.budget, "process_start", lambda: started)

    def set_seconds(seconds: float):
        monkeypatch.setattr(gtsrb.budget, "time_training_step", lambda *args, **kwargs: seconds)

    return set_seconds


def _budget_run(make_cfg, *overrides):
    return make_cfg("trainer.fast_dev_run=false", "trainer.max_epochs=10", "callbacks.progress_bar=null",
                    "+trainer.enable_progress_bar=false", "data.batch_size=16", *overrides)


def test_run_trains_the_planned_epochs_and_records_the_plan(make_cfg, step_seconds, one_thread):
    step_seconds(10.0)  # 86 training images in batches of 16: 5 steps, about 84 s an epoch with validation
    cfg = _budget_run(make_cfg, "time_budget_s=300")
    train(cfg)
    out = Path(cfg.output_dir)
    report = json.loads((out / "metrics.json").read_text())
    plan = report["time_budget"]
    assert 1 < plan["epochs"] < 10  # the budget, not the ceiling, set it
    assert plan["elapsed_s"] + plan["epochs"] * plan["epoch_s"] + plan["closing_s"] <= 300
    assert len(report["history"]) == plan["epochs"] == report["config"]["trainer"]["max_epochs"]
    assert len(plan["epoch_s_measured"]) == plan["epochs"]
    assert json.loads((out / "time_budget.json").read_text())["epochs"] == plan["epochs"]

    # resumed (a requeued job), with steps now ten times faster: the schedule keeps its planned length
    step_seconds(1.0)
    again = _budget_run(make_cfg, "time_budget_s=300", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    train(again)
    assert json.loads((out / "metrics.json").read_text())["config"]["trainer"]["max_epochs"] == plan["epochs"]


@pytest.mark.parametrize("cooldown", ["1", "0.25"])  # one epoch, or a share of the run (which needs two as well)
def test_a_budget_too_short_for_the_cooldown_trains_it_anyway(make_cfg, step_seconds, one_thread, cooldown):
    step_seconds(100.0)  # one training and one validation batch: 180 s an epoch, so one fits in 300 s
    cfg = _budget_run(make_cfg, "time_budget_s=300", "augmentation=strong", f"augmentation.cooldown_epochs={cooldown}",
                      "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    train(cfg)  # without the floor the plan was 1 epoch, and the cooldown refused to cover all of it
    report = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert report["time_budget"]["epochs"] == len(report["history"]) == 2


def test_resuming_without_the_plan_is_refused_with_the_fix(make_cfg, tmp_path):
    foreign = tmp_path / "elsewhere" / "checkpoints" / "last.ckpt"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"")
    cfg = _budget_run(make_cfg, "time_budget_s=300", f"ckpt_path={foreign}")
    with pytest.raises(UserError, match="time_budget.json.*trainer.max_epochs"):
        train(cfg)


def test_budget_on_several_processes_is_refused_with_the_fix(make_cfg):
    cfg = _budget_run(make_cfg, "time_budget_s=300", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")
    with pytest.raises(UserError, match="time_budget_s=null and choose trainer.max_epochs"):
        train(cfg)
