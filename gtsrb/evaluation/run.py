"""``evaluate.py``'s body: from a checkpoint to the full model report.

Kept apart from the Hydra entry point so tests can call :func:`evaluate` with
a config from Hydra's compose API. Everything is computed first and written
afterwards, ``metrics.json`` last: a run that fails leaves no report behind
that looks complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from gtsrb.checkpoint import load_classifier, read_checkpoint, resolve_checkpoint, save_calibrated
from gtsrb.classes import class_name
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.data.imageset import ImageSet
from gtsrb.errors import UserError
from gtsrb.evaluation import plots
from gtsrb.evaluation.calibration import fit_temperature, reliability_bins
from gtsrb.evaluation.model_card import model_card, training_report
from gtsrb.evaluation.preflight import check_options
from gtsrb.evaluation.report import confused_pairs, confusion, per_class_rows, write_csv
from gtsrb.evaluation.robustness import fgsm_accuracy
from gtsrb.explain.overlays import overlay_filename, overlay_grid, save_overlay
from gtsrb.inference import InputSpec, Predictor, pick_device
from gtsrb.metrics import NegativeLogLikelihood, accuracy_interval, compute_metrics, track_accuracy_interval
from gtsrb.reporting import flatten, write_json

log = logging.getLogger(__name__)


def data_config(ckpt: dict[str, Any], overrides: DictConfig) -> tuple[dict, dict, int]:
    """The checkpoint's data config (and augmentation, seed), with the non-null ``data.*`` overrides on top."""
    saved = ckpt.get("datamodule_hyper_parameters") or {}
    given = {k: v for k, v in OmegaConf.to_container(overrides, resolve=True).items() if v is not None}
    if "data" not in saved and "source" not in given:
        raise UserError("the checkpoint does not say which data it was trained on; give it, "
                        "e.g. data.source=gtsrb data.root=data")
    data = {**saved.get("data", {}), **given}
    if "data" in saved and "val_split" not in saved["data"]:
        # trained before data.val_split existed: its tracks were drawn at random, whatever the default is now
        data.setdefault("val_split", "tracks")
    return data, dict(saved.get("augmentation") or {}), int(saved.get("seed", 0))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; write the report into ``cfg.output_dir``; return metrics.json."""
    check_options(cfg)
    started = time.time()
    ckpt_path = resolve_checkpoint(cfg.ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    device = pick_device(cfg.device)
    data_cfg, aug_cfg, seed = data_config(ckpt, cfg.data)
    datamodule = TrafficSignDataModule(data_cfg, aug_cfg, seed=seed)
    datamodule.setup("test")
    if not datamodule.has_split(cfg.split):
        raise UserError(f"the data has no {cfg.split} split; use split={'val' if cfg.split == 'test' else 'test'} "
                        "or point data.* at data that has one")
    model_overrides = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if v is not None}
    model = load_classifier(ckpt_path, ckpt, model_overrides, num_classes=datamodule.num_classes, device=device)
    names = list(model.class_names)
    if names != datamodule.class_names:
        log.warning("the checkpoint's class names differ from the data's; the report uses the checkpoint's")
    dm = datamodule.cfg
    predictor = Predictor(model, InputSpec.of(dm), dm.batch_size, device, ckpt_path)
    data = datamodule.splits[cfg.split]
    flip_map, mirror = _mirror_policy(datamodule)

    def logits_of(split_data: ImageSet, tta: bool) -> torch.Tensor:
        return predictor.logits(split_data.images, tta=tta, flip_map=flip_map, tta_shift=cfg.tta_shift, mirror=mirror)

    plain = logits_of(data, tta=False)
    logits = logits_of(data, tta=True) if cfg.tta else plain
    labels = data.labels

    temperature, calibration = float(model.temperature), None
    if cfg.calibrate:
        if not datamodule.has_split("val"):
            raise UserError("calibration needs a validation split, which the data lacks; set calibrate=false")
        val_logits = plain if cfg.split == "val" else logits_of(datamodule.splits["val"], tta=False)
        val_labels = datamodule.splits["val"].labels
        temperature = fit_temperature(val_logits, val_labels)
        calibration = {"fitted_on": "val", "temperature": temperature, "val_images": len(val_labels),
                       "val_nll_before": float(NegativeLogLikelihood()(val_logits, val_labels)),
                       "val_nll_after": float(NegativeLogLikelihood()(val_logits / temperature, val_labels))}
        if cfg.split == "val":
            log.warning("the temperature is fitted and evaluated on the val split: "
                        "the calibrated numbers are optimistic")
    uncalibrated = compute_metrics(logits, labels)
    interval = _accuracy_interval(logits.argmax(1) == labels, data.groups)
    calibrated = compute_metrics(logits / temperature, labels) if calibration or temperature != 1.0 else None
    final_logits = logits / temperature
    matrix = confusion(final_logits, labels)
    rows = per_class_rows(final_logits, labels, names)
    pairs = confused_pairs(matrix, names, cfg.top_confused)
    fgsm = fgsm_accuracy(predictor, data, [0.0, *cfg.fgsm_epsilons]) if len(cfg.fgsm_epsilons) else None
    gallery = _misclassified_gallery(cfg, predictor, data, final_logits, names)

    what = f"{cfg.split} split, {len(labels)} images"
    figures = {
        "confusion_matrix": plots.confusion_matrix_figure(
            matrix, names, f"Confusion matrix ({what}), rows normalised; accuracy {uncalibrated['acc']:.3f}"),
        "reliability": plots.reliability_figure(
            reliability_bins(logits.softmax(1), labels),
            reliability_bins(final_logits.softmax(1), labels) if calibrated else None, temperature),
        "metrics_summary": plots.metrics_summary_figure(
            uncalibrated, calibrated, f"{Path(ckpt_path).name}: {what}" + (" (TTA)" if cfg.tta else ""),
            temperature, fgsm),
        "per_class_accuracy": plots.per_class_accuracy_figure(rows, f"Per-class accuracy ({what})"),
        "confused_pairs": plots.confused_pairs_figure(pairs, f"Most-confused class pairs ({what})"),
    }
    if gallery is not None:
        figures["misclassified"] = gallery["figure"]

    # ---- write: everything is computed, nothing below can fail on the user's input
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    calibrated_ckpt = None
    if calibration is not None:
        calibrated_ckpt = save_calibrated(ckpt, temperature, out / "calibrated.ckpt",
                                          {**calibration, "source_checkpoint": str(ckpt_path)})
    write_csv(out / "per_class_report.csv", rows)
    write_csv(out / "confused_pairs.csv", pairs,
              ["true_id", "true_name", "pred_id", "pred_name", "count", "share_of_true_class"])
    write_csv(out / "predictions.csv", _prediction_rows(final_logits, labels, names))
    if gallery is not None:
        _write_gallery_files(out / "misclassified", gallery)
    pictures = {name: _render(fig, dpi=120 if name == "confusion_matrix" else 130) for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    for name, picture in pictures.items():
        Image.fromarray(picture).save(out / f"{name}.png")
    report = {
        "checkpoint": str(ckpt_path),
        "calibrated_checkpoint": str(calibrated_ckpt) if calibrated_ckpt else None,
        "split": cfg.split,
        "num_images": len(labels),
        "tta": bool(cfg.tta),
        "metrics": {"uncalibrated": uncalibrated, "calibrated": calibrated},
        "acc_ci95": interval,
        "temperature": temperature,
        "calibration": calibration,
        "tta_gain": (uncalibrated["acc"] - compute_metrics(plain, labels)["acc"]) if cfg.tta else None,
        "fgsm": fgsm,
        "artifacts": sorted([*(f"{n}.png" for n in figures), "per_class_report.csv", "confused_pairs.csv",
                             "predictions.csv", "tensorboard/", "MODEL_CARD.md"]),
        "seconds": round(time.time() - started, 1),
        "config": {"evaluate": OmegaConf.to_container(cfg, resolve=True), "data": OmegaConf.to_container(dm),
                   "model": dict(model.hparams.model), "class_names": names},
    }
    _to_tensorboard(out / "tensorboard", report, pictures, rows)
    trained_from = (ckpt.get("calibration") or {}).get("source_checkpoint") or ckpt_path
    (out / "MODEL_CARD.md").write_text(model_card(report, rows, pairs, training_report(trained_from)))
    write_json(out / "metrics.json", report)
    _print_summary(out, report)
    return report


def _mirror_policy(datamodule: TrafficSignDataModule) -> tuple[list[int] | None, bool]:
    """TTA mirrors exactly as training did: label-safe with the flip map, any, or not at all."""
    hflip = datamodule.aug.hflip
    if hflip == "any":
        return None, True
    if hflip == "label_safe" and datamodule.flip_map is not None:
        return list(datamodule.flip_map), True
    return None, False


def _misclassified_gallery(cfg, predictor: Predictor, data: ImageSet, logits: torch.Tensor,
                           names: list[str]) -> dict | None:
    """The most confident mistakes with Grad-CAM overlays of the predicted class."""
    if cfg.gallery_size == 0:
        return None
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    wrong = (predicted != data.labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][: cfg.gallery_size].tolist()
    true_names = [class_name(int(data.labels[i]), names) for i in order]
    pred_names = [class_name(int(predicted[i]), names) for i in order]
    confs = [float(confidence[i]) for i in order]
    heatmaps = None
    if order:
        heatmaps = predictor.explain(data.images[order], predicted[order], cfg.gradcam_method,
                                     cfg.target_layer).heatmaps
    figure = overlay_grid(data.images[order], heatmaps, pred_names, confs, true_names,
                          title=f"Misclassified {cfg.split} images, most confident first "
                                f"({len(wrong)} in all; Grad-CAM of the predicted class)" if order
                          else f"No misclassified {cfg.split} images")
    return {"figure": figure, "indices": order, "images": data.images[order], "heatmaps": heatmaps,
            "true": true_names, "pred": pred_names, "conf": confs}


def _write_gallery_files(folder: Path, gallery: dict) -> None:
    folder.mkdir(exist_ok=True)
    for k in range(len(gallery["indices"])):
        save_overlay(folder / overlay_filename(k, gallery["true"][k], gallery["pred"][k], gallery["conf"][k]),
                     gallery["images"][k], gallery["heatmaps"][k])


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


def _accuracy_interval(correct: torch.Tensor, groups: torch.Tensor | None) -> dict:
    """The accuracy's 95% interval over tracks where every image's track is known (the training data's splits),
    else over images (Wilson's; the GTSRB test CSV names no tracks)."""
    if groups is not None and bool((groups >= 0).all()):
        low, high = track_accuracy_interval(correct, groups)
        return {"low": low, "high": high, "over": f"{len(torch.unique(groups))} tracks"}
    low, high = accuracy_interval(float(correct.double().mean()), correct.numel())
    return {"low": low, "high": high, "over": f"{correct.numel()} images"}


def _print_summary(out: Path, report: dict) -> None:
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
