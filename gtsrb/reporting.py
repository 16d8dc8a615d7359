"""What a run leaves behind besides checkpoints: per-epoch history and ``metrics.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from gtsrb.errors import UserError


def _number(value: Any) -> float | None:
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return None if math.isnan(value) else value


class EpochHistory(L.Callback):
    """Collects every epoch-level metric (train and val side by side) for ``metrics.json``.

    Lightning logs the training metrics of an epoch after its validation, so
    ``on_train_epoch_end`` is the first moment both are known.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float | None]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, float | None] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in sorted(trainer.callback_metrics.items()):
            if not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = _number(value)
        self.history.append(row)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN or infinite training loss, with one line that says where and what to try.

    A diverged run otherwise trains on for its remaining epochs on NaN
    weights and ends with a chance-level score and no hint of why. Reading
    the loss waits for the device, so on an accelerator it is read every
    ``accelerator_every`` batches (NaN weights stay NaN, so the run still
    stops within that many batches); on the CPU every batch, at no cost.
    """

    def __init__(self, accelerator_every: int = 25) -> None:
        self.accelerator_every = accelerator_every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if loss.device.type != "cpu" and batch_idx % self.accelerator_every:
            return
        if not bool(torch.isfinite(loss.detach()).all()):
            lr = trainer.optimizers[0].param_groups[-1]["lr"] if trainer.optimizers else float("nan")
            raise UserError(f"the training loss became {float(loss.detach().float().mean())} at epoch "
                            f"{trainer.current_epoch}, batch {batch_idx} (learning rate {lr:.3g}); "
                            "lower optimizer.lr, or check the data for broken images or labels")


def write_json(path: Path, payload: dict) -> None:
    """Write atomically: a crash mid-write never leaves half a metrics file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, for TensorBoard's hyperparameter table and summaries."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat
