"""Train a traffic-sign classifier: ``uv run train.py [group=option ...] [key=value ...]``.

Examples::

    uv run train.py experiment=quickstart
    uv run train.py data.root=data model=resnet18 model.pretrained=false trainer.max_epochs=10
    uv run train.py -m experiment=quickstart model=simple_cnn,mobilenet_v3_small mixup=none,cutmix
"""

import sys

import hydra
from omegaconf import DictConfig

from gtsrb.cli import report_user_errors, start
from gtsrb.distributed import started_process_argv, sweep_job


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from gtsrb.training import train, train_sweep_job  # heavy imports after Hydra has parsed the command line

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return train(cfg)
    with sweep_job(HydraConfig.get().overrides.task, cfg.output_dir):  # DDP processes started now run this job
        return train_sweep_job(cfg)


if __name__ == "__main__":
    sys.argv = started_process_argv(sys.argv)  # a DDP process started for one job of a sweep runs that job
    start(main, "train")
