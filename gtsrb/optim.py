"""Optimizer parameter groups and learning-rate schedules from ``conf/optimizer`` and ``conf/scheduler``.

Every parameter group exists from the first step, including those of a
backbone that starts frozen. Torch schedulers record per-group state when they
are built (OneCycleLR's ``max_lr``, ReduceLROnPlateau's ``min_lrs``, LambdaLR's
``base_lrs``), so a group added later would crash them or go unscheduled;
freezing is done by the fine-tuning callback through ``requires_grad`` instead.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from gtsrb.models.factory import parameter_blocks


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_ratio: float) -> list[dict]:
    """Head and backbone groups, each split into decayed weights and undecayed biases/norms."""
    blocks, head = parameter_blocks(model)
    parts = {"head": head, "backbone": [m for block in blocks for m in block]}
    groups = []
    for part, modules in parts.items():
        params = [p for m in modules for p in m.parameters(recurse=False)]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        part_lr = lr if part == "head" else lr * backbone_lr_ratio
        groups.append(dict(name=part, params=decay, lr=part_lr, weight_decay=weight_decay))
        groups.append(dict(name=f"{part}_no_decay", params=no_decay, lr=part_lr, weight_decay=0.0))
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: DictConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up to the peak, then a cosine down to ``min_ratio`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                    monitor: str, mode: str) -> dict | None:
    """A Lightning ``lr_scheduler`` config dict, or None for a constant learning rate."""
    if cfg.name == "onecycle":
        # OneCycleLR divides by the length of each phase: very short runs (fast_dev_run, a
        # few batches) need at least two warm-up steps and one annealing step.
        total = max(total_steps, 4)
        pct_start = min(max(cfg.pct_start, 2 / total), 1 - 1 / total)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
        return dict(scheduler=scheduler, interval="step")
    if cfg.name == "cosine":
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        factor = warmup_cosine(warmup, total_steps, cfg.min_lr_ratio)
        return dict(scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor), interval="step")
    if cfg.name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.factor,
                                                               patience=cfg.patience)
        return dict(scheduler=scheduler, interval="epoch", monitor=monitor)
    return None
