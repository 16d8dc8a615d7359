"""``time_budget_s``: train as many epochs as this machine fits in a wall-clock budget, decided before training.

Why: a fixed epoch count fits a time goal on one machine only. ``gtsrb_cpu``'s 4 epochs took 3 to 3.5 minutes
where bf16 ran 1.7-2.1x fp32, and 4.3 to 5.2 where fp32 won (benchmarks/README.md): a "5-minute recipe" either
wasted a minute or overran. With a budget the recipe asks the machine instead, as ``trainer.precision=fastest``
already does for the number format.

How, and the traps it avoids:

* The plan is made once, before ``fit``: the schedule (OneCycle's warm-up and annealing) is laid out over the
  planned epochs exactly as over a fixed number. Stopping a run at a deadline instead (Lightning's ``max_time``)
  would end it at a high learning rate, before the annealing that does a short schedule's best work.
* The time per epoch is predicted from whole training steps timed on a copy of the network, in the precision the
  run will use, on a real batch: augmentation, forward, backward and AdamW (:func:`time_training_step`; the model,
  its optimiser and the run's random streams are not touched). Their mean, not their fastest: the plan is for the
  machine as it is now, neighbours included. The precision probe's fastest forward-backward step (0.107-0.120 s)
  read 10-20% below a sustained whole step (0.131-0.132 s) on the 2-core CPU, so a plan built on it overran.
  ``OVERHEAD`` adds what the timed steps leave out (Lightning's loop, metrics, weight averaging, logging); a
  validation or test batch counts as half a step.
* Time already spent counts: the budget runs from process start, so imports, decoding and building the cache are
  inside it, as they are inside the wall time a user sees.
* The plan is a number of epochs, written into ``trainer.max_epochs`` and ``metrics.json`` (``time_budget``), so
  ``trainer.max_epochs=N`` repeats the run exactly on another machine. ``trainer.max_epochs`` stays a ceiling.
* At least the fewest epochs the run can train: one, or one more than ``augmentation.cooldown_epochs`` (the
  cooldown needs an epoch of full augmentation before it; given as a share of the run, it needs two epochs). A
  machine too slow for them trains them anyway and warns by how much it will overrun: a long recipe on a slow
  laptop is slow, not refused after its start-up.
* The prediction is not a promise: a neighbour that takes the CPU mid-run slows every epoch after the plan.
  :class:`BudgetWatch` logs each epoch's time against the prediction, and warns when the run will overrun.
* CPU only: the probe times steps on the CPU, and under DDP each process would plan on its own (and could stop
  at a different epoch than the others); both are refused with the fix.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from gtsrb.cooldown import fewest_epochs
from gtsrb.data.imageset import ImageSet
from gtsrb.errors import UserError
from gtsrb.precision import several_processes, trains_on_gpu
from gtsrb.reporting import write_json

log = logging.getLogger(__name__)

# gtsrb_cpu's epochs took 1.0-1.3x (training batches + half the validation batches) x the timed step in four runs
# on the 2-core CPU, 1.1 in the typical one (benchmarks/README.md, "The time budget"): a plan errs on the short side.
OVERHEAD = 1.2
EVAL_STEP_SHARE = 0.5  # a validation or test batch (no backward pass) against a training step


@functools.cache
def process_start() -> float:
    """When this process started (``time.time()`` scale): the budget and the benchmark's clock count from here."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # not Linux: count from the first call
        return _FIRST_CALL


_FIRST_CALL = time.time()


def time_training_step(network: nn.Module, augment, images: torch.Tensor, labels: torch.Tensor, bf16: bool,
                       channels_last: bool, steps: int = 8, warmup: int = 2) -> float:
    """Mean seconds of a whole training step (augmentation of ``images``, forward, backward, AdamW) on a copy of
    ``network``, on the CPU; the first ``warmup`` steps (oneDNN choosing kernels) are not counted."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):  # augmentation and dropout draw from the run's stream: leave it intact
        probe = copy.deepcopy(network).cpu().train().to(memory_format=fmt)
        optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4)
        for step in range(warmup + steps):
            if step == warmup:
                started = time.perf_counter()
            batch, targets = augment(images, labels)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(probe(batch.contiguous(memory_format=fmt)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps


@dataclass
class EpochPlan:
    budget_s: float
    elapsed_s: float  # since process start, when the plan was made
    step_s: float  # measured seconds per training step (augmentation, forward, backward, optimiser)
    epoch_s: float  # predicted seconds per epoch, validation included
    closing_s: float  # predicted seconds of the final validation and test
    epochs: int
    ceiling: int | None  # trainer.max_epochs before the plan

    def as_dict(self) -> dict:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def plan_epochs(budget_s: float, elapsed_s: float, step_s: float, train_batches: int, val_batches: int,
                closing_batches: int, ceiling: int | None, fewest: int = 1, why_fewest: str = "") -> EpochPlan:
    """The most epochs that end within ``budget_s`` after ``elapsed_s``; at most ``ceiling``, and at least
    ``fewest`` (the run's shortest sensible length, ``why_fewest`` says why), over budget if need be."""
    epoch_s = OVERHEAD * step_s * (train_batches + EVAL_STEP_SHARE * val_batches)
    closing_s = OVERHEAD * step_s * EVAL_STEP_SHARE * closing_batches
    fits = math.floor((budget_s - elapsed_s - closing_s) / epoch_s)
    limited = ceiling is not None and ceiling >= 0
    if limited:  # a ceiling below ``fewest`` is the config's error, told where it is checked
        fewest = max(1, min(fewest, ceiling))
    if fits < fewest:
        over_s = elapsed_s + closing_s + fewest * epoch_s - budget_s
        log.warning("time_budget_s=%g: %.0f s are gone and one epoch takes about %.0f s, so %d fit; training %d%s, "
                    "about %.0f s over (raise time_budget_s, or use a smaller model or data.image_size)",
                    budget_s, elapsed_s, epoch_s, max(fits, 0), fewest, why_fewest, over_s)
    epochs = max(fewest, min(fits, ceiling) if limited else fits)
    return EpochPlan(budget_s, elapsed_s, step_s, epoch_s, closing_s, epochs, ceiling)


def plan_run(cfg: DictConfig, network: nn.Module, datamodule, resume: str | None) -> EpochPlan | None:
    """``time_budget_s`` for ``train.py``: plan, write the epochs into ``cfg.trainer.max_epochs`` and the plan into
    the run's ``time_budget.json``; ``None`` without a budget (or under ``fast_dev_run``). A resumed run keeps its
    plan: planning again in a new process would give the schedule another length than the one its checkpoint is
    part way through."""
    budget = cfg.get("time_budget_s")
    if budget is None or cfg.trainer.get("fast_dev_run"):
        return None
    if resume:
        saved = Path(resume).resolve().parent.parent / "time_budget.json"
        if not saved.is_file():
            raise UserError(f"time_budget_s={budget} with a checkpoint to resume ({resume}), but its run has no "
                            f"{saved.name} to take the planned epochs from; set time_budget_s=null and "
                            "trainer.max_epochs to the original run's epochs")
        plan = EpochPlan(**json.loads(saved.read_text()))
        log.info("time_budget_s: resuming the plan of %s: %d epochs", saved.parent, plan.epochs)
        cfg.trainer.max_epochs = plan.epochs
        return plan
    on_gpu = trains_on_gpu(cfg.trainer.get("accelerator"))
    if several_processes(cfg.trainer) or on_gpu:
        raise UserError(f"time_budget_s={budget} times training steps on the CPU in one process, but this run trains "
                        f"on {'a GPU' if on_gpu else 'several processes'}; set time_budget_s=null and choose "
                        "trainer.max_epochs")
    batch = cfg.data.batch_size
    train_set = datamodule.splits["train"]
    if isinstance(train_set, ImageSet):  # a real batch, augmented as training will augment it
        images, labels = train_set.images[:batch], train_set.labels[:batch]
    else:  # decoded lazily: a random batch of the same shape
        size = cfg.data.image_size
        images, labels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8), torch.zeros(batch).long()
    bf16 = "bf16" in str(cfg.trainer.get("precision"))
    step_s = time_training_step(network, datamodule.augment, images, labels, bf16, cfg.channels_last)
    batches = {split: limited_batches(math.ceil(len(datamodule.splits.get(split, ())) / batch),
                                      cfg.trainer.get(f"limit_{split}_batches")) for split in ("val", "test")}
    batches["train"] = limited_batches(len(train_set) // batch, cfg.trainer.get("limit_train_batches"))  # drop_last
    closing = batches["val"] + (batches["test"] if cfg.test else 0)
    cooldown = cfg.augmentation.get("cooldown_epochs") or 0  # it needs one epoch of full augmentation before it
    plan = plan_epochs(budget, time.time() - process_start(), step_s, batches["train"], batches["val"], closing,
                       cfg.trainer.get("max_epochs"), fewest=fewest_epochs(cooldown),
                       why_fewest=f" (augmentation.cooldown_epochs={cooldown} and one before it)" if cooldown else "")
    log.info("time_budget_s=%g: %d epochs of about %.0f s each fit after %.0f s of start-up (%.3f s per step in %s; "
             "trainer.max_epochs=%s is the ceiling)", budget, plan.epochs, plan.epoch_s, plan.elapsed_s, step_s,
             "bf16" if bf16 else "fp32", plan.ceiling)
    cfg.trainer.max_epochs = plan.epochs
    write_json(Path(cfg.output_dir) / "time_budget.json", plan.as_dict())
    return plan


def limited_batches(batches: int, limit: int | float | None) -> int:
    """The batches Lightning runs of ``batches`` under ``trainer.limit_*_batches``: a count, or a share."""
    if limit is None:
        return batches
    if isinstance(limit, float):
        return int(batches * limit)
    return min(batches, int(limit))


class BudgetWatch(L.Callback):
    """After each epoch, how the run keeps to its plan: the measured epoch against the predicted one, and when
    training will end at this pace. A warning when that is past the budget, so an overrun is explained."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan
        self.epoch_started = 0.0
        self.epoch_s: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_started = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's validation has run by now (Lightning validates inside the training epoch)."""
        self.epoch_s.append(time.time() - self.epoch_started)
        left = trainer.max_epochs - trainer.current_epoch - 1
        ends = time.time() - process_start() + left * self.epoch_s[-1] + self.plan.closing_s
        message = ("time budget: epoch %d took %.0f s (planned %.0f s); at this pace the run ends after %.0f s "
                   "of time_budget_s=%g")
        args = (trainer.current_epoch, self.epoch_s[-1], self.plan.epoch_s, ends, self.plan.budget_s)
        (log.warning if ends > self.plan.budget_s else log.info)(message, *args)
