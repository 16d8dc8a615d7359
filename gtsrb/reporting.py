"""What a run leaves behind besides checkpoints: per-epoch history and ``metrics.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch


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
