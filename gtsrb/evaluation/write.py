"""Writes the evaluation report: the calibrated checkpoint, CSVs, the misclassified gallery, PNGs, TensorBoard,
the model card and ``metrics.json``, in that order.

Everything is measured (:mod:`gtsrb.evaluation.measure`) and drawn
(:mod:`gtsrb.evaluation.plots`) before this runs, and ``metrics.json`` is
written last, so a run that fails leaves no report behind that looks complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from gtsrb.checkpoint import save_calibrated
from gtsrb.evaluation.measure import Gallery, Measurement
from gtsrb.evaluation.model_card import model_card, training_report
from gtsrb.evaluation.report import write_csv
from gtsrb.explain.overlays import overlay_filename, save_overlay
from gtsrb.reporting import flatten, write_json


def write_report(out: Path, m: Measurement, figures: dict[str, plt.Figure], settings: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
    """Write the report of ``m`` into ``out`` and return ``metrics.json``'s content.

    ``settings`` are evaluate's own options (recorded under ``config.evaluate``); the figures are closed here.
    """
    out.mkdir(parents=True, exist_ok=True)
    calibrated_ckpt = None
    if m.calibration is not None:
        calibrated_ckpt = save_calibrated(m.ckpt, m.temperature, out / "calibrated.ckpt",
                                          {**m.calibration, "source_checkpoint": str(m.ckpt_path)})
    write_csv(out / "per_class_report.csv", m.rows)
    write_csv(out / "confused_pairs.csv", m.pairs,
              ["true_id", "true_name", "pred_id", "pred_name", "count", "share_of_true_class"])
    write_csv(out / "predictions.csv", _prediction_rows(m.final_logits, m.labels, m.names))
    if m.gallery is not None:
        _write_gallery(out / "misclassified", m.gallery)
    pictures = {name: _render(fig, dpi=120 if name == "confusion_matrix" else 130) for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    for name, picture in pictures.items():
        Image.fromarray(picture).save(out / f"{name}.png")
    report = {
        "checkpoint": str(m.ckpt_path),
        "calibrated_checkpoint": str(calibrated_ckpt) if calibrated_ckpt else None,
        "split": m.split,
        "num_images": len(m.labels),
        "tta": m.tta,
        "metrics": {"uncalibrated": m.uncalibrated, "calibrated": m.calibrated},
        "acc_ci95": m.interval,
        "temperature": m.temperature,
        "calibration": m.calibration,
        "tta_gain": m.tta_gain,
        "fgsm": m.fgsm,
        "artifacts": sorted([*(f"{n}.png" for n in figures), "per_class_report.csv", "confused_pairs.csv",
                             "predictions.csv", "tensorboard/", "MODEL_CARD.md"]),
        "seconds": round(seconds, 1),
        "config": {"evaluate": settings, "data": m.data_config, "model": m.model_config, "class_names": m.names},
    }
    _to_tensorboard(out / "tensorboard", report, pictures, m.rows)
    trained_from = (m.ckpt.get("calibration") or {}).get("source_checkpoint") or m.ckpt_path
    (out / "MODEL_CARD.md").write_text(model_card(report, m.rows, m.pairs, training_report(trained_from)))
    write_json(out / "metrics.json", report)
    return report


def print_summary(out: Path, report: dict[str, Any]) -> None:
    """The headline numbers and where the report is, on stdout."""
    m = report["metrics"]["uncalibrated"]
    lines = [f"evaluation directory: {out}",
             f"checkpoint: {report['checkpoint']}",
             f"{report['split']} ({report['num_images']} images): acc={m['acc']:.4f} top5={m['top5']:.4f} "
             f"f1={m['f1']:.4f} nll={m['nll']:.4f} ece={m['ece']:.4f}",
             f"acc 95% interval: {report['acc_ci95']['low']:.4f} to {report['acc_ci95']['high']:.4f} "
             f"({report['acc_ci95']['over']})"]
    if report["calibration"]:
        c = report["metrics"]["calibrated"] or m
        lines.append(f"temperature {report['temperature']:.4f} (fitted on val): nll {m['nll']:.4f} -> {c['nll']:.4f}, "
                     f"ece {m['ece']:.4f} -> {c['ece']:.4f}")
        lines.append(f"calibrated checkpoint: {report['calibrated_checkpoint']}")
    for row in report["fgsm"] or []:
        lines.append(f"fgsm epsilon={row['epsilon']:.4f}: acc={row['acc']:.4f}")
    lines += [f"report: {out / 'metrics.json'}", f"tensorboard: uv run tensorboard --logdir {out / 'tensorboard'}"]
    print("\n".join(lines), flush=True)


def _write_gallery(folder: Path, gallery: Gallery) -> None:
    folder.mkdir(exist_ok=True)
    for k in range(len(gallery.images)):
        save_overlay(folder / overlay_filename(k, gallery.true[k], gallery.pred[k], gallery.conf[k]),
                     gallery.images[k], gallery.heatmaps[k])


def _prediction_rows(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> list[dict]:
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    return [{"index": i, "true_id": int(t), "true_name": names[int(t)], "pred_id": int(p), "pred_name": names[int(p)],
             "confidence": round(float(c), 5), "correct": int(t == p)}
            for i, (t, p, c) in enumerate(zip(labels, predicted, confidence))]


def _render(fig: plt.Figure, dpi: int) -> np.ndarray:
    """Draw a figure once into RGB pixels, shared by its PNG file and TensorBoard (drawing is the slow part)."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _to_tensorboard(logdir: Path, report: dict, pictures: dict[str, np.ndarray], rows: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    split = report["split"]
    with SummaryWriter(str(logdir)) as writer:
        for variant, values in report["metrics"].items():
            for key, value in (values or {}).items():
                writer.add_scalar(f"eval_{split}/{variant}/{key}", value, 0)
        writer.add_scalar(f"eval_{split}/temperature", report["temperature"], 0)
        for row in report["fgsm"] or []:
            writer.add_scalar(f"eval_{split}/fgsm_acc", row["acc"], int(round(row["epsilon"] * 255)))
        for name, picture in pictures.items():
            writer.add_image(f"eval_{split}/{name}", picture, 0, dataformats="HWC")
        table = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        table += [f"| {r['class_name']} ({r['class_id']}) | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
                  f"| {r['support']} |" for r in rows]
        writer.add_text(f"eval_{split}/per_class", "\n".join(table), 0)
        writer.add_text(f"eval_{split}/config", "\n".join(f"    {k}: {v}" for k, v in
                                                           flatten(report["config"]["evaluate"]).items()), 0)
