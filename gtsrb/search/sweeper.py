"""``hydra/sweeper=optuna``: Hydra's ``-m`` driving current Optuna through its ask-and-tell API.

Why the project's own sweeper: the released ``hydra-optuna-sweeper`` (1.3)
pins ``optuna<3``, which rules out ``optuna-integration``'s Lightning pruning
callback and ``optuna-dashboard``. Ask-and-tell keeps this small: Optuna
samples (``study.ask``), Hydra's launcher runs the batch (in this process, in
local processes or on SLURM through submitit), and the sweeper reports back
(``study.tell``). The config keys are ``hydra-optuna-sweeper``'s (``sampler``,
``direction``, ``storage``, ``study_name``, ``n_trials``, ``n_jobs``,
``max_failure_rate``, ``params``), plus ``pruner`` and ``plots``.

Traps it avoids:

* **Resumed and shared studies.** ``n_trials`` is the size of the whole
  study, not of this run: a study of 3 trials rerun with ``n_trials=5`` runs
  2 more, and workers on one ``storage`` stop together at ``n_trials``.
* **Job directories.** A trial runs in ``<sweep dir>/<trial number>``, so a
  resumed study never overwrites an earlier trial's directory.
* **Pruned and failed trials** come back from the launcher as failed jobs;
  a pruned one (``optuna.TrialPruned``) is told as PRUNED, anything else as
  FAIL, and the search goes on until more than ``max_failure_rate`` of
  ``n_trials`` have failed.
* **Interruption.** Ctrl+C or SIGTERM marks the trials in flight as failed
  before leaving, so a resumed study does not count them as still running.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from gtsrb.errors import UserError, first_line
from gtsrb.search.pruning import TRIAL_ENV, register_study

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import TrialState

log = logging.getLogger(__name__)

_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: optuna.samplers.BaseSampler | None = None,
                 pruner: optuna.pruners.BasePruner | None = None, direction: str = "maximize",
                 storage: str | None = None, study_name: str | None = None, n_trials: int = 20, n_jobs: int = 1,
                 max_failure_rate: float = 0.5, params: dict[str, Any] | None = None, plots: bool = True,
                 search_space: Any = None, custom_search_space: str | None = None) -> None:
        import optuna  # here, not at the top: Hydra imports every plugin module at every start

        super().__init__()
        self.unsupported = "search_space" if search_space else "custom_search_space" if custom_search_space else None
        self.sampler, self.pruner = sampler, pruner or optuna.pruners.NopPruner()
        self.direction = str(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})
        self.plots = plots
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Ask, launch, tell until the study has ``n_trials``; then report. Mistakes end in one ``error:`` line."""
        from optuna.trial import TrialState

        from gtsrb.search import space as search_space

        try:
            self._check_settings()
            fixed, distributions = search_space.parse(self.params, arguments)
            if not distributions:
                raise UserError("nothing to search: give hydra.sweeper.params (e.g. hparams_search=optuna) "
                                "or a sweep on the command line such as optimizer.lr='tag(log, interval(1e-4,1e-2))'")
            self._check_space(fixed, distributions)
            study = self._study()
        except UserError as exc:  # raised outside the task, so not seen by cli.report_user_errors
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        register_study(study)
        log.info("study %s: %d of %d trials done; searching %s", study.study_name, _count(study), self.n_trials,
                 ", ".join(distributions))

        returns = []
        while (left := self.n_trials - _count(study)) > 0:
            if _count(study, (TrialState.FAIL,)) > self.max_failure_rate * self.n_trials:
                log.error("stopping the search: more than %.0f%% of n_trials=%d failed (hydra.sweeper.max_failure_rate)",
                          100 * self.max_failure_rate, self.n_trials)
                break
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, left))]
            returns.append(self._run(study, trials, fixed))

        self._report(study, sweep_dir)
        return returns

    def _check_settings(self) -> None:
        if self.unsupported:
            raise UserError(f"hydra.sweeper.{self.unsupported} is not supported; "
                            "write the search space as hydra.sweeper.params (interval, choice, range)")
        if self.direction not in _DIRECTIONS:
            raise UserError(f"hydra.sweeper.direction={self.direction} is not a direction; use maximize or minimize")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise UserError(f"hydra.sweeper.n_trials={self.n_trials} and n_jobs={self.n_jobs} must both be 1 or more")
        if self.storage and not self.study_name:
            raise UserError("a study in storage needs a name to be resumed or shared; "
                            "add hydra.sweeper.study_name=<name>")

    def _study(self) -> optuna.Study:
        """Create the study, or load it where it exists. Workers that start together on a new database race to
        create its tables and the study: the loser of either race retries and loads what the winner made."""
        import optuna

        for wait in (0.5, 1.0, 2.0, None):
            try:
                return self._create_or_load(optuna)
            except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
                return optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                         pruner=self.pruner)
            except UserError:  # already says what is wrong with the storage
                raise
            except Exception as exc:  # sqlalchemy's "table ... already exists": another worker is creating them
                if "already exists" not in str(exc) or wait is None:
                    raise UserError(f"cannot open the study storage {self.storage}: {type(exc).__name__}: "
                                    f"{first_line(exc)}") from exc
                time.sleep(wait)

    def _create_or_load(self, optuna) -> optuna.Study:
        try:
            return optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                       pruner=self.pruner, direction=_DIRECTIONS[self.direction],
                                       load_if_exists=True)
        except (optuna.exceptions.DuplicatedStudyError, UserError):
            raise
        except ValueError as exc:  # e.g. a loaded study whose direction differs
            raise UserError(f"cannot open study {self.study_name} in {self.storage}: {exc}") from exc
        except Exception as exc:  # a storage URL that does not work
            if "already exists" in str(exc):
                raise
            raise UserError(f"cannot open the study storage {self.storage}: {type(exc).__name__}: "
                            f"{first_line(exc)}; use e.g. hydra.sweeper.storage=sqlite:///study.db") from exc

    def _run(self, study: optuna.Study, trials: list[optuna.Trial], fixed: list[str]) -> list[JobReturn]:
        """Launch the trials (runs of consecutive numbers together, so job directories are trial numbers)."""
        from optuna.trial import TrialState

        from gtsrb.search import space as search_space

        results: list[JobReturn] = []
        try:
            for run in _consecutive(trials):
                batch = [[*fixed, *(search_space.as_override(k, v) for k, v in t.params.items()),
                          f"++hydra.job.env_set.{TRIAL_ENV}={study.study_name}:{t._trial_id}"] for t in run]
                for trial, ret in zip(run, self.launcher.launch(batch, initial_job_idx=run[0].number)):
                    state, value = _outcome(ret)
                    study.tell(trial, value, state=state)
                    results.append(ret)
                    _log_trial(trial, state, value, ret)
        except BaseException:  # Ctrl+C, SIGTERM, a launcher error: the trials in flight did not finish
            for trial in trials[len(results):]:
                study.tell(trial, state=TrialState.FAIL)
            raise
        return results

    def _check_space(self, fixed: list[str], distributions: dict[str, BaseDistribution]) -> None:
        """Compose and validate both ends of every searched range (and every choice) before the first trial,
        so a bound that cannot work stops the search in seconds instead of failing trial after trial."""
        from gtsrb.config import validate
        from gtsrb.search import space as search_space

        for key, dist in distributions.items():
            for value in _ends(dist):  # one parameter at a time, the others as configured: a failure names its cause
                probe = [*fixed, search_space.as_override(key, value)]
                try:
                    cfg = self.hydra_context.config_loader.load_sweep_config(self.config, probe)
                except Exception as exc:
                    raise UserError(f"the search space entry {search_space.as_override(key, value)} "
                                    f"cannot be composed: {first_line(exc)}") from exc
                if "data" in cfg and "trainer" in cfg:  # the training app's config: its own range checks
                    try:
                        validate(cfg)
                    except UserError as exc:
                        raise UserError(f"the search space reaches {search_space.as_override(key, value)}, "
                                        f"which cannot run: {exc}") from exc

    def _report(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Best parameters printed and written as ``optimization_results.yaml`` (hydra-optuna-sweeper's file),
        every trial of the study in ``trials.csv``, Optuna's plots as PNGs under ``plots/``."""
        from optuna.trial import TrialState

        from gtsrb.search import space as search_space
        from gtsrb.search.plots import write_plots

        _write_trials(study, sweep_dir / "trials.csv")
        states = {s.name.lower(): _count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.FAIL)}
        counts = ", ".join(f"{n} {name}" for name, n in states.items())
        if states["complete"] == 0:
            print(f"study {study.study_name}: no trial completed ({counts})", file=sys.stderr, flush=True)
            return
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name,
                                         "best_trial": best.number, "best_params": best.params,
                                         "best_value": best.value, "trials": states}),
                       sweep_dir / "optimization_results.yaml")
        paths = write_plots(study, sweep_dir / "plots") if self.plots else []
        overrides = " ".join(search_space.as_override(k, v) for k, v in best.params.items())
        print(f"study {study.study_name}: {counts}\n"
              f"best value {best.value:.6g} (trial {best.number}) with: {overrides}\n"
              f"results: {sweep_dir / 'optimization_results.yaml'}"
              + (f"\nplots: {sweep_dir / 'plots'} ({len(paths)} PNGs)" if paths else ""), flush=True)


def _count(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> int:
    """Trials in these states; by default every trial that counts towards ``n_trials`` (all but WAITING)."""
    from optuna.trial import TrialState

    states = states or (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _consecutive(trials: list[optuna.Trial]) -> list[list[optuna.Trial]]:
    runs: list[list[optuna.Trial]] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _outcome(ret: JobReturn) -> tuple[TrialState, float | None]:
    import optuna
    from optuna.trial import TrialState

    if ret.status == JobStatus.COMPLETED:
        value = ret.return_value
        if isinstance(value, (int, float)) and math.isfinite(value):
            return TrialState.COMPLETE, float(value)
        return TrialState.FAIL, None  # the job recorded its own failure (gtsrb.training.train_sweep_job)
    if isinstance(ret._return_value, optuna.TrialPruned):
        return TrialState.PRUNED, None
    return TrialState.FAIL, None


def _log_trial(trial: optuna.Trial, state: TrialState, value: float | None, ret: JobReturn) -> None:
    from optuna.trial import TrialState

    if state == TrialState.COMPLETE:
        log.info("trial %d: %.6g", trial.number, value)
    elif state == TrialState.PRUNED:
        log.info("trial %d pruned: %s", trial.number, ret._return_value)
    else:
        error = ret._return_value  # the exception of a job that raised; else it recorded the failure itself
        log.warning("trial %d failed: %s", trial.number,
                    first_line(error) if isinstance(error, BaseException) else "the job recorded a failure")


def _ends(dist: BaseDistribution) -> list[Any]:
    """The values that bound a distribution: every choice, or both ends of a range."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def _write_trials(study: optuna.Study, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "value", "seconds", *names])
        for t in trials:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
                if t.datetime_complete and t.datetime_start else None
            writer.writerow([t.number, t.state.name.lower(), t.value, seconds, *(t.params.get(n) for n in names)])
