"""The typed schema of ``conf/train.yaml``.

Hydra merges every YAML file of ``conf/`` into these dataclasses, so a value of
the wrong type (``data.batch_size=abc``) or an unknown key is rejected while
the config is composed, before anything is built. Ranges and choices that a
type cannot express are checked by :func:`validate`, which names the key, the
allowed values and the fix in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from gtsrb.data.sources import SOURCES
from gtsrb.errors import UserError


@dataclass
class DataConfig:
    source: str = "synthetic"  # gtsrb | synthetic | folder
    root: str = "data"  # gtsrb and folder: where the images are
    download: bool = False  # gtsrb: fetch through torchvision when absent
    image_size: int = 32
    batch_size: int = 128
    num_workers: int = 0
    val_fraction: float = 0.15  # gtsrb: share of each class's tracks held out for validation
    split_seed: int = 0  # gtsrb: which tracks are held out; fixed apart from `seed` so runs compare on one split
    val_split: str = "blocks"  # gtsrb: blocks (runs of consecutive tracks) | tracks (drawn at random) held out
    folds: int = 0  # gtsrb: k-fold cross-validation over tracks (0: off; val_fraction then 1/k)
    fold: int = 0  # gtsrb: the fold held out, 0..folds-1
    balanced_sampling: bool = False  # draw training batches with equal class frequencies
    roi_crop: bool = False  # gtsrb: crop to the annotated sign region
    on_corrupt: str = "error"  # error | skip
    augment_on: str = "batch"  # batch: whole batches on the training device | sample: per image in the loader
    preprocess: str = "none"  # none | autocontrast | equalize | clahe: contrast normalisation, once at decoding
    cache_dir: Optional[str] = None  # gtsrb/folder: keep decoded tensors here; rebuilt when the files change
    in_memory: bool = True  # gtsrb/folder: false decodes each image in the DataLoader (needs augment_on=sample)
    train_per_class: int = 100  # synthetic: images per class and split
    val_per_class: int = 20
    test_per_class: int = 20
    num_classes: int = 43  # synthetic: render only the first N classes
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])


@dataclass
class ModelConfig:
    name: str = "simple_cnn"  # a timm model name, or simple_cnn
    pretrained: bool = False
    weights: Optional[str] = None  # local weights file used instead of the download
    drop_rate: float = 0.2
    # passed on to the network's constructor, as timm's --model-kwargs: e.g. widths=[48,96,192] for simple_cnn,
    # drop_path_rate=0.1 for a timm model
    kwargs: dict[str, Any] = field(default_factory=dict)
    compile: str = "off"  # off | gpu (torch.compile when training on CUDA) | on (also on CPU: minutes of compiling)


@dataclass
class AugmentationConfig:
    name: str = "none"
    hflip: str = "none"  # none | label_safe | any
    rotation: float = 0.0  # degrees, both ways
    translate: float = 0.0  # fraction of the image size
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    shear: float = 0.0  # degrees
    perspective: float = 0.0  # distortion scale, applied with probability 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # keep small: a large hue shift turns red signs blue
    blur: float = 0.0  # probability of a Gaussian blur
    auto_augment: Optional[str] = None  # randaugment | trivialaugment
    random_erasing: float = 0.0  # probability
    cooldown_epochs: Union[int, float] = 0  # the last N epochs, or that share (0-1) of them (gtsrb/cooldown.py)
    cooldown: dict[str, Any] = field(default_factory=dict)  # fields above -> their value in those epochs


@dataclass
class MixupConfig:
    name: str = "none"
    mixup_alpha: float = 0.0  # 0 disables MixUp
    cutmix_alpha: float = 0.0  # 0 disables CutMix
    prob: float = 1.0  # share of training batches that get mixed


@dataclass
class WeightAveragingConfig:
    name: str = "none"  # none | ema (gtsrb/averaging.py)
    decay: float = 0.999  # ema: averages about the last 1 / (1 - decay) optimiser steps


@dataclass
class ResolutionConfig:
    name: str = "fixed"  # fixed | progressive (gtsrb/resolution.py)
    min_size: int = 24  # progressive: training image size at start_epoch
    start_epoch: int = 0  # progressive: the size starts rising after this epoch
    end_epoch: int = 4  # progressive: full size (data.image_size) from this epoch on
    multiple_of: int = 4  # progressive: sizes are rounded down to a multiple of this


@dataclass
class FinetuningConfig:
    name: str = "two_phase"
    unfreeze_at_epoch: Optional[int] = 1  # null: the backbone stays frozen (linear probe)
    unfreeze_blocks: Optional[int] = None  # how many of the last backbone blocks to train; null: all
    backbone_lr_ratio: float = 0.1  # backbone learning rate / head learning rate
    freeze_bn_stats: bool = True  # frozen blocks keep their BatchNorm running statistics


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw


@dataclass
class SchedulerConfig:
    name: str = "onecycle"  # onecycle | cosine | plateau | none
    warmup_epochs: float = 1.0  # cosine
    min_lr_ratio: float = 0.01  # cosine: final lr / peak lr
    pct_start: float = 0.25  # onecycle
    div_factor: float = 25.0  # onecycle
    final_div_factor: float = 1e3  # onecycle
    factor: float = 0.5  # plateau
    patience: int = 2  # plateau


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    weight_averaging: WeightAveragingConfig = field(default_factory=WeightAveragingConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    finetuning: FinetuningConfig = field(default_factory=FinetuningConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # keyword arguments of lightning.Trainer
    logger: dict[str, Any] = field(default_factory=dict)  # name -> instantiable logger
    callbacks: dict[str, Any] = field(default_factory=dict)  # name -> instantiable callback
    label_smoothing: float = 0.1
    channels_last: bool = False
    seed: int = 42
    monitor: str = "val/acc"
    monitor_mode: str = "max"
    ckpt_path: Optional[str] = None  # resume training from this checkpoint
    test: bool = True  # evaluate the final checkpoint on the test split after training
    final_checkpoint: str = "best"  # the run ends on: best (by monitor) | last (the last epoch)
    time_budget_s: Optional[float] = None  # seconds from process start: trainer.max_epochs becomes what fits
    output_dir: str = "."


def register_configs() -> None:
    """Make the schema available to ``conf/train.yaml`` as ``train_schema``."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


_CHOICES = {
    "data.source": tuple(SOURCES),
    "data.on_corrupt": ("error", "skip"),
    "data.val_split": ("tracks", "blocks"),
    "data.augment_on": ("batch", "sample"),
    "data.preprocess": ("none", "autocontrast", "equalize", "clahe"),
    "model.compile": ("off", "gpu", "on"),
    "weight_averaging.name": ("none", "ema"),
    "resolution.name": ("fixed", "progressive"),
    "augmentation.hflip": ("none", "label_safe", "any"),
    "augmentation.auto_augment": (None, "randaugment", "trivialaugment"),
    "optimizer.name": ("adamw", "sgd"),
    "scheduler.name": ("onecycle", "cosine", "plateau", "none"),
    "monitor_mode": ("min", "max"),
    "final_checkpoint": ("best", "last"),
}

_RANGES = {  # key: (low, high), inclusive
    "data.image_size": (8, 1024),
    "data.batch_size": (1, 1 << 16),
    "data.num_workers": (0, 256),
    "data.val_fraction": (0.0, 0.9),
    "data.train_per_class": (1, 100_000),
    "data.val_per_class": (0, 100_000),
    "data.test_per_class": (0, 100_000),
    "data.num_classes": (2, 43),
    "model.drop_rate": (0.0, 0.99),
    "augmentation.rotation": (0.0, 45.0),
    "augmentation.translate": (0.0, 0.5),
    "augmentation.shear": (0.0, 45.0),
    "augmentation.perspective": (0.0, 1.0),
    "augmentation.hue": (0.0, 0.1),
    "augmentation.blur": (0.0, 1.0),
    "augmentation.random_erasing": (0.0, 1.0),
    "augmentation.cooldown_epochs": (0, 100_000),
    "mixup.mixup_alpha": (0.0, 10.0),
    "mixup.cutmix_alpha": (0.0, 10.0),
    "mixup.prob": (0.0, 1.0),
    "weight_averaging.decay": (0.0, 0.99999),
    "resolution.min_size": (8, 1024),
    "resolution.start_epoch": (0, 100_000),
    "resolution.end_epoch": (0, 100_000),
    "resolution.multiple_of": (1, 64),
    "finetuning.unfreeze_at_epoch": (0, 100_000),
    "finetuning.unfreeze_blocks": (1, 1000),
    "finetuning.backbone_lr_ratio": (0.0, 10.0),
    "optimizer.lr": (1e-8, 10.0),
    "optimizer.weight_decay": (0.0, 1.0),
    "scheduler.pct_start": (0.0, 1.0),
    "scheduler.min_lr_ratio": (0.0, 1.0),
    "label_smoothing": (0.0, 0.99),
    "time_budget_s": (1.0, 1e7),
}


def validate(cfg: DictConfig) -> None:
    """Check choices and ranges; raise a one-line :class:`UserError` on the first bad value."""
    _check_values(cfg)
    _check_augmentation(cfg.augmentation)
    _check_cooldown(cfg)
    if cfg.get("final_checkpoint") == "last":
        _check_last_checkpoint(cfg.callbacks)
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3 or min(cfg.data.std) <= 0:
        raise UserError("data.mean and data.std need three values each (RGB), with std > 0")
    if not cfg.data.in_memory:
        _check_lazy_data(cfg.data)
    if cfg.get("resolution") and cfg.resolution.name == "progressive":
        _check_progressive(cfg)
    folds, fold = cfg.data.get("folds", 0), cfg.data.get("fold", 0)
    if folds and not (folds >= 2 and 0 <= fold < folds):
        raise UserError(f"data.fold={fold} of data.folds={folds}: folds must be 2 or more and fold in 0..{folds - 1}")
    source = SOURCES[cfg.data.source]
    if folds and not source.draws_validation:
        raise UserError(f"data.folds={folds}: data.source={source.name} validates on {source.validation(cfg.data)}, "
                        "so every fold would be the same run; k-fold cross-validation needs data=gtsrb, "
                        "or set data.folds=0")


def _check_values(cfg: DictConfig, prefix: str = "", shown_as: str = "") -> None:
    """The choices and ranges of the keys under ``prefix``, named with ``shown_as`` in place of it when given."""
    from omegaconf import OmegaConf

    for key, allowed in _CHOICES.items():
        if not key.startswith(prefix):
            continue
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise UserError(f"{_shown(key, prefix, shown_as)}={value} is not a valid choice; use one of: {shown}")
    for key, (low, high) in _RANGES.items():
        if not key.startswith(prefix):
            continue
        value = OmegaConf.select(cfg, key)
        if value is not None and not low <= value <= high:
            raise UserError(f"{_shown(key, prefix, shown_as)}={value} is out of range; "
                            f"use a value between {low} and {high}")


def _shown(key: str, prefix: str, shown_as: str) -> str:
    return shown_as + key[len(prefix):] if shown_as else key


def _check_augmentation(aug: DictConfig, key: str = "augmentation") -> None:
    scale = aug.scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise UserError(f"{key}.scale={list(scale)} must be [low, high] with 0 < low <= high")


def cooled_augmentation(aug: DictConfig | dict) -> DictConfig:
    """``aug`` with its ``cooldown`` changes applied: what the last ``cooldown_epochs`` epochs train with.
    A key that is not an augmentation field fails here, with the fields it could have been."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    aug = OmegaConf.merge(OmegaConf.structured(AugmentationConfig), aug)
    changes = OmegaConf.to_container(aug.cooldown)
    settings = [f.name for f in fields(AugmentationConfig) if f.name not in ("name", "cooldown", "cooldown_epochs")]
    unknown = sorted(set(changes) - set(settings))
    if unknown:
        raise UserError(f"augmentation.cooldown.{unknown[0]} is not an augmentation setting; "
                        f"the cooldown can change: {', '.join(settings)}")
    try:
        cooled = OmegaConf.merge(aug, changes)
    except (ConfigKeyError, ValidationError) as err:
        raise UserError(f"augmentation.cooldown.{err.full_key}: {err.msg.splitlines()[0]}") from None
    cooled.cooldown, cooled.cooldown_epochs = {}, 0  # the cooled settings themselves: nothing left to cool
    return cooled


def _check_last_checkpoint(callbacks) -> None:
    """``final_checkpoint=last`` ends on the file of a ``ModelCheckpoint`` that watches no metric (it keeps the latest
    epoch). With only a monitored one, ``evaluate.py ckpt_path=<run>`` would find the best epoch instead, so that is
    refused; with none at all (``callbacks=none``) the run ends on the weights in memory, which are the last epoch's."""
    checkpoints = [c for c in (callbacks or {}).values()
                   if c is not None and str(c.get("_target_", "")).endswith("ModelCheckpoint")]
    if checkpoints and all(c.get("monitor") is not None for c in checkpoints):
        raise UserError("final_checkpoint=last needs a checkpoint of the latest epoch (callbacks.last_checkpoint, "
                        "conf/callbacks/default.yaml); restore it or set final_checkpoint=best")


def _check_cooldown(cfg: DictConfig) -> None:
    """The cooled augmentation passes the same checks, named by the keys the user wrote, whether or not this run
    cools down (a misspelt key fails now, not when the cooldown is turned on). A cooldown needs changes to make,
    and the batched path, where the training process applies each epoch's augmentation: the per-sample loader
    holds its own copy of the augmentation it was built with."""
    from omegaconf import OmegaConf

    aug = cfg.augmentation
    cooled = cooled_augmentation(aug)
    _check_values(OmegaConf.create({"augmentation": cooled}), "augmentation.", "augmentation.cooldown.")
    _check_augmentation(cooled, "augmentation.cooldown")
    if not aug.cooldown_epochs:
        return
    if isinstance(aug.cooldown_epochs, float) and not 0 < aug.cooldown_epochs < 1:
        raise UserError(f"augmentation.cooldown_epochs={aug.cooldown_epochs}: a float is a share of the run's epochs, "
                        f"between 0 and 1; to count epochs write an int, e.g. "
                        f"augmentation.cooldown_epochs={max(1, round(aug.cooldown_epochs))}")
    if not aug.cooldown:
        raise UserError(f"augmentation.cooldown_epochs={aug.cooldown_epochs} with augmentation={aug.name}: "
                        "augmentation.cooldown lists no change, so those epochs would train as the others; "
                        "add one, e.g. +augmentation.cooldown.rotation=5, or use augmentation=strong")
    if cfg.data.augment_on != "batch":
        fix = "data.augment_on=batch" if cfg.data.in_memory else "data.in_memory=true data.augment_on=batch"
        raise UserError(f"augmentation.cooldown_epochs={aug.cooldown_epochs} changes the augmentation between "
                        "epochs, which data.augment_on=sample cannot (its loader holds the augmentation it was built "
                        f"with); use {fix}, or augmentation.cooldown_epochs=0")


def _check_progressive(cfg: DictConfig) -> None:
    """The ramp must start no larger than the full size and rise forwards. That it ends before the last epoch is
    checked when training starts (:class:`~gtsrb.resolution.ProgressiveResizing`), once the epoch count is known:
    ``time_budget_s`` may set it after this check."""
    res, size = cfg.resolution, cfg.data.image_size
    if res.min_size > size:
        raise UserError(f"resolution.min_size={res.min_size} is larger than data.image_size={size}; "
                        f"use a resolution.min_size of at most {size}")
    if res.start_epoch > res.end_epoch:
        raise UserError(f"resolution.start_epoch={res.start_epoch} is after resolution.end_epoch={res.end_epoch}; "
                        "the size rises from the first to the second")


def _check_lazy_data(data: DictConfig) -> None:
    """``data.in_memory=false`` only makes sense for image files, augmented per sample, without a tensor cache."""
    SOURCES[data.source].require_files()
    if data.augment_on != "sample":
        raise UserError(f"data.in_memory=false decodes each image in the DataLoader, so "
                        f"data.augment_on={data.augment_on} has no tensor to augment whole batches from; "
                        "set data.augment_on=sample")
    if data.cache_dir:
        raise UserError(f"data.in_memory=false decodes images as they are needed, so "
                        f"data.cache_dir={data.cache_dir} (a cache of decoded tensors) would never be used; "
                        "set data.cache_dir=null or data.in_memory=true")


# --------------------------------------------------------------------------- evaluate.py


def _overrides_of(schema: type, name: str, exclude: tuple[str, ...] = ()) -> type:
    """The fields of ``schema`` less ``exclude``, each optional and ``None`` by default.

    ``evaluate.py`` takes the data and model config from the checkpoint; a
    value set here replaces the checkpoint's (``data.root=/elsewhere``), and a
    misspelt key, or one that may not change, is rejected while composing.
    """
    import typing
    from dataclasses import fields, make_dataclass

    hints = typing.get_type_hints(schema)
    return make_dataclass(name, [(f.name, Optional[hints[f.name]], None) for f in fields(schema)
                                 if f.name not in exclude])


DataOverrides = _overrides_of(DataConfig, "DataOverrides")
# model.kwargs shape the network its checkpoint's weights were trained in: they always come from the checkpoint
ModelOverrides = _overrides_of(ModelConfig, "ModelOverrides", exclude=("kwargs",))


@dataclass
class EvaluateConfig:
    ckpt_path: str = "???"  # a .ckpt file, or a training run directory (its best checkpoint)
    split: str = "test"  # test | val
    calibrate: bool = True  # fit a softmax temperature on the val split and save a calibrated checkpoint
    tta: bool = False  # test-time augmentation: label-safe mirror (and shifts), logits averaged
    tta_shift: int = 2  # TTA: also shift by this many pixels in 4 directions; 0 = mirror only
    fgsm_epsilons: list[float] = field(default_factory=list)  # FGSM robustness, in pixel units of [0, 1]
    gradcam_method: str = "gradcam"  # gradcam | gradcam++
    target_layer: Optional[str] = None  # Grad-CAM layer (module name); null = the last feature stage
    gallery_size: int = 24  # misclassified images shown, most confident first
    top_confused: int = 15  # most-confused class pairs listed
    device: str = "auto"  # auto | cpu | cuda
    data: DataOverrides = field(default_factory=DataOverrides)  # type: ignore[valid-type]
    model: ModelOverrides = field(default_factory=ModelOverrides)  # type: ignore[valid-type]
    output_dir: str = "."


def register_evaluate_config() -> None:
    """Make the schema available to ``conf/evaluate.yaml`` as ``evaluate_schema``."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


# --------------------------------------------------------------------------- python -m gtsrb.export


@dataclass
class ExportConfig:
    ckpt_path: str = "???"  # a .ckpt file, a training run directory (its best checkpoint) or an evaluation directory
    output_dir: str = "."  # model.onnx goes here
    opset: Optional[int] = None  # ONNX opset; null = the exporter's default
    verify: bool = True  # run ONNX Runtime against PyTorch once after writing
    verify_images: int = 64  # random images for that check


def register_export_config() -> None:
    """Make the schema available to ``conf/export.yaml`` as ``export_schema``."""
    ConfigStore.instance().store(name="export_schema", node=ExportConfig)


# --------------------------------------------------------------------------- python -m gtsrb.serve


@dataclass
class ServeConfig:
    model: str = "???"  # a run directory, a .ckpt file, an evaluation directory (calibrated) or a model.onnx
    host: str = "127.0.0.1"  # 0.0.0.0 to accept connections from other machines
    port: int = 8000
    top_k: int = 5  # classes per image unless the request asks for another number
    max_batch_size: int = 16  # dynamic batching: requests classified in one pass; 1 = off
    batch_timeout: float = 0.005  # seconds a batch waits to fill
    workers: int = 1  # inference worker processes
    threads: int = 1  # torch threads per worker
    max_upload_mb: float = 10.0  # larger bodies get a 413
    max_pixels: int = 25_000_000  # larger images (decompression bombs) get a 413
    max_files: int = 32  # images per request
    timeout: float = 30.0  # seconds a request may wait for the worker
    log_level: str = "warning"


def register_serve_config() -> None:
    """Store the schema as ``serve_schema`` and ``conf/serve.yaml`` as ``serve``.

    The serving app composes from the ConfigStore alone, not from ``conf/``:
    there ``model`` is a config group, and ``model=<path>`` would be read as
    a choice of group rather than the path of the model to serve.
    """
    from pathlib import Path

    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(name="serve_schema", node=ServeConfig)
    store.store(name="serve", node=OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "serve.yaml"))
