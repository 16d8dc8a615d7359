"""The trial's side of a search: report the monitored metric each epoch, stop if Optuna's pruner says so.

The sweeper (:mod:`gtsrb.search.sweeper`) tells each job which trial it is
through the environment (``GTSRB_OPTUNA_TRIAL=<study>:<trial id>``, set with
Hydra's ``hydra.job.env_set``, which every launcher applies). The job finds
the study in this process (jobs of the basic launcher) or in the sweeper's
``storage`` (jobs in other processes or on other machines) and reports to it
through ``optuna-integration``'s Lightning callback, which raises
``optuna.TrialPruned`` out of ``trainer.fit``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

TRIAL_ENV = "GTSRB_OPTUNA_TRIAL"
_STUDIES: dict[str, optuna.Study] = {}  # studies of sweepers in this process, by name


def register_study(study: optuna.Study) -> None:
    _STUDIES[study.study_name] = study


def current_trial() -> optuna.Trial | None:
    """The trial this job runs, or None outside an Optuna search."""
    reference = os.environ.get(TRIAL_ENV)
    if not reference:
        return None
    import optuna

    name, trial_id = reference.rsplit(":", 1)
    study = _STUDIES.get(name)
    if study is None:
        from hydra.core.hydra_config import HydraConfig

        storage = HydraConfig.get().sweeper.get("storage") if HydraConfig.initialized() else None
        if not storage:
            log.warning("pruning is off for this trial: it runs in another process than its in-memory study; "
                        "set hydra.sweeper.storage=sqlite:///study.db to prune trials launched elsewhere")
            return None
        study = optuna.load_study(study_name=name, storage=storage)
    return optuna.trial.Trial(study, int(trial_id))


def pruning_callbacks(monitor: str) -> list:
    """``[PyTorchLightningPruningCallback]`` inside an Optuna search, ``[]`` otherwise.

    It reports the epochs of ``fit`` only: the callback stays on the trainer that then validates the best
    checkpoint, which is not one more epoch to report, nor a moment to prune a finished trial.
    """
    trial = current_trial()
    if trial is None:
        return []
    from lightning.pytorch.trainer.states import TrainerFn
    from optuna_integration import PyTorchLightningPruningCallback

    class PruneDuringFit(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.state.fn == TrainerFn.FITTING:
                super().on_validation_end(trainer, pl_module)

    return [PruneDuringFit(trial, monitor=monitor)]
