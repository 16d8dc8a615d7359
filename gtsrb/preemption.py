"""When the machine wants the run back: SIGTERM (a scheduler's pre-emption, ``kill``), Ctrl+C, or SLURM's wall time.

Lightning's loops notice a SIGTERM at the end of the current batch and raise
``SIGTERMException``; Ctrl+C raises ``KeyboardInterrupt``. Either way
:class:`PreemptionCheckpoint` (Lightning's ``OnExceptionCheckpoint``,
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
next batch boundary. submitit's own handler is left idle (it listens on
SIGUSR2, which is then never sent): it would resubmit the job from its start
and exit mid-step without saving anything, and on the same signal it would
keep Lightning's handler from being installed at all. A pre-emption that
requeues without SIGUSR1 (``PreemptMode=REQUEUE``) sends only SIGTERM, and a
lost node leaves only ``last.ckpt``; so a requeued job, started again in the
same directory, resumes from :func:`newest_checkpoint`, not from Lightning's
``ckpt_path="hpc"``, which prefers any ``hpc_ckpt`` however old.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process ended by the signal


def resume_command(overrides: list[str], ckpt_path: str) -> str:
    """``uv run train.py`` with the run's overrides and ``ckpt_path``; ``hydra.*`` (such as the run directory) and
    an earlier ``ckpt_path`` are left out, so the resumed run writes a new run directory."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "ckpt_path="))]
    return " ".join(["uv run train.py", *map(shlex.quote, kept), shlex.quote(f"ckpt_path={ckpt_path}")])


def newest_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint a run directory holds, to resume from when the run starts there again (a requeued
    SLURM job): Lightning's ``hpc_ckpt_<n>.ckpt``, ``checkpoints/interrupted.ckpt`` or ``checkpoints/last.ckpt``.

    ``None`` in a new directory, and off SLURM: there a run started again in an old directory (a fixed
    ``hydra.run.dir``) trains afresh as before, and resuming stays the explicit ``ckpt_path=``. Lightning alone
    would pick the same two of ``checkpoints/`` (``ckpt_path="last"``, since an ``OnExceptionCheckpoint`` is
    there) but any ``hpc_ckpt`` before them, even one epochs older.
    """
    if not SLURMEnvironment.detect():
        return None
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "interrupted.ckpt",
                  run_dir / "checkpoints" / "last.ckpt"]
    found = [path for path in candidates if path.is_file()]
    return str(max(found, key=lambda path: path.stat().st_mtime)) if found else None


class PreemptionCheckpoint(OnExceptionCheckpoint):
    def __init__(self, dirpath: str, overrides: list[str]) -> None:
        super().__init__(dirpath, filename="interrupted")
        self.overrides = overrides

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> Any:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        super().on_exception(trainer)
        if trainer.is_global_zero:
            cause = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl+C"
            print(f"interrupted by {cause} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                  f"saved {self.ckpt_path}\nresume with: {resume_command(self.overrides, self.ckpt_path)}",
                  file=sys.stderr, flush=True)
            if SLURMEnvironment.detect():
                print("on SLURM a requeued job resumes from the newest checkpoint of its run directory by itself",
                      file=sys.stderr, flush=True)
