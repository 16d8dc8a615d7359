"""DDP in a Hydra sweep on one machine: each job's processes run that job, and the next job starts its own.

Lightning's DDP launcher (``trainer=ddp`` without SLURM or torchrun) starts the other processes of a run by
running ``train.py`` again with the same command line plus ``hydra.run.dir=<the run directory>``,
``hydra.job.name=train_ddp_process_<n>`` and ``hydra.output_subdir=null``, with ``LOCAL_RANK=<n>`` in their
environment: right for a single run, whose directory they then share. In a sweep (``-m``) that command line
is the whole sweep, which every such process would run again in a sweep directory of its own. And the
launcher leaves its process group and environment (``LOCAL_RANK``, ``MASTER_PORT``, ...) behind, so the
sweep's next job would start no processes and wait for the ones that have exited.

:func:`sweep_job` wraps one job of a sweep: it puts the job's overrides and directory into the environment
that the started processes inherit, where :func:`started_process_argv` turns them into the command line of
that one job, run in its directory; after the job it ends the process group and restores the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

JOB_ENV = "GTSRB_DDP_SWEEP_JOB"
# what Lightning's launcher sets in the process that starts the others (OMP_NUM_THREADS: one share of the cores)
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS", JOB_ENV)


def started_process_argv(argv: list[str]) -> list[str]:
    """``argv`` of a process Lightning started for a sweep job: the job alone, as a single run in its directory.

    Any other process (no sweep job in its environment, or the process of rank 0) keeps its ``argv``.
    """
    job, rank = os.environ.get(JOB_ENV), os.environ.get("LOCAL_RANK", "0")
    if not job or rank == "0":
        return argv
    spec = json.loads(job)
    return [argv[0], *spec["overrides"], f'hydra.run.dir="{spec["run_dir"]}"',
            f"hydra.job.name=train_ddp_process_{rank}", "hydra.output_subdir=null"]


@contextlib.contextmanager
def sweep_job(overrides: list[str], run_dir: str) -> Iterator[None]:
    """Run one job of a sweep such that processes started for DDP run this job, and leave nothing behind."""
    import torch

    saved = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    threads = torch.get_num_threads()
    os.environ[JOB_ENV] = json.dumps({"overrides": list(overrides), "run_dir": str(run_dir)})
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(threads)
