"""The two-phase fine-tuning callback trains exactly the intended parameters at the intended learning rates."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.finetuning import TwoPhaseFinetuning
from gtsrb.models import parameter_blocks
from gtsrb.module import TrafficSignClassifier
from gtsrb.optim import warmup_cosine

RATIO = 0.25
EPOCHS, BATCHES = 3, 3


def _state(modules) -> list[torch.Tensor]:
    """Parameters and BatchNorm statistics of some modules, copied."""
    return [t.detach().clone() for m in modules for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
            if t.is_floating_point()]


def _changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


class Probe(L.Callback):
    """Records, per epoch, which blocks changed, and per step the learning rate of every group."""

    def __init__(self) -> None:
        self.changed: dict[int, list[bool]] = {}
        self.head_changed: dict[int, bool] = {}
        self.lrs: list[dict[str, float]] = []
        self.bn_train_in_frozen: list[bool] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.blocks, self.head = parameter_blocks(pl_module.model)
        self.start = [_state(b) for b in self.blocks], _state(self.head)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ft = next(c for c in trainer.callbacks if isinstance(c, TwoPhaseFinetuning))
        self.bn_train_in_frozen.append(any(m.training for m in ft.frozen_modules()
                                           if isinstance(m, torch.nn.BatchNorm2d)))

    def on_train_epoch_end(self, trainer, pl_module):
        blocks_before, head_before = self.start
        self.changed[trainer.current_epoch] = [_changed(b, _state(m)) for b, m in zip(blocks_before, self.blocks)]
        self.head_changed[trainer.current_epoch] = _changed(head_before, _state(self.head))


def _fit(make_cfg, weights, tmp_path, scheduler="onecycle", unfreeze_blocks=2, epochs=EPOCHS, ckpt_path=None,
         finetuning=None, extra=()):
    cfg = make_cfg("model=mobilenet_v3_small", f"model.weights={weights}", f"scheduler={scheduler}",
                   "scheduler.patience=100", "augmentation=none", "model.drop_rate=0", *extra)
    L.seed_everything(0)
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=0)
    datamodule.setup()
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names,
                                  backbone_lr_ratio=RATIO)
    finetuning = finetuning or TwoPhaseFinetuning(unfreeze_at_epoch=1, unfreeze_blocks=unfreeze_blocks)
    probe = Probe()
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=BATCHES, limit_val_batches=1, accelerator="cpu",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[finetuning, probe], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, probe, cfg


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "plateau", "none"])
def test_phases_train_the_intended_blocks_at_the_intended_rates(make_cfg, mobilenet_weights, tmp_path, scheduler):
    trainer, probe, cfg = _fit(make_cfg, mobilenet_weights, tmp_path, scheduler=scheduler)
    n = len(probe.changed[0])
    # phase 1: only the head moves; frozen BatchNorm keeps its pretrained statistics
    assert probe.changed[0] == [False] * n and probe.head_changed[0]
    # phase 2: the last two blocks join, the earlier ones stay exactly as loaded
    for epoch in range(1, EPOCHS):
        assert probe.changed[epoch] == [False] * (n - 2) + [True, True]
        assert probe.head_changed[epoch]
    assert not any(probe.bn_train_in_frozen)
    # the backbone/head ratio holds at every step, in both phases
    for lrs in probe.lrs:
        assert lrs["backbone"] == pytest.approx(RATIO * lrs["head"])
        assert lrs["backbone_no_decay"] == pytest.approx(lrs["backbone"])
    # and the head's schedule runs on undisturbed across the phase change
    head = [lrs["head"] for lrs in probe.lrs]
    lr, total = cfg.optimizer.lr, EPOCHS * BATCHES
    if scheduler == "onecycle":
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=cfg.scheduler.pct_start,
                                                  div_factor=cfg.scheduler.div_factor,
                                                  final_div_factor=cfg.scheduler.final_div_factor)
        expected = []
        for _ in range(total):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            ref.step()
    elif scheduler == "cosine":
        factor = warmup_cosine(int(round(cfg.scheduler.warmup_epochs * BATCHES)), total, cfg.scheduler.min_lr_ratio)
        expected = [lr * factor(step) for step in range(total)]
    else:
        expected = [lr] * total
    assert head == pytest.approx(expected)


def test_unfreeze_all_blocks_by_default(make_cfg, mobilenet_weights, tmp_path):
    _, probe, _ = _fit(make_cfg, mobilenet_weights, tmp_path, unfreeze_blocks=None, epochs=2)
    assert not any(probe.changed[0]) and all(probe.changed[1])


def test_linear_probe_never_unfreezes(make_cfg, mobilenet_weights, tmp_path):
    finetuning = TwoPhaseFinetuning(unfreeze_at_epoch=None)
    _, probe, _ = _fit(make_cfg, mobilenet_weights, tmp_path, finetuning=finetuning, epochs=2)
    assert not any(probe.changed[0]) and not any(probe.changed[1]) and probe.head_changed[1]


def test_resume_past_unfreeze_epoch_continues_in_phase_two(make_cfg, mobilenet_weights, tmp_path):
    trainer, _, _ = _fit(make_cfg, mobilenet_weights, tmp_path, epochs=2)
    ckpt = tmp_path / "after_two_epochs.ckpt"
    trainer.save_checkpoint(ckpt)
    _, probe, _ = _fit(make_cfg, mobilenet_weights, tmp_path / "resumed", epochs=3, ckpt_path=str(ckpt))
    assert list(probe.changed) == [2]  # only the third epoch ran
    n = len(probe.changed[2])
    assert probe.changed[2] == [False] * (n - 2) + [True, True]


def test_gradient_masking_freezes_without_touching_requires_grad(make_cfg, mobilenet_weights, tmp_path):
    """The DDP-safe mode: every parameter keeps requires_grad, frozen ones still do not move."""
    finetuning = TwoPhaseFinetuning(unfreeze_at_epoch=1, unfreeze_blocks=1, mask_gradients=True)
    trainer, probe, _ = _fit(make_cfg, mobilenet_weights, tmp_path, finetuning=finetuning, epochs=2)
    assert all(p.requires_grad for p in trainer.lightning_module.parameters())
    n = len(probe.changed[0])
    assert probe.changed[0] == [False] * n
    assert probe.changed[1] == [False] * (n - 1) + [True]
