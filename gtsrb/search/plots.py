"""Optuna's own plots of a finished study, as PNGs (``optuna.visualization.matplotlib``)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

from gtsrb.errors import first_line  # noqa: E402

log = logging.getLogger(__name__)

PLOTS = {  # file name: plot; each needs what its docstring says (e.g. importances need two completed trials)
    "optimization_history": optuna_plots.plot_optimization_history,
    "intermediate_values": optuna_plots.plot_intermediate_values,  # learning curves: where pruning stopped
    "param_importances": optuna_plots.plot_param_importances,
    "slice": optuna_plots.plot_slice,  # (the contour plot would need scipy)
}


def write_plots(study: optuna.Study, directory: Path) -> list[Path]:
    """Write every plot the study has enough trials for; a plot that cannot be drawn is skipped with a warning."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
                axes = plot(study)
            figure = np.asarray(axes).flat[0].figure
            figure.savefig(directory / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            written.append(directory / f"{name}.png")
        except Exception as exc:  # e.g. importances of a study with one completed trial
            log.warning("skipped the %s plot: %s", name, first_line(exc))
    return written
