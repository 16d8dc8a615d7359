"""A callback that timestamps every validation result, for "time to 99%" in the benchmark.

Add it to any run without touching conf/ (run from the repository root)::

    uv run train.py ... +callbacks.clock._target_=benchmarks.recipe_clock.EpochClock

It writes ``clock.json`` into the run directory: per epoch, seconds since the
process started and since ``fit`` started, the validation accuracy, and the
load average (the machine is shared; a busy neighbour slows every epoch).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L

from gtsrb.budget import process_start

_PROCESS_START = process_start()  # so data loading counts towards "time to 99%"


class EpochClock(L.Callback):
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.fit_start = time.time()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning has run this epoch's validation by now (callbacks see it before the module logs it
        in ``on_validation_epoch_end``, so that hook would be one epoch late)."""
        if "val/acc" not in trainer.callback_metrics:
            return
        now = time.time()
        self.rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                          "since_process_start_s": round(now - _PROCESS_START, 1),
                          "since_fit_start_s": round(now - self.fit_start, 1),
                          "val_acc": float(trainer.callback_metrics["val/acc"]),
                          "loadavg": [round(x, 2) for x in os.getloadavg()]})
        out = Path(trainer.default_root_dir) / "clock.json"
        out.write_text(json.dumps(self.rows, indent=1) + "\n")
