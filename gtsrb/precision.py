"""``trainer.precision=fastest``: time fp32 and bf16 autocast for this model on this CPU, then train in the faster.

Why measure instead of choosing once: bf16 convolutions on a CPU are fast or slow depending on the chip and on
oneDNN's kernels for it. One training step of ``simple_cnn`` (32 px, NHWC, batch 128) ran 1.61x faster in bf16
than in fp32 on one 2-core AVX512-BF16 machine, and 0.78x as fast on another (benchmarks/README.md). A recipe
that has to be fast on every machine cannot fix either choice; it asks the machine it runs on.

The probe costs a few seconds. It trains a copy of the network on a random batch of the real shape, so the model
being trained, its batch-norm statistics and the random streams of the run are not touched. The contenders
alternate in rounds, so a busy neighbour slows both alike, and each is judged by its fastest step: a neighbour
only ever adds time, and one that is busy for most of the probe (the end of another run, a test starting)
decides the medians. Judged by medians, a run of ``gtsrb_cpu_long`` that started beside another job measured bf16
at 0.40x fp32 (1.4-2.2x on the same CPU when quiet) and trained all 28 epochs in fp32. The faster one must win
by a margin (``MARGIN``): on a tie fp32 stays, because it needs no rounding argument. On a GPU there is nothing to
measure here: ``fastest`` means bf16 autocast where the GPU supports it (Ampere and newer), else fp16 with loss
scaling.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

FASTEST = "fastest"
CONTENDERS = ("32-true", "bf16-mixed")
MARGIN = 1.05  # bf16 must be at least 5% faster per step to be chosen


def several_processes(trainer: Mapping) -> bool:
    """Whether ``conf/trainer`` settings start more than one process (a DDP strategy, or several devices): a
    measurement made in one of them would be made, and acted on, by each on its own."""
    devices = trainer.get("devices")
    return "ddp" in str(trainer.get("strategy", "")) or (isinstance(devices, int) and devices > 1)


def trains_on_gpu(accelerator: str | None) -> bool:
    """Whether Lightning will train on a CUDA device with ``trainer.accelerator`` (null means auto)."""
    return torch.cuda.is_available() and (accelerator or "auto") in ("auto", "gpu", "cuda")


def resolve_precision(network: nn.Module, batch_shape: tuple[int, ...], channels_last: bool,
                      accelerator: str | None, rounds: int = 3, steps: int = 2) -> tuple[str, dict[str, float]]:
    """The Lightning precision to train in, and the measured seconds per step of each contender (empty on GPU)."""
    if trains_on_gpu(accelerator):
        return ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"), {}
    seconds = time_steps(network, batch_shape, channels_last, rounds, steps)
    fp32, bf16 = seconds["32-true"], seconds["bf16-mixed"]
    chosen = "bf16-mixed" if fp32 / bf16 >= MARGIN else "32-true"
    log.info("trainer.precision=fastest: %s (seconds per training step: fp32 %.4f, bf16 autocast %.4f, %.2fx)",
             chosen, fp32, bf16, fp32 / bf16)
    return chosen, seconds


def time_steps(network: nn.Module, batch_shape: tuple[int, ...], channels_last: bool,
               rounds: int, steps: int) -> dict[str, float]:
    """Seconds per forward-backward step of a copy of ``network`` on CPU, per contender (:func:`least_disturbed`
    of its steps), in alternating rounds; each round's first step is a warm-up (oneDNN picks its kernels there)
    and is not counted."""
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global stream: the run's seed stays intact
        return _time_steps(network, batch_shape, channels_last, rounds, steps)


def _time_steps(network: nn.Module, batch_shape: tuple[int, ...], channels_last: bool,
                rounds: int, steps: int) -> dict[str, float]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    probe = copy.deepcopy(network).cpu().train().to(memory_format=fmt)
    images = torch.randn(batch_shape).contiguous(memory_format=fmt)
    per_step: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        for name in CONTENDERS:
            for step in range(steps + 1):
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16-mixed"):
                    loss = probe(images).float().logsumexp(dim=1).mean()
                loss.backward()  # outside autocast, as Lightning's precision plugin does
                if step:
                    per_step[name].append(time.perf_counter() - started)
            probe.zero_grad(set_to_none=True)
    return least_disturbed(per_step)


def least_disturbed(per_step: dict[str, list[float]]) -> dict[str, float]:
    """Each contender's fastest step: the one a neighbour disturbed least (load adds time, never removes it)."""
    return {name: min(values) for name, values in per_step.items()}
