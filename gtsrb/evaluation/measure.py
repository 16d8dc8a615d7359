"""What ``evaluate.py`` measures: a checkpoint's predictions on one split, and every number taken from them.

Nothing here draws or writes: :mod:`gtsrb.evaluation.plots` draws the figures and
:mod:`gtsrb.evaluation.write` writes the report. So a wrong override, a foreign
checkpoint or a missing split fails here, before any file of the report exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gtsrb.checkpoint import load_classifier, read_checkpoint, resolve_checkpoint
from gtsrb.classes import class_name
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.data.imageset import ImageSet
from gtsrb.errors import UserError
from gtsrb.evaluation.calibration import fit_temperature
from gtsrb.evaluation.preflight import check_options
from gtsrb.evaluation.report import confused_pairs, confusion, per_class_rows
from gtsrb.evaluation.robustness import fgsm_accuracy
from gtsrb.inference import InputSpec, Predictor, pick_device
from gtsrb.metrics import NegativeLogLikelihood, compute_metrics, split_accuracy_interval

log = logging.getLogger(__name__)


@dataclass
class Gallery:
    """The most confident mistakes, with Grad-CAM heat maps of the predicted class."""

    images: torch.Tensor  # prepared uint8 [K, 3, S, S]
    heatmaps: torch.Tensor | None
    true: list[str]
    pred: list[str]
    conf: list[float]
    mistakes: int  # in the whole split; the gallery shows the first K


@dataclass
class Measurement:
    """Everything the report shows, computed; ``logits`` are as evaluated (with TTA where asked), before the
    temperature."""

    ckpt_path: Path
    ckpt: dict[str, Any] = field(repr=False)
    split: str
    tta: bool
    names: list[str]
    data_config: dict[str, Any]
    model_config: dict[str, Any]
    labels: torch.Tensor
    logits: torch.Tensor
    temperature: float
    calibration: dict[str, Any] | None
    uncalibrated: dict[str, float]
    calibrated: dict[str, float] | None
    interval: dict[str, Any]
    tta_gain: float | None
    matrix: torch.Tensor
    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    fgsm: list[dict[str, float]] | None
    gallery: Gallery | None

    @property
    def final_logits(self) -> torch.Tensor:
        return self.logits / self.temperature


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


def measure(cfg: DictConfig) -> Measurement:
    """Load ``cfg.ckpt_path`` and its data, predict ``cfg.split`` and compute the whole report's numbers."""
    check_options(cfg)
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
    predictor = Predictor(model, InputSpec.of(datamodule.cfg), datamodule.cfg.batch_size, device, ckpt_path)
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
        temperature, calibration = _calibrate(val_logits, datamodule.splits["val"].labels)
        if cfg.split == "val":
            log.warning("the temperature is fitted and evaluated on the val split: "
                        "the calibrated numbers are optimistic")

    uncalibrated = compute_metrics(logits, labels)
    final_logits = logits / temperature
    matrix = confusion(final_logits, labels)
    return Measurement(
        ckpt_path=Path(ckpt_path), ckpt=ckpt, split=cfg.split, tta=bool(cfg.tta), names=names,
        data_config=OmegaConf.to_container(datamodule.cfg), model_config=dict(model.hparams.model),
        labels=labels, logits=logits, temperature=temperature, calibration=calibration,
        uncalibrated=uncalibrated,
        calibrated=compute_metrics(final_logits, labels) if calibration or temperature != 1.0 else None,
        interval=split_accuracy_interval(logits.argmax(1) == labels, data.groups),
        tta_gain=(uncalibrated["acc"] - compute_metrics(plain, labels)["acc"]) if cfg.tta else None,
        matrix=matrix, rows=per_class_rows(final_logits, labels, names),
        pairs=confused_pairs(matrix, names, cfg.top_confused),
        fgsm=fgsm_accuracy(predictor, data, [0.0, *cfg.fgsm_epsilons]) if len(cfg.fgsm_epsilons) else None,
        gallery=_misclassified(cfg, predictor, data, final_logits, names) if cfg.gallery_size else None,
    )


def _calibrate(val_logits: torch.Tensor, val_labels: torch.Tensor) -> tuple[float, dict[str, Any]]:
    """The softmax temperature fitted on the val split, and what it did to the val split's NLL."""
    temperature = fit_temperature(val_logits, val_labels)
    nll = NegativeLogLikelihood()
    return temperature, {"fitted_on": "val", "temperature": temperature, "val_images": len(val_labels),
                         "val_nll_before": float(nll(val_logits, val_labels)),
                         "val_nll_after": float(nll(val_logits / temperature, val_labels))}


def _mirror_policy(datamodule: TrafficSignDataModule) -> tuple[list[int] | None, bool]:
    """TTA mirrors exactly as training did: label-safe with the flip map, any, or not at all."""
    hflip = datamodule.aug.hflip
    if hflip == "any":
        return None, True
    if hflip == "label_safe" and datamodule.flip_map is not None:
        return list(datamodule.flip_map), True
    return None, False


def _misclassified(cfg: DictConfig, predictor: Predictor, data: ImageSet, logits: torch.Tensor,
                   names: list[str]) -> Gallery:
    """The ``cfg.gallery_size`` most confident mistakes, with Grad-CAM heat maps of the predicted class."""
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    wrong = (predicted != data.labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][: cfg.gallery_size].tolist()
    heatmaps = None
    if order:
        heatmaps = predictor.explain(data.images[order], predicted[order], cfg.gradcam_method,
                                     cfg.target_layer).heatmaps
    return Gallery(images=data.images[order], heatmaps=heatmaps,
                   true=[class_name(int(data.labels[i]), names) for i in order],
                   pred=[class_name(int(predicted[i]), names) for i in order],
                   conf=[float(confidence[i]) for i in order], mistakes=len(wrong))
