"""Checks of ``evaluate.py``'s options and checkpoint path that need no torch.

They run before the heavy imports (torch, Lightning, matplotlib), so a typo
in a path or an option fails within a second, with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gtsrb.errors import UserError

SPLITS = ("test", "val")
GRADCAM_METHODS = ("gradcam", "gradcam++")


def check_options(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("no checkpoint given; pass ckpt_path=<training run directory> or ckpt_path=<file>.ckpt")
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split} is not a valid choice; use split=test or split=val")
    if cfg.gradcam_method not in GRADCAM_METHODS:
        raise UserError(f"gradcam_method={cfg.gradcam_method} is not a valid choice; "
                        f"use one of: {', '.join(GRADCAM_METHODS)}")
    if any(not 0 <= e <= 1 for e in cfg.fgsm_epsilons):
        raise UserError(f"fgsm_epsilons={list(cfg.fgsm_epsilons)} must lie in [0, 1] (pixel scale), "
                        "e.g. fgsm_epsilons=[0.004,0.008,0.016,0.031]")
    if cfg.gallery_size < 0 or cfg.top_confused < 0 or cfg.tta_shift < 0:
        raise UserError("gallery_size, top_confused and tta_shift must be 0 or more")
    if cfg.device != "auto" and cfg.device != "cpu" and not str(cfg.device).startswith("cuda"):
        raise UserError(f"device={cfg.device} is not one of auto, cpu, cuda; use device=auto")


def pick_device(name: str):
    """``auto``: the GPU when there is one."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name} is not one of auto, cpu, cuda; use device=auto")
    return torch.device(name)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or the checkpoint a run directory stands for.

    An evaluation directory stands for its ``calibrated.ckpt``. In a training
    run directory, ``metrics.json`` names the best checkpoint; without it (a
    run that was interrupted) the newest ``checkpoints/best-*.ckpt``.
    """
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.exists():
        raise UserError(f"checkpoint {given} does not exist; pass ckpt_path=<run directory> or "
                        "ckpt_path=<run>/checkpoints/<file>.ckpt")
    if (given / "calibrated.ckpt").is_file():
        return given / "calibrated.ckpt"
    metrics = given / "metrics.json"
    if metrics.is_file():
        try:
            best = json.loads(metrics.read_text()).get("best_checkpoint") or ""
        except (json.JSONDecodeError, AttributeError):
            best = ""
        if best and Path(best).is_file():
            return Path(best)
        if best and (given / "checkpoints" / Path(best).name).is_file():  # the run directory was moved
            return given / "checkpoints" / Path(best).name
    candidates = sorted((given / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if candidates:
        return candidates[-1]
    raise UserError(f"{given} holds no best checkpoint (checkpoints/best-*.ckpt); pass the .ckpt file itself, "
                    "e.g. ckpt_path=<run>/checkpoints/last.ckpt")
