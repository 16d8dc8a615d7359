"""``evaluate.py``'s body: from a checkpoint to the full model report, in three steps.

1. :func:`gtsrb.evaluation.measure.measure`: load the checkpoint and its data, predict, compute every number;
2. :func:`gtsrb.evaluation.plots.report_figures`: draw the figures;
3. :func:`gtsrb.evaluation.write.write_report`: write the files, ``metrics.json`` last.

Kept apart from the Hydra entry point so tests can call :func:`evaluate` with a config from Hydra's compose API.
Bad input fails in step 1, before anything is written, so it never half-overwrites an earlier report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gtsrb.evaluation.measure import measure
from gtsrb.evaluation.plots import report_figures
from gtsrb.evaluation.write import print_summary, write_report


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; write the report into ``cfg.output_dir``; return metrics.json."""
    started = time.time()
    measured = measure(cfg)
    figures = report_figures(measured)
    out = Path(cfg.output_dir)
    report = write_report(out, measured, figures, OmegaConf.to_container(cfg, resolve=True), time.time() - started)
    print_summary(out, report)
    return report
