"""Runs and sweeps that survive failures: every grid job checked before the first starts, a job that fails at
run time recorded as failed while the others run, a NaN loss stopped at once with one line, and a run ended by
SIGTERM or Ctrl+C saved with the command that resumes it, also when the signal comes during validation."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from gtsrb.errors import UserError
from gtsrb.reporting import StopOnNonFiniteLoss
from test_train_cli import ROOT, TINY_RUN, run_train


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
    cfg = make_cfg("trainer.fast_dev_run=false", "trainer.max_epochs=3",
                   "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null")
    with pytest.raises(UserError, match="the training loss became nan at epoch 0, batch 2 "):
        train(cfg)
    assert not (Path(cfg.output_dir) / "metrics.json").exists()


def test_sigterm_saves_where_the_run_was_and_the_printed_command_resumes_it(tmp_path):
    """A real run gets SIGTERM mid-training: it saves interrupted.ckpt, prints the resume command, exits 143; the
    command resumes from the saved step and the history of the epochs before is kept."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [*TINY_RUN, "trainer.max_epochs=200", "logger=csv", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("best-*.ckpt")) and time.time() < deadline:  # an epoch is done
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    saved = run_dir / "checkpoints" / "interrupted.ckpt"
    assert saved.is_file()
    [line] = [line for line in err.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[:3] == ["uv", "run", "train.py"] and command[-1] == f"ckpt_path={saved}"
    assert not any(a.startswith("hydra.") for a in command)
    interrupted = torch.load(saved, weights_only=False)
    epoch, step = interrupted["epoch"], interrupted["global_step"]
    assert step > 0

    resumed_dir = tmp_path / "resumed"
    resumed_args = [a if not a.startswith("trainer.max_epochs=") else f"trainer.max_epochs={epoch + 2}"
                    for a in command[3:]]
    resumed = run_train(*resumed_args, f"hydra.run.dir={resumed_dir}")
    assert resumed.returncode == 0
    report = json.loads((resumed_dir / "metrics.json").read_text())
    assert report["history"][-1]["epoch"] == epoch + 1 and report["history"][-1]["step"] > step
    assert [row["epoch"] for row in report["history"]][:epoch] == list(range(epoch))  # the epochs before, kept
    assert not (run_dir / "metrics.json").exists()  # the interrupted run is left as it was


class _TrainingSteps(L.Callback):
    """The global step each training batch of this fit started at."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(trainer.global_step)


def test_a_run_started_again_in_its_directory_off_slurm_trains_afresh(make_cfg, monkeypatch, recwarn, one_thread):
    """Lightning takes ``fit(ckpt_path=None)`` as "last" when an OnExceptionCheckpoint is among the callbacks
    (Lightning issue 19827): the second run here found the first one's last.ckpt, finished, and trained nothing.
    Resuming stays explicit off SLURM (gtsrb/preemption.py), and a new run no longer warns about checkpoints."""
    import gtsrb.training
    from gtsrb.training import build_callbacks, train

    run = ["trainer.fast_dev_run=false", "trainer.max_epochs=1", "callbacks.progress_bar=null",
           "+trainer.enable_progress_bar=false"]
    first = make_cfg(*run)
    train(first)
    assert (Path(first.output_dir) / "checkpoints" / "last.ckpt").is_file()
    spy = _TrainingSteps()
    monkeypatch.setattr(gtsrb.training, "build_callbacks", lambda cfg, with_logger=True: [
        spy, *build_callbacks(cfg, with_logger)])
    again = make_cfg(*run)
    assert again.output_dir == first.output_dir
    train(again)
    assert spy.steps and spy.steps[0] == 0  # trained from the first step, not resumed past the end
    assert not [w for w in recwarn if "ckpt_path" in str(w.message)]


class _SignalDuringValidation(L.Callback):
    """Sends this process ``signum`` (``times`` times) at the first batch of epoch 1's validation."""

    def __init__(self, signum: int, times: int) -> None:
        self.signum, self.times, self.sent = signum, times, False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == 1 and batch_idx == 0 and not trainer.sanity_checking and not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 1)], ids=["sigterm", "ctrl-c"])
def test_an_interruption_during_validation_is_saved_after_it_and_resumes(signum, exit_code, make_cfg, monkeypatch,
                                                                         capsys, one_thread):
    """Lightning would stop after the current validation batch, and the resumed run would skip that validation and
    fail in early stopping (no val/acc). The signal is held until validation ends; the run is saved at the end of
    the epoch, and resuming trains the remaining epochs with the history of the first two kept."""
    import gtsrb.training
    from gtsrb.training import build_callbacks, train

    monkeypatch.setattr(gtsrb.training, "build_callbacks", lambda cfg, with_logger=True: [
        _SignalDuringValidation(signum, times=1), *build_callbacks(cfg, with_logger)])
    run = ["trainer.fast_dev_run=false", "trainer.max_epochs=4", "callbacks.progress_bar=null",
           "+trainer.enable_progress_bar=false"]
    cfg = make_cfg(*run)
    try:
        with pytest.raises(SystemExit) as stopped:
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert stopped.value.code == exit_code
    saved = Path(cfg.output_dir) / "checkpoints" / "interrupted.ckpt"
    state = torch.load(saved, weights_only=False)
    assert state["epoch"] == 2  # epoch 1 finished, its validation included
    kept = state["callbacks"]["EpochHistory"]["history"]
    assert [row["epoch"] for row in kept] == [0, 1] and all("val/acc" in row for row in kept)
    cause = "SIGTERM" if signum == signal.SIGTERM else "Ctrl+C"
    assert f"interrupted by {cause} at epoch 2" in capsys.readouterr().err

    monkeypatch.setattr(gtsrb.training, "build_callbacks", build_callbacks)
    resumed = make_cfg(*run, f"ckpt_path={saved}")
    train(resumed)
    report = json.loads((Path(resumed.output_dir) / "metrics.json").read_text())
    assert [row["epoch"] for row in report["history"]] == [0, 1, 2, 3] and report["history"][:2] == kept


def test_ctrl_c_twice_during_validation_stops_at_once_and_points_to_the_epoch_before(make_cfg, monkeypatch, capsys,
                                                                                    one_thread):
    """The second Ctrl+C stops in the middle of validation, a state that cannot resume: nothing is saved as
    interrupted.ckpt, and the message names last.ckpt, the end of epoch 0, which resumes."""
    import gtsrb.training
    from gtsrb.training import build_callbacks, train

    monkeypatch.setattr(gtsrb.training, "build_callbacks", lambda cfg, with_logger=True: [
        _SignalDuringValidation(signal.SIGINT, times=2), *build_callbacks(cfg, with_logger)])
    cfg = make_cfg("trainer.fast_dev_run=false", "trainer.max_epochs=3", "callbacks.progress_bar=null",
                   "+trainer.enable_progress_bar=false")
    try:
        with pytest.raises(SystemExit) as stopped:
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl+C after the first one
    assert stopped.value.code == 1
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    assert not (checkpoints / "interrupted.ckpt").exists()
    err = capsys.readouterr().err
    assert f"interrupted by Ctrl+C during the validation of epoch 1, which cannot resume halfway; resume from the " \
           f"end of the epoch before with ckpt_path={checkpoints / 'last.ckpt'}" in err
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 0


class _SigtermDuringTest(L.Callback):
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_the_final_test_exits_143_not_0(make_cfg, monkeypatch, one_thread):
    """Lightning's SIGTERMException is a SystemExit without a code: uncaught it would tell a scheduler that the run
    succeeded, with no metrics.json written."""
    import gtsrb.training
    from gtsrb.training import build_callbacks, train

    monkeypatch.setattr(gtsrb.training, "build_callbacks", lambda cfg, with_logger=True: [
        _SigtermDuringTest(), *build_callbacks(cfg, with_logger)])
    cfg = make_cfg("trainer.fast_dev_run=false", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                   "+trainer.enable_progress_bar=false")
    with pytest.raises(SystemExit) as stopped:
        train(cfg)
    assert stopped.value.code == 143
    assert not (Path(cfg.output_dir) / "metrics.json").exists()
