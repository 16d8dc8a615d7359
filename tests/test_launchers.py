"""Sweeps through submitit (``hydra/launcher=local`` runs here for real, ``hydra/launcher=slurm`` renders its sbatch
script), the command line's checks of a launcher, and a SLURM pre-emption simulated end to end: SIGUSR1, the HPC
checkpoint, ``scontrol requeue``, SLURM's SIGTERM, and the requeued job resuming in the same directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.utils import setup_globals
from hydra.utils import instantiate
from submitit.helpers import DelayedSubmission

from gtsrb.cli import CONF_DIR, preflight
from gtsrb.config import register_configs
from gtsrb.errors import UserError
from test_train_cli import ROOT, TINY_RUN, run_train


def _fake_commands(folder: Path, *names: str) -> Path:
    """Executables that append their arguments to ``<name>.calls`` and succeed, standing in for SLURM's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text(f'#!/bin/sh\necho "$@" >> "{folder / name}.calls"\n')
        path.chmod(0o755)
    return folder


def test_slurm_launcher_asks_sbatch_for_what_lightning_needs(tmp_path, monkeypatch):
    """The sbatch script the plugin writes from conf/hydra/launcher/slurm.yaml: one task per device and the nodes
    of the trainer, SIGUSR1 90 s before the wall time (Lightning's requeue signal, not submitit's USR2), requeueable,
    logs inside the sweep."""
    import submitit

    monkeypatch.setenv("PATH", f"{_fake_commands(tmp_path / 'bin', 'srun')}:{os.environ['PATH']}")
    register_configs()
    sweep = tmp_path / "sweep"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer.devices=4",
                                          "+trainer.num_nodes=2", f"hydra.sweep.dir={sweep}", "hydra.job.name=train"],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    scripts = []

    def submit(executor, function, *arguments):  # what would go to sbatch, instead of sbatch
        executor._executor.parameters["map_count"] = len(arguments[0])
        scripts.append(executor._executor._make_submission_file_text("python -m submitit.core._submit", "0"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    flags = {line.removeprefix("#SBATCH ") for line in scripts[0].splitlines() if line.startswith("#SBATCH")}
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--signal=USR1@90",
            "--requeue", "--time=240", "--array=0-1%2"} <= flags
    assert f"--output={sweep}/.submitit/%A_%a/%A_%a_0_log.out" in flags
    assert scripts[0].strip().splitlines()[-1].startswith("srun ")  # starts the tasks, each with its SLURM_PROCID


@pytest.mark.parametrize(("args", "expected"), [
    (["-m", "hydra/launcher=slurm"], ["hydra/launcher=slurm", "sbatch and srun", "PATH", "hydra/launcher=local"]),
    (["-m", "hydra/launcher=submitit_slurm"], ["hydra/launcher=submitit_slurm", "sbatch", "hydra/launcher=local"]),
    (["hydra/launcher=local"], ["hydra/launcher=local", "add -m"]),
    (["-m", "hydra/launcher=lokal"], ["unknown hydra/launcher 'lokal'", "local, slurm, submitit_local"]),
    (["-m", "hydra/launcher=local", "hydra.launcher.timeout_min=soon"], ["hydra.launcher.timeout_min", "soon"]),
], ids=["no-sbatch", "plugin-name-no-sbatch", "without-m", "unknown", "wrong-type"])
def test_a_launcher_that_cannot_start_fails_with_one_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands here, whatever this machine has
    with pytest.raises(UserError) as info:
        preflight([*args, "experiment=quickstart"], "train")
    assert all(text in str(info.value) for text in expected) and "\n" not in str(info.value), str(info.value)


def test_slurm_launcher_needs_an_integer_number_of_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_commands(tmp_path, 'sbatch', 'srun')}:{os.environ['PATH']}")
    preflight(["-m", "hydra/launcher=slurm", "experiment=quickstart", "trainer.devices=2"], "train")
    with pytest.raises(UserError, match="trainer.devices to the number of GPUs per node .* not 'auto'"):
        preflight(["-m", "hydra/launcher=slurm", "experiment=quickstart", "trainer.devices=auto"], "train")


def test_local_launcher_runs_each_job_in_its_own_process_and_summarises_the_sweep(image_folder, tmp_path):
    """Two real jobs through submitit's local executor, one of which fails (a truncated image with
    data.on_corrupt=error): both write metrics.json from their own process, the summary lists both, the failure
    ends the sweep with status 1, and a requeued job would land in the same directory."""
    root = tmp_path / "images"
    shutil.copytree(image_folder, root)
    broken = root / "train" / "crossing" / "img0.png"
    broken.write_bytes(broken.read_bytes()[:80])
    # a timestamped sweep directory like the default one, to the microsecond: a job that re-resolved it would miss
    proc = run_train("-m", "hydra/launcher=local", "experiment=quickstart", "data=folder", f"data.root={root}",
                     "data.image_size=32", "data.batch_size=4", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                     "logger=csv", "data.on_corrupt=error,skip",
                     f"hydra.sweep.dir={tmp_path}/sweep/${{now:%H-%M-%S-%f}}", check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    [sweep] = (tmp_path / "sweep").iterdir()
    with open(sweep / "summary.csv") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"0", "1"}
    assert rows["0"]["status"] == "failed" and str(broken) in rows["0"]["error"]
    assert rows["1"]["status"] == "completed" and 0 <= float(rows["1"]["score"]) <= 1
    assert "error: 1 of 2 sweep jobs failed" in proc.stderr
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == rows[job]["status"]
    # each job ran in a process of its own: submitit's job id is that process's pid, its logs are in the sweep
    ids = [str(yaml.safe_load((sweep / job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
           for job in ("0", "1")]
    assert len(set(ids)) == 2
    for job_id in ids:
        assert "Starting with JobEnvironment" in (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    # a requeued job unpickles the same submission and composes its config again: same directory, later
    time.sleep(0.01)
    submission = DelayedSubmission.load(sweep / ".submitit" / ids[1] / f"{ids[1]}_submitted.pkl")
    launcher, (overrides, *_) = submission.function, submission.args
    setup_globals()  # Hydra's resolvers, as the job registers them
    again = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    assert Path(again.hydra.sweep.dir) == sweep


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost"}


def test_slurm_preemption_requeues_and_the_requeued_job_resumes(tmp_path):
    """SLURM simulated: SIGUSR1 before the wall time makes Lightning save hpc_ckpt_1.ckpt and run
    ``scontrol requeue 4242``; SLURM then ends the job with SIGTERM, which saves interrupted.ckpt; the requeued job,
    the same command in the same directory, resumes from the newest of them and finishes with its history kept."""
    fake = _fake_commands(tmp_path / "bin", "scontrol")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **SLURM_ENV,
           "PATH": f"{fake}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", *TINY_RUN, "trainer.max_epochs=8", "logger=csv", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    calls = fake / "scontrol.calls"
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("best-*.ckpt")) and time.time() < deadline:  # an epoch is done
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # sbatch --signal=USR1@90: the wall time is near
    while not calls.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()  # saved before the requeue
    assert calls.read_text().split() == ["requeue", "4242"]
    proc.send_signal(signal.SIGTERM)  # how SLURM ends a job it requeues
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "on SLURM a requeued job resumes from the newest checkpoint of its run directory by itself" in err
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    saved = torch.load(interrupted, weights_only=False)
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert saved["global_step"] >= hpc["global_step"] > 0 and saved["epoch"] < 8
    assert not (run_dir / "metrics.json").exists()

    requeued = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, requeued.stdout[-3000:] + requeued.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {interrupted}" in requeued.stdout + requeued.stderr
    report = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in report["history"]] == list(range(8)) and report["epochs"] == 8
    kept = saved["callbacks"]["EpochHistory"]["history"]
    assert report["history"][:len(kept)] == kept and len(kept) == saved["epoch"]  # the epochs before, as they were
    assert calls.read_text().split() == ["requeue", "4242"]  # requeued once


@pytest.fixture
def on_slurm(monkeypatch, tmp_path) -> Path:
    """This process as SLURM's job 4242 with a fake ``scontrol``: the file its calls are appended to."""
    for name, value in SLURM_ENV.items():
        monkeypatch.setenv(name, value)
    fake = _fake_commands(tmp_path / "bin", "scontrol")
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    return fake / "scontrol.calls"


def _train(make_cfg, monkeypatch, *overrides: str, callback: L.Callback | None = None) -> Path:
    """The tiny run in this process, ``callback`` first among its callbacks: its run directory."""
    import gtsrb.training
    from gtsrb.training import build_callbacks, train

    monkeypatch.setattr(gtsrb.training, "build_callbacks", lambda cfg, with_logger=True: [
        *([callback] if callback else []), *build_callbacks(cfg, with_logger)])
    cfg = make_cfg("trainer.fast_dev_run=false", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
                   *overrides)
    train(cfg)
    return Path(cfg.output_dir)


def test_slurms_requeue_signal_in_the_middle_of_a_log_write_requeues_after_the_batch(make_cfg, monkeypatch, on_slurm,
                                                                                   one_thread):
    """Lightning requeues inside the signal handler, which re-entered the CSV logger's save when SIGUSR1 came in the
    middle of it (in CI that left rows wider than the header, and the next save failed with "dict contains fields
    not in fieldnames"). The requeue now runs after a training batch: the write is never re-entered, the run saves
    its HPC checkpoint and asks for the requeue; a second signal after that (another rank's, on a cluster) asks
    for nothing more; and, with no SIGTERM following, the run trains to the end."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    run_dir = Path(make_cfg().output_dir)
    writes = {"under_way": False, "reentered": False, "signals": 0}
    real_save = ExperimentWriter.save

    def save_with_the_signal_in_the_middle(writer):
        writes["reentered"] |= writes["under_way"]
        writes["under_way"] = True
        try:
            requeued = (run_dir / "hpc_ckpt_1.ckpt").is_file()
            if writes["signals"] == int(requeued) and callable(signal.getsignal(signal.SIGUSR1)):  # before, after
                writes["signals"] += 1
                signal.raise_signal(signal.SIGUSR1)  # Python runs the handler before this returns
            real_save(writer)
        finally:
            writes["under_way"] = False

    monkeypatch.setattr(ExperimentWriter, "save", save_with_the_signal_in_the_middle)
    assert _train(make_cfg, monkeypatch, "trainer.max_epochs=3", "logger=csv") == run_dir
    assert writes["signals"] == 2 and not writes["reentered"]
    assert on_slurm.read_text().split() == ["requeue", "4242"]
    assert [path.name for path in run_dir.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] > 0 and hpc["epoch"] < 3  # saved during the run
    report = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in report["history"]] == [0, 1, 2]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # Lightning put back what it found


def test_slurms_requeue_signal_during_the_final_test_requeues_when_the_test_ends(make_cfg, monkeypatch, on_slurm,
                                                                                one_thread):
    """After ``fit`` no training batch comes: a signal during the final test is acted on when the test ends (not
    lost when Lightning puts its handlers back), and the run still writes its metrics."""

    class SignalDuringTest(L.Callback):
        saved_in_the_middle = None

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 0:
                signal.raise_signal(signal.SIGUSR1)

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 0:
                self.saved_in_the_middle = (Path(trainer.default_root_dir) / "hpc_ckpt_1.ckpt").exists()

    signaller = SignalDuringTest()
    run_dir = _train(make_cfg, monkeypatch, "trainer.max_epochs=1", callback=signaller)
    assert signaller.saved_in_the_middle is False
    assert on_slurm.read_text().split() == ["requeue", "4242"]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)["epoch"] == 1  # training had ended
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_slurms_requeue_signal_in_an_epochs_last_batch_saves_after_the_next_epochs_first(make_cfg, monkeypatch,
                                                                                        on_slurm, one_thread):
    """A checkpoint saved after an epoch's last batch resumes past that epoch's validation (Lightning counts the
    epoch as done); the requeue waits for the first batch of the next epoch, after the validation it keeps."""

    class SignalInTheLastBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == trainer.num_training_batches - 1:
                signal.raise_signal(signal.SIGUSR1)

    run_dir = _train(make_cfg, monkeypatch, "trainer.max_epochs=2", callback=SignalInTheLastBatch())
    assert on_slurm.read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["epoch"] == 1
    assert [(row["epoch"], "val/acc" in row) for row in hpc["callbacks"]["EpochHistory"]["history"]] == [(0, True)]


@pytest.mark.slow
def test_on_slurm_every_rank_requeues_after_the_same_batch(tmp_path):
    """SLURM signals every task, each at its own point in its step. Lightning's handler saves the HPC checkpoint,
    which all ranks save together, at once in the task signalled: with two simulated tasks and only the second
    signalled, both hung and neither saved. Now both save after the same batch, rank 0 requeues, and, with no
    SIGTERM following, the run trains to the end."""
    fake = _fake_commands(tmp_path / "bin", "scontrol")
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", *TINY_RUN, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.max_epochs=4", "logger=csv", f"hydra.run.dir={run_dir}"]  # what srun starts in every task
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    tasks = []
    for rank in (0, 1):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **SLURM_ENV,
               "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": str(rank),
               "SLURM_LOCALID": str(rank), "MASTER_PORT": port, "PATH": f"{fake}:{os.environ['PATH']}",
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        for key in ("MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
            env.pop(key, None)
        log = open(tmp_path / f"task{rank}.log", "w")  # closed below; a pipe could fill and block
        tasks.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        deadline = time.time() + 300
        while not list((run_dir / "checkpoints").glob("best-*.ckpt")) and time.time() < deadline:  # an epoch is done
            assert all(task.poll() is None for task, _ in tasks), (tmp_path / "task0.log").read_text()[-3000:]
            time.sleep(0.1)
        assert time.time() < deadline, "no epoch ended in 300 s"
        tasks[1][0].send_signal(signal.SIGUSR1)
        codes = [task.wait(timeout=300) for task, _ in tasks]
    finally:
        for task, log in tasks:
            task.kill()
            log.close()
    assert codes == [0, 0], (tmp_path / "task0.log").read_text()[-2000:] + (tmp_path / "task1.log").read_text()[-2000:]
    assert (fake / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] > 0
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["status"] == "completed" and report["epochs"] == 4
    assert report["config"]["trainer"]["strategy"] == "ddp"
