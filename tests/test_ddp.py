"""``trainer=ddp``: two CPU processes (gloo) train as one, and the run looks like a run on one device.

The slow tests run ``train.py`` as a user does, so Lightning starts the second process by running ``train.py``
again with Hydra overrides of its own; the fast ones check the data module's shards and the one-line errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import gtsrb.data.datamodule as datamodule_module
from gtsrb.cli import preflight
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.distributed import started_process_argv, sweep_job
from gtsrb.errors import UserError
from gtsrb.models import parameter_blocks
from gtsrb.module import TrafficSignClassifier
from gtsrb.training import train

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- shards (one process, ranks faked)


def _datamodule(make_cfg, *overrides: str) -> TrafficSignDataModule:
    cfg = make_cfg("data.train_per_class=3", "data.val_per_class=1", "data.batch_size=8", *overrides)
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=cfg.seed)
    datamodule.setup()
    return datamodule


def _as_rank(monkeypatch, rank: int, processes: int = 2) -> None:
    monkeypatch.setattr(datamodule_module, "process_share", lambda: (processes, rank))


def _batches(loader) -> list[list[int]]:
    """The index lists of one epoch: the batched path's batch sampler, or the per-sample path's sampler in batches."""
    if loader.batch_size is None:
        return [list(b) for b in loader.sampler]
    indices = list(loader.sampler)
    size = loader.batch_size
    return [indices[i:i + size] for i in range(0, len(indices) - size + 1 if loader.drop_last else len(indices), size)]


def _shard(loader) -> list[int]:
    """This process's whole share of an epoch, before batching: the DistributedSampler's order."""
    return list(loader.sampler.sampler if loader.batch_size is None else loader.sampler)


@pytest.mark.parametrize("augment_on", ["batch", "sample"])
def test_each_process_trains_on_its_own_shard_reshuffled_every_epoch(make_cfg, monkeypatch, augment_on):
    datamodule = _datamodule(make_cfg, f"data.augment_on={augment_on}")
    n = len(datamodule.splits["train"])  # 129 images: 65 per process, one of them repeated
    batches, shards = {}, {}
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        loader = datamodule.train_dataloader()
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)  # what Lightning calls on the loader's sampler every epoch
            batches[rank, epoch], shards[rank, epoch] = _batches(loader), _shard(loader)
    for epoch in (0, 1):
        assert len(batches[0, epoch]) == len(batches[1, epoch]) == 65 // 8  # DDP needs the same number of steps
        assert all(len(b) == 8 for b in batches[0, epoch] + batches[1, epoch])
        assert [i for b in batches[0, epoch] for i in b] == shards[0, epoch][:64]
        both = shards[0, epoch] + shards[1, epoch]
        assert len(shards[0, epoch]) == len(shards[1, epoch]) == 65
        assert sorted(set(both)) == list(range(n)) and len(both) == n + 1  # disjoint but for one padding image
    assert shards[0, 0] != shards[0, 1]  # set_epoch reshuffles


@pytest.mark.parametrize("augment_on", ["batch", "sample"])
def test_evaluation_shards_count_every_image_exactly_once(make_cfg, monkeypatch, augment_on):
    datamodule = _datamodule(make_cfg, f"data.augment_on={augment_on}")
    seen = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        loader = datamodule.val_dataloader()
        seen += [i for b in _batches(loader) for i in b]
        images, labels = next(iter(loader))
        assert images.ndim == 4 and images.dtype == torch.float32 and len(labels) == len(images)
    assert sorted(seen) == list(range(len(datamodule.splits["val"])))  # 43 images: 22 + 21, none repeated


def test_fewer_evaluation_images_than_processes_is_one_line(make_cfg, monkeypatch):
    datamodule = _datamodule(make_cfg)
    _as_rank(monkeypatch, 0, processes=64)
    with pytest.raises(UserError, match="the val split has 43 images, fewer than the 64 processes"):
        datamodule.val_dataloader()


def test_balanced_sampling_is_sharded_from_one_draw(make_cfg, monkeypatch):
    datamodule = _datamodule(make_cfg, "data.balanced_sampling=true")
    draw = list(datamodule._balanced_sampler(datamodule.splits["train"].labels))  # the same in every process
    padded = draw + draw[:1]
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        assert [i for b in _batches(datamodule.train_dataloader()) for i in b] == padded[rank::2][:64]


def test_each_process_draws_its_own_reproducible_augmentation(make_cfg, monkeypatch):
    draws = []
    for rank in (0, 1, 1):  # three runs: the processes of rank 0 and 1, and rank 1 again
        datamodule = _datamodule(make_cfg, "augmentation=standard")
        images, labels = datamodule.splits["train"].images[:8], datamodule.splits["train"].labels[:8]
        _as_rank(monkeypatch, rank)
        datamodule.train_dataloader()  # seeds this process's random stream from seed and rank
        first = datamodule.augment(images, labels)[0]
        datamodule.train_dataloader()  # a loader built again (every epoch, if so configured) does not reseed
        draws.append((first, datamodule.augment(images, labels)[0]))
    assert not torch.equal(draws[0][0], draws[1][0])  # rank 0 and rank 1 differ
    assert torch.equal(draws[1][0], draws[2][0]) and torch.equal(draws[1][1], draws[2][1])  # reproducible
    assert not torch.equal(draws[1][0], draws[1][1])  # the stream goes on


# --------------------------------------------------------------------------- command line and one-line errors


def test_preflight_accepts_the_arguments_lightning_starts_the_other_processes_with(tmp_path):
    """Lightning runs ``train.py`` again for each further process, with the user's arguments and its own."""
    user = ["experiment=quickstart", "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path}/my run"]
    started = [*user, f'hydra.run.dir="{tmp_path}/my run"', "hydra.job.name=train_ddp_process_1",
               "hydra.output_subdir=null"]
    assert preflight(started, "train") is None  # it raises UserError on the first argument that cannot work
    with pytest.raises(UserError, match="data.batch_size=0 is out of range"):  # and it does check this command line
        preflight([*started, "data.batch_size=0"], "train")


def test_a_process_started_for_a_sweep_job_runs_that_job_alone(monkeypatch, tmp_path):
    """Under -m the command line is the whole sweep; the started process gets the job's overrides and directory."""
    argv = ["/repo/train.py", "-m", "mixup=none,cutmix", "trainer=ddp", 'hydra.run.dir="outputs/x"',
            "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    for key in ("LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with sweep_job(["mixup=cutmix", "trainer=ddp"], str(tmp_path / "sweep dir" / "1")):
        assert started_process_argv(argv) == argv  # the sweep itself (rank 0) keeps its command line
        os.environ.update(LOCAL_RANK="0", MASTER_PORT="12345", OMP_NUM_THREADS="1")  # what Lightning's launcher sets
        assert started_process_argv(argv) == argv
        os.environ["LOCAL_RANK"] = "1"  # as in the process it starts
        job = started_process_argv(argv)
        preflight(job[1:], "train")
    assert job == ["/repo/train.py", "mixup=cutmix", "trainer=ddp", f'hydra.run.dir="{tmp_path}/sweep dir/1"',
                   "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    # after the job nothing of it is left: the next job's launcher starts processes of its own
    assert "LOCAL_RANK" not in os.environ and "MASTER_PORT" not in os.environ and os.environ["OMP_NUM_THREADS"] == "7"
    assert started_process_argv(argv) == argv


@pytest.mark.parametrize(("overrides", "expected"), [
    (["trainer.accelerator=cpu", "trainer.devices=1"], ["trainer.strategy=ddp would run a single process",
                                                        "trainer.devices=2 or more", "trainer=auto"]),
    (["trainer.accelerator=gpu", "trainer.devices=64"],
     ["cannot build the trainer (trainer.accelerator=gpu trainer.devices=64)", "trainer.accelerator=cpu"]),
], ids=["one-device", "missing-gpus"])
def test_ddp_that_cannot_run_stops_with_one_line(make_cfg, overrides, expected):
    cfg = make_cfg("trainer=ddp", *overrides)
    with pytest.raises(UserError) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message
    for text in expected:
        assert text in message
    assert not (Path(cfg.output_dir) / "metrics.json").exists()


# --------------------------------------------------------------------------- two real processes


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def ddp_args(weights: Path) -> list[str]:
    """A pretrained-style MobileNetV3 (local weights) fine-tuned in two phases by two CPU processes."""
    return ["data=synthetic", "data.image_size=32", "data.train_per_class=2", "data.val_per_class=1",
            "data.test_per_class=1", "data.batch_size=21", "model=mobilenet_v3_small", f"model.weights={weights}",
            "augmentation=light", "finetuning=two_phase", "finetuning.unfreeze_at_epoch=1",
            "finetuning.unfreeze_blocks=1", "callbacks.checkpoint.save_top_k=-1", "callbacks.progress_bar=null",
            "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, mobilenet_weights) -> tuple[Path, subprocess.CompletedProcess]:
    """Two epochs on 2 processes: phase 1 (frozen backbone) in epoch 0, phase 2 (last block unfrozen) in epoch 1."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    return run_dir, run_train(*ddp_args(mobilenet_weights), "trainer.max_epochs=2", f"hydra.run.dir={run_dir}")


def _printed_once(proc: subprocess.CompletedProcess, run_dir: Path) -> None:
    """The summary lines and the info log lines of process 0 only (process 1's are in its own log file)."""
    assert proc.stdout.count("run directory: ") == 1 and f"run directory: {run_dir}" in proc.stdout
    assert proc.stdout.count("metrics: ") == 1
    assert proc.stdout.count("data: train ") == 1 and "GLOBAL_RANK: 1" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_ddp_run_leaves_one_run_directory_written_once(ddp_run):
    run_dir, proc = ddp_run
    _printed_once(proc, run_dir)
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]  # process 1 made no directory of its own
    # process 1 worked in process 0's directory: its own log file there, Hydra's .hydra/ written once
    assert {"train.log", "train_ddp_process_1.log", ".hydra", "checkpoints", "metrics.json"} <= \
        {p.name for p in run_dir.iterdir()}
    assert "GLOBAL_RANK: 1" in (run_dir / "train_ddp_process_1.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == \
        ["best-epoch000.ckpt", "best-epoch001.ckpt", "last.ckpt"]
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["status"] == "completed" and report["epochs"] == 2
    assert [row["epoch"] for row in report["history"]] == [0, 1]
    assert report["config"]["trainer"]["strategy"] == "ddp"


@pytest.mark.slow
def test_ddp_metrics_equal_one_process_evaluating_the_same_checkpoint(ddp_run, one_thread):
    """Validation shards are not padded and the metrics are reduced over both processes: exact, as on one."""
    run_dir, _ = ddp_run
    report = json.loads((run_dir / "metrics.json").read_text())
    ckpt = torch.load(report["best_checkpoint"], map_location="cpu", weights_only=False)
    datamodule = TrafficSignDataModule(**ckpt["datamodule_hyper_parameters"])
    model = TrafficSignClassifier.load_from_checkpoint(report["best_checkpoint"], map_location="cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    for split, run in (("val", trainer.validate), ("test", trainer.test)):
        single = run(model, datamodule=datamodule, verbose=False)[0]
        assert set(single) == set(report["final"][split])
        for key, value in single.items():
            assert report["final"][split][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def _state(modules) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
            if t.is_floating_point()]


def _blocks(path: Path) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Parameters and BatchNorm statistics of every backbone block and of the head, as a checkpoint holds them."""
    blocks, head = parameter_blocks(TrafficSignClassifier.load_from_checkpoint(path, map_location="cpu").model)
    return [_state(b) for b in blocks], _state(head)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_two_phase_finetuning_under_ddp_trains_the_intended_blocks(ddp_run):
    """Under DDP frozen blocks keep requires_grad and have their gradients dropped (gtsrb/finetuning.py)."""
    run_dir, _ = ddp_run
    hparams = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "hyper_parameters"]
    loaded = TrafficSignClassifier(hparams["model"], hparams["optimizer"], hparams["scheduler"], hparams["class_names"])
    start = [_state(b) for b in parameter_blocks(loaded.model)[0]]  # the pretrained weights as training loaded them
    after0, head0 = _blocks(run_dir / "checkpoints" / "best-epoch000.ckpt")
    after1, head1 = _blocks(run_dir / "checkpoints" / "best-epoch001.ckpt")
    n = len(start)
    # phase 1 (epoch 0): the backbone, BatchNorm statistics included, stays exactly as loaded
    assert [_same(a, b) for a, b in zip(after0, start)] == [True] * n
    # phase 2 (epoch 1): the last block joins; the head trains in both
    assert [_same(a, b) for a, b in zip(after1, start)] == [True] * (n - 1) + [False]
    assert not _same(head0, head1)


@pytest.mark.slow
def test_a_ddp_sweep_resumes_every_job_from_the_last_checkpoint(ddp_run, mobilenet_weights, tmp_path):
    """Under -m each job starts its own second process, which runs that job alone in the job's directory."""
    run_dir, _ = ddp_run
    before = (run_dir / "metrics.json").read_text()
    sweep = tmp_path / "sweep"
    proc = run_train("-m", *ddp_args(mobilenet_weights), "trainer.max_epochs=3,4",
                     f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.sweep.dir={sweep}")
    assert proc.stdout.count("sweep summary (2 runs") == 1 and proc.stdout.count("run directory: ") == 2
    assert proc.stdout.count("data: train ") == 2 and "GLOBAL_RANK: 1" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no sweep of the second process
    for job, epochs in (("0", 3), ("1", 4)):
        assert f"run directory: {sweep / job}" in proc.stdout
        assert "GLOBAL_RANK: 1" in (sweep / job / "train_ddp_process_1.log").read_text()
        report = json.loads((sweep / job / "metrics.json").read_text())
        assert [row["epoch"] for row in report["history"]] == list(range(epochs))  # history travels in the checkpoint
        assert report["epochs"] == epochs and f"trainer.max_epochs={epochs}" in report["overrides"]
        last = torch.load(sweep / job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert last["epoch"] == epochs - 1
    assert (run_dir / "metrics.json").read_text() == before
