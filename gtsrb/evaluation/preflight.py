"""Checks of ``evaluate.py``'s options that need no torch (the checkpoint path: :mod:`gtsrb.checkpoint`).

They run before the heavy imports (torch, Lightning, matplotlib), so a typo
in a path or an option fails within a second, with one line.
"""

from __future__ import annotations

from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from gtsrb.config import ModelOverrides
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
    _check_model_overrides(cfg.model)
    if cfg.device != "auto" and cfg.device != "cpu" and not str(cfg.device).startswith("cuda"):
        raise UserError(f"device={cfg.device} is not one of auto, cpu, cuda; use device=auto")


def _check_model_overrides(model: DictConfig) -> None:
    """``+model.<key>`` gets past the schema (Hydra's ``+`` may add any key): only the schema's keys may replace
    the checkpoint's, and never ``model.kwargs``, which built the network the checkpoint's weights fit."""
    settable = [f.name for f in fields(ModelOverrides)]
    for key in model:
        if key == "kwargs":
            raise UserError("model.kwargs come from the checkpoint: its weights fit the network they built; "
                            "remove the model.kwargs override")
        if key not in settable:
            raise UserError(f"model.{key} is not a model setting; override one of: {', '.join(settable)}")
