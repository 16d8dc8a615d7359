"""Evaluate a trained checkpoint: ``uv run evaluate.py ckpt_path=<run directory or .ckpt> [key=value ...]``.

Writes the full model report (metrics.json, per-class CSV, confusion matrix,
reliability diagram, most-confused pairs, misclassified gallery with Grad-CAM,
TensorBoard) into ``outputs/evaluate/<date>/<time>/``, and, with calibration
on, a calibrated copy of the checkpoint. Examples::

    uv run evaluate.py ckpt_path=outputs/2024-05-01/12-00-00
    uv run evaluate.py ckpt_path=outputs/<run>/checkpoints/last.ckpt split=val tta=true
    uv run evaluate.py ckpt_path=outputs/<run> fgsm_epsilons=[0.004,0.008,0.016] data.root=/data/gtsrb

Single images: ``uv run python -m gtsrb.predict <checkpoint> <image or folder>``.
"""

import hydra
from omegaconf import DictConfig

from gtsrb.cli import report_user_errors, start
from gtsrb.config import register_evaluate_config


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from gtsrb.checkpoint import resolve_checkpoint
    from gtsrb.evaluation.preflight import check_options

    check_options(cfg)  # a wrong option or path fails before the heavy imports
    resolve_checkpoint(cfg.ckpt_path)
    from gtsrb.evaluation.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    start(main, "evaluate", register_evaluate_config)
