"""When the machine wants the run back: SIGTERM (a scheduler's pre-emption, ``kill``), Ctrl+C, or SLURM's wall time.

Lightning's loops notice a SIGTERM at the end of the current batch and raise
``SIGTERMException``; Ctrl+C raises ``KeyboardInterrupt``. Either way
:class:`PreemptionCheckpoint` (what Lightning's ``OnExceptionCheckpoint`` does,
narrowed to these two) saves ``checkpoints/interrupted.ckpt`` with the
weights, optimiser, scheduler, loop and callback state of that moment, and
prints the command that resumes the run from it. Other exceptions (a bad
image, a NaN loss) save nothing: their state is not worth resuming.

On SLURM one mechanism requeues, Lightning's: when ``SLURM_NTASKS`` is set the
Trainer picks ``SLURMEnvironment(auto_requeue=True, requeue_signal=SIGUSR1)``
by itself, and on SIGUSR1 (``sbatch --signal=USR1@90``, which
``conf/hydra/launcher/slurm.yaml`` asks for) saves ``hpc_ckpt_<n>.ckpt`` in
the run directory and runs ``scontrol requeue <job id>``; SLURM then ends the
job with SIGTERM, and the handling above saves ``interrupted.ckpt`` at the
next batch boundary. Lightning does that requeue inside the signal handler,
which Python runs between any two bytecodes of the main thread, in the middle
of an optimiser step or of the CSV logger writing ``metrics.csv`` (Lightning
issue 21406); :class:`DeferredRequeue` moves it to the end of a training batch
too, or to the end of the evaluation that follows training.
submitit's own handler is left idle (it listens on
SIGUSR2, which is then never sent): it would resubmit the job from its start
and exit mid-step without saving anything, and on the same signal it would
keep Lightning's handler from being installed at all. A pre-emption that
requeues without SIGUSR1 (``PreemptMode=REQUEUE``) sends only SIGTERM, and a
lost node leaves only ``last.ckpt``; so a requeued job, started again in the
same directory, resumes from :func:`newest_checkpoint`, not from Lightning's
``ckpt_path="hpc"``, which prefers any ``hpc_ckpt`` however old.

A SIGTERM or Ctrl+C that arrives while an epoch's validation runs is held
until that validation has finished; a second Ctrl+C stops at once. Without the
hold, Lightning stops after the current validation batch, and a run resumed from
there skips the rest of that validation: the epoch ends with no ``val/*`` metric,
and early stopping fails on its first check (Lightning issue 18595). Stopping
right after validation has the same flaw. Validation has no state worth saving
halfway, because the metrics' running sums are not in the checkpoint. So the run
is saved at the next boundary Lightning resumes from correctly: the end of the
epoch, or the next training batch when validation runs mid-epoch. Validating the
few thousand held-out GTSRB images takes seconds, well inside SLURM's grace period.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process ended by the signal
EXIT_CTRL_C = 1  # what Lightning exits with after Ctrl+C


@contextlib.contextmanager
def exit_when_interrupted(preemption: PreemptionCheckpoint) -> Iterator[None]:
    """Lightning ends a run on SIGTERM with ``SIGTERMException``, a ``SystemExit`` without a code, which exits 0 as
    if the run had succeeded; a scheduler must see 143 (and a held Ctrl+C what Lightning's own Ctrl+C exits with).
    Wraps training and the final evaluation alike."""
    try:
        yield
    except SIGTERMException:
        raise SystemExit(preemption.exit_code) from None


def resume_command(overrides: list[str], ckpt_path: str) -> str:
    """``uv run train.py`` with the run's overrides and ``ckpt_path``; ``hydra.*`` (such as the run directory) and
    an earlier ``ckpt_path`` are left out, so the resumed run writes a new run directory."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "ckpt_path="))]
    return " ".join(["uv run train.py", *map(shlex.quote, kept), shlex.quote(f"ckpt_path={ckpt_path}")])


def newest_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint a run directory holds, to resume from when the run starts there again (a requeued
    SLURM job): Lightning's ``hpc_ckpt_<n>.ckpt``, ``checkpoints/interrupted.ckpt`` or ``checkpoints/last.ckpt``.

    ``None`` in a new directory, and off SLURM: there a run started again in an old directory (a fixed
    ``hydra.run.dir``) trains afresh, and resuming stays the explicit ``ckpt_path=``. Lightning's own
    ``ckpt_path="hpc"`` would prefer any ``hpc_ckpt`` to the two of ``checkpoints/``, even one epochs older.
    """
    if not SLURMEnvironment.detect():
        return None
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "interrupted.ckpt",
                  run_dir / "checkpoints" / "last.ckpt"]
    found = [path for path in candidates if path.is_file()]
    return str(max(found, key=lambda path: path.stat().st_mtime)) if found else None


class PreemptionCheckpoint(L.Callback):
    """Saves ``checkpoints/interrupted.ckpt`` on SIGTERM or Ctrl+C, each held until the validation under way ends.

    A second Ctrl+C during validation stops at once; that state cannot be resumed (the module docstring says why),
    so nothing is saved and the message points to ``last.ckpt``, the end of the epoch before.

    Not a subclass of Lightning's ``OnExceptionCheckpoint``, though it does the same save: with one of those among
    the callbacks, ``fit(ckpt_path=None)`` means ``ckpt_path="last"`` to Lightning (issue 19827), so a run started
    again in an old directory silently resumed from its ``last.ckpt``, and every new run warned that it had been
    "called without a model" and found "no last checkpoint". Where to resume is :func:`newest_checkpoint`'s call.
    """

    def __init__(self, dirpath: str, overrides: list[str]) -> None:
        self.dirpath = dirpath
        self.ckpt_path = str(Path(dirpath) / "interrupted.ckpt")
        self.overrides = overrides
        self._held_sigterm = False
        self._held_ctrl_c = False
        self._sigint_handler_before: Any = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if _validating_in_fit(trainer) and threading.current_thread() is threading.main_thread():
            self._sigint_handler_before = signal.signal(signal.SIGINT, self._hold_ctrl_c)

    def _hold_ctrl_c(self, signum: int, frame: Any) -> None:
        if self._held_ctrl_c:
            raise KeyboardInterrupt  # pressed twice: stop now
        self._held_ctrl_c = True
        print("Ctrl+C: stopping when this validation ends (press it again to stop now)", file=sys.stderr, flush=True)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Lightning keeps the SIGTERM flag, which has no public setter, in its signal connector and checks it right
        after this hook."""
        connector = getattr(trainer, "_signal_connector", None)
        if _validating_in_fit(trainer) and getattr(connector, "received_sigterm", False):
            connector.received_sigterm = False
            self._held_sigterm = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint_handler()
        if self._held_sigterm or self._held_ctrl_c:
            # Lightning's SIGTERM path stops at the end of the epoch, or after the next training batch: states it
            # resumes from. (Stopping here would not do: a run resumed after validation but before the epoch's end
            # skips the epoch's validation as well.)
            trainer._signal_connector.received_sigterm = True
            self._held_sigterm = False

    def _restore_sigint_handler(self) -> None:
        if self._sigint_handler_before is not None:
            signal.signal(signal.SIGINT, self._sigint_handler_before)
            self._sigint_handler_before = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint_handler()

    @property
    def exit_code(self) -> int:
        """What the process exits with once this callback has saved the run."""
        return EXIT_CTRL_C if self._held_ctrl_c else EXIT_SIGTERM

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> Any:
        if isinstance(exception, KeyboardInterrupt):
            self._sigint_handler_before = None  # Lightning ignores further Ctrl+C while it shuts down; leave it so
        self._restore_sigint_handler()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        cause = "Ctrl+C" if isinstance(exception, KeyboardInterrupt) or self._held_ctrl_c else "SIGTERM"
        if _validating_in_fit(trainer):  # stopped halfway through validation: not a state to resume from
            if trainer.is_global_zero:
                last = Path(self.dirpath) / "last.ckpt"
                where = f"resume from the end of the epoch before with ckpt_path={last}" if last.is_file() else \
                    "no epoch had finished, so there is nothing to resume"
                print(f"interrupted by {cause} during the validation of epoch {trainer.current_epoch}, which cannot "
                      f"resume halfway; {where}", file=sys.stderr, flush=True)
            return
        trainer.save_checkpoint(self.ckpt_path)
        if trainer.is_global_zero:
            print(f"interrupted by {cause} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                  f"saved {self.ckpt_path}\nresume with: {resume_command(self.overrides, self.ckpt_path)}",
                  file=sys.stderr, flush=True)
            if SLURMEnvironment.detect():
                print("on SLURM a requeued job resumes from the newest checkpoint of its run directory by itself",
                      file=sys.stderr, flush=True)


class DeferredRequeue(L.Callback):
    """Runs Lightning's SLURM requeue (``hpc_ckpt_<n>.ckpt``, then ``scontrol requeue``) after a training batch, not
    inside the signal handler.

    Lightning's handler re-enters whatever the main thread was doing when the signal came: in an optimiser step the
    HPC checkpoint holds half-updated weights; in the CSV logger's ``save`` its ``finalize`` writes rows wider than
    the file's header, and the next save ends the run ("dict contains fields not in fieldnames"). So before Lightning
    installs its handler for a stage, this callback has it install one that only notes the signal, and calls
    Lightning's own after the next training batch that ends neither an epoch nor a span of gradient accumulation
    (a checkpoint there resumes as Lightning's ``every_n_train_steps`` ones do; one after an epoch's last batch
    would resume past that epoch's validation, one inside an accumulation without its gradients), or when training
    ends, or when a SIGTERM stops the run first. The ranks decide together (one all-reduce of a flag per training
    batch, on SLURM only), so all of them save after the same batch; alone, a rank would enter the checkpoint's
    collectives while the others step.

    Outside ``fit`` (the final ``validate``, ``test`` and ``predict``) it runs when the stage ends, not per batch:
    ranks may hold different numbers of evaluation batches (the shards are not padded), and a decision taken after
    each would wait forever for the rank with fewer. It requeues once: SLURM signals every rank, each at its own
    point in the step, and a signal that comes after the requeue asks for nothing more.
    """

    def __init__(self) -> None:
        self._requeue: Any = None  # Lightning's handler, called here instead of in the signal
        self._signum: int | None = None
        self._signalled = False
        self._requeued = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Runs before Lightning installs its handlers for the stage, which look this attribute up then."""
        environment = trainer._accelerator_connector.cluster_environment  # no public accessor on one device
        connector = trainer._signal_connector
        if self._requeue is None and isinstance(environment, SLURMEnvironment) and environment.auto_requeue \
                and hasattr(connector, "_slurm_sigusr_handler_fn"):
            self._requeue = connector._slurm_sigusr_handler_fn
            connector._slurm_sigusr_handler_fn = self._note

    def _note(self, signum: int, frame: Any) -> None:
        self._signum, self._signalled = signum, not self._requeued

    def _requeue_if_signalled(self, trainer: L.Trainer) -> None:
        if self._requeue is not None and trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            self._signalled, self._requeued = False, True
            self._requeue(self._signum, None)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop  # the two conditions are the same on every rank
        if not (epoch_loop._is_training_done or epoch_loop._should_accumulate()):
            self._requeue_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requeue_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # in fit, a training batch or the end of training comes next
            self._requeue_if_signalled(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requeue_if_signalled(trainer)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requeue_if_signalled(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # raised on every rank at the same point
            self._requeue_if_signalled(trainer)


def _validating_in_fit(trainer: L.Trainer) -> bool:
    """The validation of an epoch (or the sanity check before the first), not ``trainer.validate`` after ``fit``."""
    return trainer.state.fn == TrainerFn.FITTING and (trainer.validating or trainer.sanity_checking)
