"""Build classifiers through timm and split them into backbone blocks and a head.

Every model in ``conf/model/`` is created by :func:`timm.create_model` (or is
the small :class:`~gtsrb.models.simple_cnn.SimpleCNN`, which speaks the same
API), so the fine-tuning, Grad-CAM and reporting code only ever relies on
timm's model interface: ``feature_info``, ``get_classifier``,
``forward_features`` and ``forward_head``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gtsrb.errors import UserError, first_line
from gtsrb.models.simple_cnn import SimpleCNN
from gtsrb.models.small_resnet import VARIANTS as SMALL_RESNETS
from gtsrb.models.small_resnet import SmallResNet

log = logging.getLogger(__name__)

SIMPLE_CNN = "simple_cnn"
# The project's own networks (no pretrained weights): model name -> (class, keyword arguments).
FROM_SCRATCH = {SIMPLE_CNN: (SimpleCNN, {}), "simple_cnn_stn": (SimpleCNN, {"stn": True}),
                "simple_cnn_stn_ms": (SimpleCNN, {"stn": True, "multiscale": True}),
                "simple_cnn_stn_grid": (SimpleCNN, {"stn": True, "head_grid": 4}),
                **{n: (SmallResNet, kw) for n, kw in SMALL_RESNETS.items()}}


def build_model(name: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                drop_rate: float = 0.0, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Create ``name`` with a fresh ``num_classes``-way classifier.

    ``weights`` (a local ``.safetensors``/``.pth`` file in timm's format) takes
    the place of the download, for machines without internet. Any other
    pretrained=true run downloads timm's weights, and a failed download turns
    into a one-line error that names both ways around it.

    ``kwargs`` (``model.kwargs``) go to the network's constructor, as timm's
    ``--model-kwargs`` do, and override what the model's name sets: a wider
    ``simple_cnn`` (``widths``), a timm model's ``drop_path_rate``. A network
    they break (an argument it does not take, one that leaves it unable to
    classify an RGB image) is a one-line error, not a crash at the first batch.
    """
    extra = _model_kwargs(kwargs)
    try:
        model = _build(name, num_classes, pretrained, weights, drop_rate, extra)
        if extra:
            _classifies_rgb(model, num_classes)
    except UserError:
        raise
    except Exception as exc:  # a constructor or a forward pass can fail in any way a wrong argument makes it
        if not extra:
            raise
        reason = first_line(exc)
        given = " ".join(f"model.kwargs.{k}={v}" for k, v in extra.items())
        raise UserError(f"{name} cannot be built with {given} ({reason}); fix or remove model.kwargs") from exc
    return model


def _build(name: str, num_classes: int, pretrained: bool, weights: str | None, drop_rate: float,
           extra: dict[str, Any]) -> nn.Module:
    if name in FROM_SCRATCH:
        if pretrained or weights:
            raise UserError(f"{name} has no pretrained weights; set model.pretrained=false and model.weights=null")
        network, variant = FROM_SCRATCH[name]
        return network(num_classes=num_classes, drop_rate=drop_rate, **{**variant, **extra})
    if not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}'; pick a model config (model=...) or a name from timm.list_models()")
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate, **extra)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {path} does not exist; fix model.weights or set model.weights=null")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    else:
        kwargs.update(pretrained=pretrained)
    if extra and kwargs["pretrained"]:
        # timm loads a pretrained backbone non-strictly (the classifier is new): a layer the kwargs add or reshape
        # would start from random weights with only an INFO line to say so
        log.warning("model.kwargs %s with pretrained weights: any layer they add or reshape starts untrained",
                    sorted(extra))
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # download and file errors come in many types (OSError, HTTP, hub, safetensors)
        if not kwargs["pretrained"]:
            raise
        reason = first_line(exc).split(". ")[0]
        if weights:
            changed = ", or remove model.kwargs, which change the network the weights fit" if extra else ""
            raise UserError(f"could not load weights file {weights} into {name} ({reason}); "
                            f"give a timm state dict of {name}, or set model.weights=null{changed}") from exc
        raise UserError(f"could not download pretrained weights for {name} ({reason}); train from scratch with "
                        f"model.pretrained=false, or give a local copy with model.weights=/path/to/{name}.safetensors"
                        ) from exc


# Arguments build_model sets from config keys of their own, or that would make a network the rest of the framework
# cannot use: a model.kwargs entry may not set them.
_OWN_KEYS = {"num_classes": "the data's classes", "drop_rate": "model.drop_rate", "pretrained": "model.pretrained",
             "pretrained_cfg": "model.weights", "pretrained_cfg_overlay": "model.weights",
             "checkpoint_path": "model.weights", "in_chans": "the images' 3 RGB channels",
             "features_only": "the classifier the framework trains"}


def _model_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    extra = dict(kwargs or {})
    clashes = sorted(extra.keys() & _OWN_KEYS.keys())
    if clashes:
        raise UserError(f"model.kwargs.{clashes[0]} is set by {_OWN_KEYS[clashes[0]]}; remove it from model.kwargs")
    return extra


def _classifies_rgb(model: nn.Module, num_classes: int) -> None:
    """One forward pass of a small RGB batch, in eval mode (BatchNorm statistics untouched): ``model.kwargs`` can
    make a network that builds but cannot classify (a global pool switched off, a stage without width)."""
    size = max(32, min_input_size(model))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        shape = tuple(model(torch.zeros(2, 3, size, size)).shape)
    model.train(was_training)
    if shape != (2, num_classes):
        raise ValueError(f"it maps 2 images to scores of shape {shape}, not (2, {num_classes})")


def parameter_blocks(model: nn.Module) -> tuple[list[list[nn.Module]], list[nn.Module]]:
    """Split a timm-style model into ordered backbone blocks and the classifier head.

    Blocks follow ``model.feature_info``: block ``k`` holds every module that
    sits after feature stage ``k-1`` and up to the end of stage ``k`` (the
    stem joins the first block; layers between the last stage and the
    classifier, such as MobileNetV3's ``conv_head``, join the last). Only
    modules that own parameters or BatchNorm statistics are listed, so
    freezing a block touches each parameter exactly once. "Unfreeze the last
    N blocks" therefore means the last N resolution stages of the network.
    """
    head = list(model.get_classifier().modules())
    head_ids = {id(m) for m in head}
    named = list(model.named_modules())
    ends = []
    for info in model.feature_info:
        prefix = info["module"]
        ends.append(max(i for i, (n, _) in enumerate(named) if n == prefix or n.startswith(prefix + ".")))
    blocks: list[list[nn.Module]] = [[] for _ in ends]
    for i, (_, module) in enumerate(named):
        if id(module) in head_ids:
            continue
        if not isinstance(module, _BatchNorm) and next(module.parameters(recurse=False), None) is None:
            continue
        stage = next((k for k, end in enumerate(ends) if i <= end), len(ends) - 1)
        blocks[stage].append(module)
    return blocks, head


def min_input_size(model: nn.Module) -> int:
    """Smallest square input whose last feature map is still at least 1x1."""
    return int(model.feature_info[-1]["reduction"])
