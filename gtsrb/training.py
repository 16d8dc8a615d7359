"""``train.py``'s body: build everything from the composed config, fit, test, report.

Kept apart from the Hydra entry point so tests can call :func:`train` with a
config from Hydra's compose API.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gtsrb.averaging import EMA
from gtsrb.budget import BudgetWatch, plan_run, process_start
from gtsrb.config import validate
from gtsrb.cooldown import AugmentationCooldown
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.errors import UserError, first_line
from gtsrb.finetuning import TwoPhaseFinetuning
from gtsrb.metrics import accuracy_interval, split_accuracy_interval
from gtsrb.models.factory import min_input_size
from gtsrb.module import TrafficSignClassifier
from gtsrb.precision import FASTEST, resolve_precision, several_processes, trains_on_gpu
from gtsrb.preemption import DeferredRequeue, PreemptionCheckpoint, exit_when_interrupted, newest_checkpoint
from gtsrb.reporting import EpochHistory, StopOnNonFiniteLoss, flatten, write_json
from gtsrb.resolution import ProgressiveResizing
from gtsrb.search.pruning import pruning_callbacks

log = logging.getLogger(__name__)


def is_pretrained(cfg: DictConfig) -> bool:
    return bool(cfg.model.pretrained or cfg.model.weights)


def build_callbacks(cfg: DictConfig, with_logger: bool = True) -> list[L.Callback]:
    """The callbacks of ``conf/callbacks``, weight averaging, and fine-tuning, which only makes sense on pretrained
    weights.

    Without a logger (``logger=none``) there is nowhere to log learning rates to, so the LR monitor is left out.
    """
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not with_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.weight_averaging.name == "ema":
        callbacks.append(EMA(decay=cfg.weight_averaging.decay))
    res = cfg.resolution
    if res.name == "progressive":
        callbacks.append(ProgressiveResizing(res.min_size, cfg.data.image_size, res.start_epoch, res.end_epoch,
                                             res.multiple_of))
    if cfg.augmentation.cooldown_epochs:
        callbacks.append(AugmentationCooldown(cfg.augmentation))
    ft = cfg.finetuning
    if ft.name != "full":
        if is_pretrained(cfg):
            callbacks.append(TwoPhaseFinetuning(ft.unfreeze_at_epoch, ft.unfreeze_blocks, ft.freeze_bn_stats))
        else:
            log.info("finetuning=%s skipped: the model is trained from scratch, so every layer trains from the start",
                     ft.name)
    return callbacks


def check_image_size(model: TrafficSignClassifier, image_size: int, name: str, key: str = "data.image_size") -> None:
    smallest = min_input_size(model.model)
    if image_size < smallest:
        raise UserError(f"{key}={image_size} is too small for {name}, which downsamples by {smallest}; "
                        f"use {key}={smallest} or more")


def _single_log_stream() -> None:
    """``import lightning`` adds its own console handler; under Hydra's logging it would print every line twice."""
    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()


class _RankZeroConsole(logging.Filter):
    """Under DDP every process runs this code: the console shows the info lines of the first process only, and
    warnings and errors of all. Each process's own log file (Hydra's ``train_ddp_process_<n>.log``) keeps all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or rank_zero_only.rank == 0


def _console_from_rank_zero() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) and \
                not any(isinstance(f, _RankZeroConsole) for f in handler.filters):
            handler.addFilter(_RankZeroConsole())


def train(cfg: DictConfig) -> float:
    """Train, pick the final checkpoint (``final_checkpoint``), evaluate it on val and test, write ``metrics.json``.

    Under DDP every process runs this function on its own shard; the metrics are reduced over all of them, and
    the first process alone writes ``metrics.json`` and checkpoints, logs the hyperparameters and prints.
    Returns the final checkpoint's value of the monitored metric, which Hydra sweepers optimise.
    """
    validate(cfg)
    _single_log_stream()
    _console_from_rank_zero()
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=cfg.seed)
    datamodule.setup("fit")  # the model needs the class list
    if not datamodule.has_split("val"):
        raise UserError("the dataset has no validation images; set data.val_fraction > 0 (gtsrb) "
                        "or add a val/ folder (folder)")
    ratio = cfg.finetuning.backbone_lr_ratio if is_pretrained(cfg) and cfg.finetuning.name != "full" else 1.0
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names,
                                  label_smoothing=cfg.label_smoothing, backbone_lr_ratio=ratio,
                                  channels_last=cfg.channels_last, monitor=cfg.monitor,
                                  monitor_mode=cfg.monitor_mode)
    check_image_size(model, cfg.data.image_size, cfg.model.name)
    if cfg.resolution.name == "progressive":
        check_image_size(model, cfg.resolution.min_size, cfg.model.name, key="resolution.min_size")
    probe = _resolve_fastest_precision(model, cfg)
    resume = cfg.ckpt_path or newest_checkpoint(out)
    plan = plan_run(cfg, model.model, datamodule, resume)
    _maybe_compile(model, cfg)

    history = EpochHistory()
    watch = BudgetWatch(plan) if plan else None
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    preemption = PreemptionCheckpoint(str(out / "checkpoints"), _task_overrides())
    callbacks = [*build_callbacks(cfg, with_logger=bool(loggers)), history, StopOnNonFiniteLoss(), preemption,
                 DeferredRequeue(), *pruning_callbacks(cfg.monitor), *([watch] if watch else [])]
    trainer = _build_trainer(cfg, callbacks, loggers, out)
    with exit_when_interrupted(preemption):  # PreemptionCheckpoint saved the run and printed how to resume it
        # a run started again in its own directory (a requeued SLURM job) resumes where it was
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
        if trainer.interrupted:
            raise UserError("training was interrupted; resume it with ckpt_path="
                            + str(out / "checkpoints" / "last.ckpt"))

        epochs = list(history.history)  # copied now: loading the best checkpoint below restores the callback's state
        best = _final_checkpoint(trainer, cfg.final_checkpoint)
        ckpt = best or None  # fast_dev_run and runs without checkpointing evaluate the weights in memory
        final = {"val": _only_metrics(trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False))}
        if cfg.test and datamodule.has_split("test"):
            final["test"] = _only_metrics(trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False))

    score = final["val"].get(cfg.monitor)
    report = {
        "status": "completed",
        "monitor": cfg.monitor,
        "overrides": _task_overrides(),
        "best_score": score,
        "final_checkpoint": cfg.final_checkpoint,
        "best_checkpoint": best,  # the checkpoint the run ends on, best or last: evaluate.py ckpt_path=<run> takes it
        "last_checkpoint": str(Path(best).parent / "last.ckpt") if best else "",
        "epochs": trainer.current_epoch,
        "seconds": round(time.time() - started, 1),
        "final": final,
        "acc_ci95": {split: _accuracy_interval(trainer, model, datamodule, split, values[f"{split}/acc"])
                     for split, values in final.items() if f"{split}/acc" in values},
        "history": epochs,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if probe:
        report["precision_probe_s_per_step"] = probe
    if watch:  # the plan beside what happened, to check the prediction on this machine
        report["time_budget"] = {**watch.plan.as_dict(), "epoch_s_measured": [round(t, 1) for t in watch.epoch_s],
                                 "done_since_process_start_s": round(time.time() - process_start(), 1)}
    if trainer.is_global_zero:  # under DDP every process has the same report (metrics reduced over all); one writes
        write_json(out / "metrics.json", report)
        _log_hparams(loggers, report)
        _print_where(out, report, loggers)
    return float(score) if score is not None else float("nan")


def train_sweep_job(cfg: DictConfig) -> float:
    """:func:`train` as one job of a sweep: a job that fails does not end the sweep.

    Its error (an unreadable image, a NaN loss, out of memory, any mistake)
    is recorded as one line in the job's ``metrics.json`` (``status: failed``),
    the next job runs, and the sweep summary lists it; the sweep then exits
    non-zero (:class:`gtsrb.sweep.SweepSummary`). Returns NaN for the sweeper.

    A trial that Optuna's pruner stopped is recorded as ``status: pruned`` and
    its ``optuna.TrialPruned`` raised on, so the sweeper tells Optuna so.
    """
    from optuna import TrialPruned

    try:
        return train(cfg)
    except TrialPruned as exc:
        log.info("trial pruned: %s", exc)
        _record_unfinished(cfg, "pruned", str(exc))
        raise
    except Exception as exc:  # every failure of one job, whatever raised it
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {first_line(exc, 300)}"
        log.error("sweep job failed: %s", message)
        _record_unfinished(cfg, "failed", message)
        return float("nan")


def _record_unfinished(cfg: DictConfig, status: str, message: str) -> None:
    """``metrics.json`` of a sweep job that did not finish: its status and why, for the sweep summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", {"status": status, "error": message, "monitor": cfg.monitor,
                                      "overrides": _task_overrides(), "best_score": None, "final": {},
                                      "config": OmegaConf.to_container(cfg, resolve=True)})


def _build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list, out: Path) -> L.Trainer:
    """``lightning.Trainer`` with ``conf/trainer``; devices this machine does not have stop the run with one line.

    ``use_distributed_sampler=False``: under DDP the data module shards its loaders itself (Lightning's sampler
    injection would shard the batched path's batches a second time), see :mod:`gtsrb.data.datamodule`.
    """
    settings = f"trainer.accelerator={cfg.trainer.get('accelerator')} trainer.devices={cfg.trainer.get('devices')}"
    try:
        trainer = L.Trainer(**{**cfg.trainer, "use_distributed_sampler": False}, callbacks=callbacks,
                            logger=loggers or False, default_root_dir=str(out))
    except MisconfigurationException as exc:  # e.g. more GPUs than the machine has
        raise UserError(f"cannot build the trainer ({settings}): {' '.join(str(exc).split())}; ask for devices "
                        "this machine has (trainer.accelerator=cpu, or fewer trainer.devices)") from None
    if isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices * trainer.num_nodes == 1:
        raise UserError(f"trainer.strategy={cfg.trainer.get('strategy')} would run a single process: {settings} "
                        f"gives one device ({trainer.strategy.root_device.type}); set trainer.devices=2 or more (GPUs, "
                        "or CPU processes with trainer.accelerator=cpu), or train on one device with trainer=auto")
    return trainer


def _resolve_fastest_precision(model: TrafficSignClassifier, cfg: DictConfig) -> dict[str, float]:
    """``trainer.precision=fastest``: measure (:mod:`gtsrb.precision`) and write the winner into the config, so
    ``metrics.json`` and the logged hyperparameters say what the run trained in. Returns the probe's timings."""
    if cfg.trainer.get("precision") != FASTEST:
        return {}
    if several_processes(cfg.trainer):  # each process would measure, and might choose, on its own
        raise UserError(f"trainer.precision=fastest measures one process, but trainer.strategy="
                        f"{cfg.trainer.get('strategy', 'auto')} trainer.devices={cfg.trainer.get('devices')} starts "
                        "several; "
                        "set trainer.precision=32-true or bf16-mixed")
    size = cfg.data.image_size
    precision, seconds = resolve_precision(model.model, (cfg.data.batch_size, 3, size, size), cfg.channels_last,
                                           cfg.trainer.get("accelerator"))
    cfg.trainer.precision = precision
    return seconds


def _maybe_compile(model: TrafficSignClassifier, cfg: DictConfig) -> None:
    """``model.compile``: torch.compile the network in place (its state_dict keys stay the same)."""
    mode = cfg.model.get("compile", "off")
    if mode == "on" or (mode == "gpu" and trains_on_gpu(cfg.trainer.get("accelerator"))):
        log.info("torch.compile: compiling %s (the first steps take longer)", cfg.model.name)
        model.model.compile()


def _task_overrides() -> list[str]:
    """The command-line overrides of this job, which tell sweep jobs apart."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _only_metrics(results: list[dict]) -> dict[str, float]:
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _log_hparams(loggers, report: dict) -> None:
    """TensorBoard's HPARAMS tab: the whole config against the final metrics."""
    metrics = {f"hp/{k}": v for split in report["final"].values() for k, v in split.items()}
    params = flatten({k: v for k, v in report["config"].items() if k not in ("logger", "callbacks", "output_dir")})
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(metrics)
        logger.save()


def _accuracy_interval(trainer: L.Trainer, model: TrafficSignClassifier, datamodule: TrafficSignDataModule,
                       split: str, accuracy: float) -> dict:
    """The final accuracy's 95% interval on ``split``: over tracks where its images name their tracks, else over
    images (Wilson's).

    Mistakes come in whole tracks (a model that misreads a sign misreads most of its ~30 frames), so on held-out
    tracks Wilson's interval was 2.5-4.6x too narrow (benchmarks/README.md). Counting tracks needs each image's
    result: one more pass of Lightning's predict loop over the split, with the weights, precision and batches
    the final validation used. Under several processes each sees a share, and ``fast_dev_run`` a batch, so they
    keep Wilson's.
    """
    data = datamodule.splits[split]
    correct = None
    if data.groups is not None and bool((data.groups >= 0).all()) and trainer.world_size == 1:
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        predicted = torch.cat(trainer.predict(model, dataloaders=loader)).argmax(dim=1).cpu()
        correct = predicted == data.labels if len(predicted) == len(data.labels) else None
    if correct is None:
        low, high = accuracy_interval(accuracy, len(data))
        interval = {"low": low, "high": high, "over": f"{len(data)} images"}
    else:
        interval = split_accuracy_interval(correct, data.groups)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in interval.items()}


def _final_checkpoint(trainer: L.Trainer, which: str) -> str:
    """The file the run ends on: the best epoch by ``monitor``, or with ``final_checkpoint=last`` the last epoch.

    Why "last" exists: a schedule built to end on its best weights (OneCycle's annealing, an augmentation cooldown,
    the CPU recipes) is measured by its last epoch, and "best" on one validation split picks among epochs by noise:
    the 5-minute recipe's one 12% split put an uncooled mid-run epoch level with the cooled last one. ``""`` when
    nothing was saved (fast_dev_run, ``callbacks=none``). Only a ``ModelCheckpoint`` has a ``best_model_path``.
    """
    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    if which == "last":  # a ModelCheckpoint that watches nothing keeps the latest epoch (config.py checks one exists)
        wanted = [c for c in checkpoints if c.monitor is None]
    else:  # the monitored one; without it (callbacks.checkpoint=null) whichever saved
        wanted = [c for c in checkpoints if c.monitor is not None] or checkpoints
    return wanted[0].best_model_path if wanted else ""


def _print_where(out: Path, report: dict, loggers) -> None:
    final = report["final"]
    which = "last-epoch" if report["final_checkpoint"] == "last" else "best"
    lines = [f"run directory: {out}",
             f"{which} {report['monitor']}: {report['best_score']}",
             *(f"{split} acc 95% interval: {i['low']:.4f} to {i['high']:.4f} ({i['over']})"
               for split, i in report["acc_ci95"].items()),
             f"{report['final_checkpoint']} checkpoint: {report['best_checkpoint'] or '(none saved)'}",
             f"metrics: {out / 'metrics.json'}"]
    if "test" in final:
        lines.append("test: " + ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in sorted(final["test"].items())))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"tensorboard: uv run tensorboard --logdir {Path(logger.log_dir).parent}")
    print("\n".join(lines), flush=True)
