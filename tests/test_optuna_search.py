"""Hyperparameter search with the project's Optuna sweeper (``hydra/sweeper=optuna``, ``hparams_search=optuna``).

The sweeper's bookkeeping (resumed and shared studies, pruned and failed trials, job directories, results and
plots) is tested on a toy Hydra app whose objective is a formula, so each study takes seconds; one study runs
``train.py`` for real, with Lightning's pruning callback.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from gtsrb.errors import UserError
from gtsrb.search import space
from test_train_cli import ROOT, TINY_RUN, run_train

TOY_APP = '''
import os, time
import hydra, optuna
from gtsrb.search.pruning import current_trial

@hydra.main(config_path=".", config_name="toy", version_base="1.3")
def main(cfg):
    while cfg.wait_for and not os.path.exists(cfg.wait_for):  # lets a test hold trials until it is ready
        time.sleep(0.05)
    if cfg.interrupt_at == current_trial().number:  # Ctrl+C in the middle of this trial
        raise KeyboardInterrupt
    if cfg.x > cfg.fail_above:
        raise RuntimeError(f"x={cfg.x} is above {cfg.fail_above}")
    trial = current_trial()  # the sweeper's trial, found through the environment
    value = 0.0
    for step in range(cfg.steps):
        value = -(cfg.x - 0.3) ** 2 + 0.01 * step + (0.5 if cfg.kind == "b" else 0.0)
        if trial is not None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")
    return value

main()
'''

TOY_CONFIG = f'''
defaults:
  - override hydra/sweeper: optuna
  - _self_
seed: 0
monitor_mode: max
x: 0.0
kind: a
steps: 3
fail_above: 10.0
wait_for: null
interrupt_at: -1
hydra:
  searchpath: [file://{ROOT / "conf"}]
  sweeper:
    n_trials: 6
    params:
      x: interval(0.0, 1.0)
      kind: choice(a, b)
'''


@pytest.fixture
def toy(tmp_path):
    """Run the toy app with ``-m`` and overrides; returns (process, sweep directory)."""
    (tmp_path / "toy.py").write_text(TOY_APP)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)

    def run(*overrides: str, sweep: str = "sweep", check: bool = True, wait: bool = True):
        sweep_dir = tmp_path / sweep
        cmd = [sys.executable, str(tmp_path / "toy.py"), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
        if not wait:
            return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), \
                sweep_dir
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc, sweep_dir

    return run


def _running(storage: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not created yet
        return 0
    return len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,)))


def _trials(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


# --- the search space: hydra-optuna-sweeper's strings ------------------------------------------------------------

def test_search_space_strings_become_optuna_distributions():
    fixed, dists = space.parse(
        {"lr": "tag(log, interval(1e-4, 1e-2))", "wd": "interval(0, 0.1)", "width": "int(interval(16, 128))",
         "batch": "range(32, 129, 32)", "opt": "choice(adamw, sgd)", "depth": "2,3", "epochs": "5"},
        ["drop=interval(0.1, 0.3)", "epochs=7"])
    assert dists == {
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "wd": FloatDistribution(0.0, 0.1),
        "width": IntDistribution(16, 128),
        "batch": IntDistribution(32, 128, step=32),  # Hydra's range excludes its stop, so 160 is not reached
        "opt": CategoricalDistribution(["adamw", "sgd"]),
        "depth": CategoricalDistribution([2, 3]),
        "drop": FloatDistribution(0.1, 0.3),
    }
    assert fixed == ["epochs=7"]  # the command line wins over params


def test_the_command_line_fixes_a_searched_value():
    fixed, dists = space.parse({"lr": "interval(1e-4, 1e-2)"}, ["lr=0.001"])
    assert fixed == ["lr=0.001"] and dists == {}


@pytest.mark.parametrize("entry, message", [("range(5, 5)", "empty range"), ("glob(*)", "does not know")])
def test_a_search_space_entry_that_cannot_be_searched_is_named(entry, message):
    with pytest.raises(UserError, match=message):
        space.parse({"x": entry}, [])


def test_sampled_values_are_written_back_as_overrides_hydra_reads_the_same():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in [0.000123, 7, "simple_cnn", "a b", None, True]:
        assert parser.parse_override(space.as_override("k", value)).value() == value


# --- the sweeper on the toy app ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_study_runs_n_trials_and_reports_the_best(toy):
    proc, sweep = toy("hydra.sweeper.n_trials=5", "hydra/sweeper/pruner=none")
    trials = _trials(sweep)
    assert [t["number"] for t in trials] == ["0", "1", "2", "3", "4"]
    assert all(t["state"] == "complete" for t in trials)
    results = (sweep / "optimization_results.yaml").read_text()
    best = max(trials, key=lambda t: float(t["value"]))
    assert f"best_trial: {best['number']}" in results and f"best_value: {float(best['value'])}" in results
    assert f"best value {float(best['value']):.6g} (trial {best['number']})" in proc.stdout
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3", "4"]
    plots = sorted(p.name for p in (sweep / "plots").glob("*.png"))
    assert plots == ["intermediate_values.png", "optimization_history.png", "param_importances.png", "slice.png"]
    assert all((sweep / "plots" / p).stat().st_size > 5000 for p in plots)


@pytest.mark.slow
def test_the_seed_decides_the_trials(toy):
    _, first = toy("hydra.sweeper.n_trials=2", sweep="a")
    _, second = toy("hydra.sweeper.n_trials=2", sweep="b")
    _, other = toy("hydra.sweeper.n_trials=2", "seed=1", sweep="c")
    xs = [[t["x"] for t in _trials(d)] for d in (first, second, other)]
    assert xs[0] == xs[1] and xs[0] != xs[2]


@pytest.mark.slow
def test_a_stored_study_resumes_to_n_trials_not_n_trials_more(toy, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    toy("hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=toy",
        "hydra/sweeper/pruner=none", sweep="a")
    proc, sweep = toy("hydra.sweeper.n_trials=5", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=toy",
                      "hydra/sweeper/pruner=none", sweep="b")
    study = optuna.load_study(study_name="toy", storage=storage)
    assert len(study.trials) == 5
    assert [t["number"] for t in _trials(sweep)] == ["0", "1", "2", "3", "4"]  # the whole study
    # the resumed run's jobs are named by trial number: no directory of the first run is reused
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["3", "4"]
    assert "study toy: 5 complete" in proc.stdout


@pytest.mark.slow
def test_an_interrupted_study_marks_the_trial_in_flight_failed_and_resumes(toy, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=cut", "hydra/sweeper/pruner=none"]
    proc, _ = toy(*args, "hydra.sweeper.n_trials=5", "interrupt_at=2", sweep="a", check=False)
    assert proc.returncode != 0
    states = [t.state.name for t in optuna.load_study(study_name="cut", storage=storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # not left RUNNING, where it would count forever
    toy(*args, "hydra.sweeper.n_trials=5", sweep="b")
    states = [t.state.name for t in optuna.load_study(study_name="cut", storage=storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_two_workers_share_one_study(toy, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    go = tmp_path / "go"
    args = ["hydra.sweeper.n_trials=8", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
            f"wait_for={go}"]
    workers = [toy(*args, sweep=name, wait=False) for name in ("w1", "w2")]
    deadline = time.monotonic() + 240
    while _running(storage, "shared") < 2:  # both workers have asked for a trial: let them go
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in workers), "a worker did not start"
        time.sleep(0.2)
    go.touch()
    for proc, _ in workers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:] + err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    # each worker asks while the study is short of n_trials; two asking at the same moment may add one more
    assert 8 <= len(study.trials) <= 9
    dirs = [{p.name for p in sweep.iterdir() if p.name.isdigit()} for _, sweep in workers]
    assert all(dirs) and not dirs[0] & dirs[1]  # both worked, and no trial ran twice
    assert dirs[0] | dirs[1] == {str(t.number) for t in study.trials}


@pytest.mark.slow
def test_pruned_and_failed_trials_are_marked_and_the_search_goes_on(toy):
    # trials with x > 0.5 fail; after two complete, a trial below the top 1% at a step is pruned
    proc, sweep = toy("hydra.sweeper.n_trials=8", "fail_above=0.5", "hydra/sweeper/pruner=none",
                      "hydra.sweeper.pruner._target_=optuna.pruners.PercentilePruner",
                      "+hydra.sweeper.pruner.percentile=1.0", "+hydra.sweeper.pruner.n_startup_trials=2",
                      "hydra/sweeper/sampler=random", "hydra.sweeper.max_failure_rate=1.0")
    states = {t["number"]: t["state"] for t in _trials(sweep)}
    assert len(states) == 8
    xs = {t["number"]: float(t["x"]) for t in _trials(sweep)}
    assert all(states[n] == "fail" for n in states if xs[n] > 0.5)
    assert {"complete", "pruned", "fail"} <= set(states.values()), states
    assert "pruned" in proc.stdout and "fail" in proc.stdout


@pytest.mark.slow
def test_the_search_stops_when_too_many_trials_fail(toy):
    proc, sweep = toy("hydra.sweeper.n_trials=10", "fail_above=-1", "hydra.sweeper.max_failure_rate=0.2")
    assert len(_trials(sweep)) == 3  # the third failure is more than 20% of 10
    assert "no trial completed" in proc.stderr


@pytest.mark.parametrize("overrides, message", [
    (["hydra.sweeper.storage=sqlite:///x.db"], "a study in storage needs a name"),
    (["~hydra.sweeper.params"], "nothing to search"),
    (["hydra.sweeper.params.x='glob(*)'"], "does not know this kind of sweep"),
])
def test_a_sweeper_mistake_is_one_line(toy, overrides, message):
    proc, sweep = toy(*overrides, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not sweep.exists() or not [p for p in sweep.iterdir() if p.name.isdigit()]


# --- the real thing: train.py with hparams_search=optuna ---------------------------------------------------------

def test_a_search_bound_that_cannot_run_stops_before_the_first_trial(tmp_path):
    proc = run_train("-m", "hparams_search=optuna", *TINY_RUN, "data.batch_size=int(interval(0, 64))",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False)
    assert proc.returncode == 2
    assert "error: the search space reaches data.batch_size=0, which cannot run: data.batch_size=0 is out of range" \
        in proc.stderr
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))


@pytest.mark.slow
def test_hparams_search_trains_prunes_and_resumes_a_study(tmp_path):
    """One completed trial, then the study resumed to two under a pruner that stops anything below 100%
    accuracy after the first epoch: the second trial is pruned by Lightning's callback after two epochs."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["-m", "hparams_search=optuna", *TINY_RUN, "trainer.max_epochs=3", "logger=none",
              f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=quickstart"]
    run_train(*common, "hydra.sweeper.n_trials=1", "hydra/sweeper/pruner=none", f"hydra.sweep.dir={tmp_path / 'a'}")
    proc = run_train(*common, "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none",
                     "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.lower=1.01",
                     "+hydra.sweeper.pruner.n_warmup_steps=1", f"hydra.sweep.dir={tmp_path / 'b'}")
    study = optuna.load_study(study_name="quickstart", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    pruned = study.trials[1]
    assert sorted(pruned.intermediate_values) == [0, 1]  # reported each epoch, stopped after the second
    assert set(pruned.params) == {"optimizer.lr", "optimizer.weight_decay", "label_smoothing", "model.drop_rate"}
    report = json.loads((tmp_path / "b" / "1" / "metrics.json").read_text())
    assert report["status"] == "pruned" and "epoch 1" in report["error"]
    done = json.loads((tmp_path / "a" / "0" / "metrics.json").read_text())
    assert done["status"] == "completed" and done["best_score"] == study.trials[0].value
    assert f"optimizer.lr={study.trials[0].params['optimizer.lr']}" in done["overrides"]
    assert len(done["history"]) == 3
    assert sorted(study.trials[0].intermediate_values) == [0, 1, 2]  # epochs only, not the final evaluation
    with open(tmp_path / "b" / "summary.csv") as f:
        assert [(row["job"], row["status"]) for row in csv.DictReader(f)] == [("1", "pruned")]
    assert "study quickstart: 1 complete, 1 pruned, 0 fail" in proc.stdout


def test_a_worker_that_loses_the_race_to_create_the_tables_loads_the_study(tmp_path, monkeypatch):
    """Workers started together on a new database both create its tables; the loser retries and loads the study."""
    import sqlalchemy.exc

    from gtsrb.search.sweeper import OptunaSweeper

    sweeper = OptunaSweeper(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="race")
    create, calls = optuna.create_study, []

    def create_after_the_other_worker(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            create(**kwargs)  # the other worker made the tables and the study ...
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return create(**kwargs)  # ... so this worker's retry finds them

    monkeypatch.setattr(optuna, "create_study", create_after_the_other_worker)
    monkeypatch.setattr("gtsrb.search.sweeper.time.sleep", lambda seconds: None)
    study = sweeper._study()
    assert study.study_name == "race" and calls == ["race", "race"]
    assert [s.study_name for s in optuna.get_all_study_summaries(sweeper.storage)] == ["race"]


def test_a_storage_that_cannot_be_opened_is_one_line_naming_its_reason(tmp_path, monkeypatch):
    """Database errors start with a blank line or run over several; the message quotes the reason, not line one."""
    from gtsrb.errors import UserError
    from gtsrb.search.sweeper import OptunaSweeper

    def unreachable(**kwargs):
        raise RuntimeError("\n(sqlite3.OperationalError) unable to open database file\n(Background on this error ...)")

    monkeypatch.setattr(optuna, "create_study", unreachable)
    with pytest.raises(UserError) as raised:
        OptunaSweeper(storage="sqlite:////no/such/dir/study.db", study_name="s")._study()
    message = str(raised.value)
    assert "\n" not in message and "RuntimeError: (sqlite3.OperationalError) unable to open database file" in message
    assert "hydra.sweeper.storage=sqlite:///study.db" in message
