"""weight_averaging=ema: the checkpoint keeps the moving average as its weights, and every figure of the run (the
validation that picks the best epoch, the final validation and test) comes from those weights, as evaluate.py's do."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from gtsrb.checkpoint import load_classifier
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.training import train


def _test_loss(module, cfg) -> float:
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=cfg.seed)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    [result] = trainer.test(module, datamodule=datamodule, verbose=False)
    return result["test/loss"]


def test_ema_checkpoint_holds_the_average_and_the_run_reports_it(make_cfg, one_thread):
    cfg = make_cfg("weight_averaging=ema", "weight_averaging.decay=0.9", "optimizer.lr=0.01", "trainer.fast_dev_run=false",
                   "trainer.max_epochs=3", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false")
    train(cfg)
    report = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    best = Path(report["best_checkpoint"])
    ckpt = torch.load(best, map_location="cpu", weights_only=True)

    # the average, updated after every optimiser step, is the checkpoint's state_dict; the trained weights are kept
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"] > 0
    weights = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and k.endswith("weight")]
    gap = max((ckpt["state_dict"][k] - ckpt["current_model_state"][k]).abs().max().item() for k in weights)
    assert gap > 1e-3

    # the final validation repeats the best epoch's, and the final test is the average's, as evaluate.py sees it
    best_epoch = max(report["history"], key=lambda row: row["val/acc"])
    assert report["final"]["val"]["val/loss"] == pytest.approx(best_epoch["val/loss"], rel=1e-4)
    averaged = load_classifier(best)
    reported = report["final"]["test"]["test/loss"]
    assert _test_loss(averaged, cfg) == pytest.approx(reported, rel=1e-5)  # the same weights, data and batches
    trained = load_classifier(best)
    trained.load_state_dict(ckpt["current_model_state"])
    assert _test_loss(trained, cfg) != pytest.approx(reported, rel=1e-3)
