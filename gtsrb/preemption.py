"""When the machine wants the run back: SIGTERM (a scheduler's pre-emption, ``kill``) or Ctrl+C.

Lightning's loops notice a SIGTERM at the end of the current batch and raise
``SIGTERMException``; Ctrl+C raises ``KeyboardInterrupt``. Either way
:class:`PreemptionCheckpoint` (Lightning's ``OnExceptionCheckpoint``,
narrowed to these two) saves ``checkpoints/interrupted.ckpt`` with the
weights, optimiser, scheduler, loop and callback state of that moment, and
prints the command that resumes the run from it. Other exceptions (a bad
image, a NaN loss) save nothing: their state is not worth resuming.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process ended by the signal


def resume_command(overrides: list[str], ckpt_path: str) -> str:
    """``uv run train.py`` with the run's overrides and ``ckpt_path``; ``hydra.*`` (such as the run directory) and
    an earlier ``ckpt_path`` are left out, so the resumed run writes a new run directory."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "ckpt_path="))]
    return " ".join(["uv run train.py", *map(shlex.quote, kept), shlex.quote(f"ckpt_path={ckpt_path}")])


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
