"""The figures of the evaluation report, sized so that 43 class names stay readable.

Each function returns a matplotlib figure; the caller saves it as PNG and
sends it to TensorBoard, so both show the same picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gtsrb.evaluation.calibration import ReliabilityBins, reliability_bins  # noqa: E402
from gtsrb.explain.overlays import overlay_grid  # noqa: E402

if TYPE_CHECKING:
    from gtsrb.evaluation.measure import Measurement


def report_figures(m: Measurement) -> dict[str, plt.Figure]:
    """The evaluation report's figures, by the name of the PNG file each becomes."""
    what = f"{m.split} split, {len(m.labels)} images"
    figures = {
        "confusion_matrix": confusion_matrix_figure(
            m.matrix, m.names, f"Confusion matrix ({what}), rows normalised; accuracy {m.uncalibrated['acc']:.3f}"),
        "reliability": reliability_figure(
            reliability_bins(m.logits.softmax(1), m.labels),
            reliability_bins(m.final_logits.softmax(1), m.labels) if m.calibrated else None, m.temperature),
        "metrics_summary": metrics_summary_figure(
            m.uncalibrated, m.calibrated, f"{m.ckpt_path.name}: {what}" + (" (TTA)" if m.tta else ""),
            m.temperature, m.fgsm),
        "per_class_accuracy": per_class_accuracy_figure(m.rows, f"Per-class accuracy ({what})"),
        "confused_pairs": confused_pairs_figure(m.pairs, f"Most-confused class pairs ({what})"),
    }
    if m.gallery is not None:
        g = m.gallery
        figures["misclassified"] = overlay_grid(
            g.images, g.heatmaps, g.pred, g.conf, g.true,
            title=f"Misclassified {m.split} images, most confident first ({g.mistakes} in all; Grad-CAM of the "
                  "predicted class)" if g.true else f"No misclassified {m.split} images")
    return figures


def _label(i: int, name: str, limit: int = 34) -> str:
    name = name if len(name) <= limit else name[: limit - 1] + "…"
    return f"{name} ({i})"


def confusion_matrix_figure(matrix: torch.Tensor, class_names: Sequence[str], title: str) -> plt.Figure:
    """Row-normalised confusion matrix (each row: where the images of one true class went).

    Cells of 5 % or more carry their percentage, so the eye finds the
    mistakes without a colour legend; empty rows (no images) stay white.
    """
    counts = matrix.double()
    rows = counts.sum(dim=1, keepdim=True)
    norm = torch.where(rows > 0, counts / rows.clamp(min=1), torch.full_like(counts, float("nan"))).numpy()
    n = len(class_names)
    side = max(6.0, 0.26 * n + 4.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="white")
    image = ax.imshow(norm, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    labels = [_label(i, name) for i, name in enumerate(class_names)]
    font = 9 if n <= 15 else 6.5
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted class", fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#e5e5e5", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    for t in range(n):
        for p in range(n):
            value = norm[t, p]
            if not np.isnan(value) and value >= 0.05:
                ax.text(p, t, f"{value * 100:.0f}", ha="center", va="center", fontsize=5.5 if n > 15 else 8,
                        color="white" if value > 0.6 else ("#b00020" if t != p else "black"))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="share of the true class")
    ax.set_title(title, fontsize=11)
    return fig


def _reliability_panel(ax_top, ax_bottom, bins: ReliabilityBins, title: str) -> None:
    edges = bins.edges.numpy()
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    filled = bins.counts.numpy() > 0
    acc, conf = bins.accuracy.numpy(), bins.confidence.numpy()
    ax_top.bar(centers[filled], acc[filled], width=width, edgecolor="#1f4e79", color="#5b9bd5", label="accuracy")
    gap_low = np.minimum(acc, conf)[filled]
    # hatched, unfilled: over-confidence shows above the bar, under-confidence across its top
    ax_top.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_low, width=width, facecolor="none",
               edgecolor="#cc0000", hatch="///", linewidth=0.8, label="gap to mean confidence")
    ax_top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax_top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax_top.set_title(f"{title}\nECE = {bins.ece() * 100:.2f} %", fontsize=10)
    ax_top.legend(loc="upper left", fontsize=8)
    ax_bottom.bar(centers, bins.counts.numpy(), width=width, color="#7f7f7f", edgecolor="black")
    ax_bottom.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="images")
    ax_bottom.set_yscale("symlog", linthresh=10)


def reliability_figure(before: ReliabilityBins, after: ReliabilityBins | None, temperature: float | None) -> plt.Figure:
    """Reliability diagrams with confidence histograms, before and (if fitted) after temperature scaling."""
    panels = [(before, "before temperature scaling (T = 1)")]
    if after is not None:
        panels.append((after, f"after temperature scaling (T = {temperature:.3f})"))
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 6.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.2]}, sharex=True, layout="constrained")
    for k, (bins, title) in enumerate(panels):
        _reliability_panel(axes[0, k], axes[1, k], bins, title)
    return fig


def per_class_accuracy_figure(rows: list[dict], title: str) -> plt.Figure:
    """Horizontal bars, worst class at the top, with the number of images of each class."""
    rows = [r for r in rows if r["support"] > 0]
    rows.sort(key=lambda r: (r["accuracy"], r["class_id"]))
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8.5, max(3.0, 0.24 * n + 1.2)), layout="constrained")
    acc = np.array([r["accuracy"] for r in rows])
    colors = matplotlib.colormaps["RdYlGn"](acc)
    positions = np.arange(n)[::-1]
    ax.barh(positions, acc, color=colors, edgecolor="#555555", linewidth=0.4)
    ax.set_yticks(positions, [_label(r["class_id"], r["class_name"]) for r in rows], fontsize=7.5)
    for y, r in zip(positions, rows):
        ax.text(min(r["accuracy"], 1.0) + 0.01, y, f"{r['accuracy'] * 100:.0f} % of {r['support']}",
                va="center", fontsize=6.5)
    ax.set(xlim=(0, 1.18), xlabel="accuracy (share of the class's images classified right)")
    ax.set_ylim(-0.6, n - 0.4)
    mean = float(acc.mean()) if n else 0.0
    ax.axvline(mean, color="gray", linestyle="--", linewidth=0.8)
    ax.set_title(f"{title}; dashed line: mean over classes ({mean * 100:.1f} %)", fontsize=10)
    return fig


def confused_pairs_figure(pairs: list[dict], title: str) -> plt.Figure:
    """The most-confused (true -> predicted) pairs as bars, most frequent at the top."""
    n = max(len(pairs), 1)
    fig, ax = plt.subplots(figsize=(9.5, max(2.2, 0.34 * n + 1.0)), layout="constrained")
    if not pairs:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=12)
        ax.axis("off")
    else:
        positions = np.arange(len(pairs))[::-1]
        ax.barh(positions, [p["count"] for p in pairs], color="#e06666", edgecolor="#990000")
        ax.set_yticks(positions, [f"{_label(p['true_id'], p['true_name'], 30)}  →  "
                                  f"{_label(p['pred_id'], p['pred_name'], 30)}" for p in pairs], fontsize=7.5)
        for y, p in zip(positions, pairs):
            ax.text(p["count"], y, f"  {p['count']} ({p['share_of_true_class'] * 100:.0f} % of the true class)",
                    va="center", fontsize=7)
        ax.set_xlim(0, max(p["count"] for p in pairs) * 1.45)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("images (true class → predicted class)")
    ax.set_title(title, fontsize=10)
    return fig


def metrics_summary_figure(before: dict[str, float], after: dict[str, float] | None, title: str,
                           temperature: float | None = None, fgsm: list[dict] | None = None) -> plt.Figure:
    """Headline metrics at a glance: quality bars, calibration before/after, FGSM accuracy if measured."""
    panels = 3 if fgsm else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels + 1.5, 4.4), layout="constrained",
                             gridspec_kw={"width_ratios": [2.2, 1.5, 1.4][:panels]})
    names = ["acc", "top3", "top5", "precision", "recall", "f1", "precision_weighted", "recall_weighted", "f1_weighted"]
    values = [before[k] for k in names]
    ax = axes[0]
    bars = ax.bar(range(len(names)), values, color=["#1f77b4"] * 3 + ["#2ca02c"] * 3 + ["#9467bd"] * 3)
    labels = [n.replace("_", "\n") if "_" in n else n + ("\n(macro)" if n in ("precision", "recall", "f1") else "")
              for n in names]
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.015, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_title("classification", fontsize=10)
    ax = axes[1]
    ax.axis("off")
    header = ["", "T = 1", f"T = {temperature:.3f}" if after is not None else "calibrated"]
    cells = [["NLL", f"{before['nll']:.4f}", f"{after['nll']:.4f}" if after else "not fitted"],
             ["ECE (15 bins)", f"{before['ece'] * 100:.2f} %",
              f"{after['ece'] * 100:.2f} %" if after else "not fitted"],
             ["accuracy", f"{before['acc']:.4f}", f"{after['acc']:.4f}" if after else "-"]]
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.8)
    ax.set_title("calibration (temperature scaling; lower NLL/ECE is better)", fontsize=10)
    if fgsm:
        ax = axes[2]
        eps = [row["epsilon"] for row in fgsm]
        ax.plot(eps, [row["acc"] for row in fgsm], "o-", color="#d62728")
        for e, row in zip(eps, fgsm):
            ax.annotate(f"{row['acc']:.2f}", (e, row["acc"]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7.5)
        ax.set(ylim=(0, 1.1), xlabel="FGSM epsilon (pixel scale 0..1)", ylabel="accuracy")
        ax.set_title("robustness: FGSM accuracy (no TTA)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig
