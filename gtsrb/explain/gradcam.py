"""Grad-CAM and Grad-CAM++: which pixels made the model say what it said.

Grad-CAM (Selvaraju et al., 2017) weighs the channels of a convolutional
feature map by the gradient of a class score and keeps the positive part;
Grad-CAM++ (Chattopadhay et al., 2018) weighs each location's gradient so that
several instances of the evidence all show up. Both need one forward and one
backward pass, implemented here with a forward hook on the target layer and
:func:`torch.autograd.grad` with respect to that layer's output only.

Explaining must never change what it explains, because the same code runs in
the middle of training (see :mod:`gtsrb.explain.callback`):

* the model runs in eval mode (no dropout, BatchNorm statistics untouched)
  and every module's train/eval flag is restored afterwards;
* no parameter's ``.grad`` or ``requires_grad`` is touched: the gradient is
  taken w.r.t. the activation, which is part of the graph because the input
  (a fresh copy) requires a gradient, even with a frozen backbone;
* the global RNG state is saved and restored;
* the hook is removed even when something fails.

A network behind a spatial transformer (``simple_cnn_stn``) computes its
feature maps on the resampled image, not on the one it was given: its maps are
taken back through the inverse of each image's predicted transform
(:func:`to_input_frame`), so the heat lands on the pixels of the input image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gtsrb.errors import UserError
from gtsrb.models.stn import SpatialTransformer

METHODS = ("gradcam", "gradcam++")


def timm_model(model: nn.Module) -> nn.Module:
    """The timm-style network inside a :class:`TrafficSignClassifier` (or the network itself)."""
    return model if hasattr(model, "feature_info") else getattr(model, "model", model)


def find_target_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose output Grad-CAM explains: ``name``, or the last stage of ``feature_info``.

    Every model in ``conf/model/`` lists its resolution stages in timm's
    ``feature_info``; the last stage is the deepest feature map that still has
    a spatial layout (later layers pool it away), the usual Grad-CAM choice.
    """
    net = timm_model(model)
    if name is None:
        info = getattr(net, "feature_info", None)
        if not info:
            raise UserError(f"{type(net).__name__} has no feature_info to find a Grad-CAM layer in; "
                            "set target_layer to a module name")
        name = info[-1]["module"] if isinstance(info, list) else info.module_name(-1)
    try:
        return name, net.get_submodule(name)
    except AttributeError:
        stages = [i["module"] for i in getattr(net, "feature_info", [])] if isinstance(
            getattr(net, "feature_info", None), list) else []
        hint = f" (the feature stages are {', '.join(stages)})" if stages else ""
        raise UserError(f"the model has no layer '{name}' for Grad-CAM{hint}; set target_layer to one of them "
                        "or null") from None


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode and put back every module's mode and the RNG state afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode(False):
        model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training


@dataclass
class Explanation:
    """Heat maps in [0, 1] at input resolution, with the logits and the explained classes."""

    heatmaps: torch.Tensor  # [N, H, W], float, CPU
    logits: torch.Tensor  # [N, num_classes], float, CPU
    classes: torch.Tensor  # [N], the class each map explains


class GradCAM:
    """``GradCAM(model)(images)`` explains the predicted class (or ``classes``) of each image.

    ``model`` maps normalised images to logits (a :class:`TrafficSignClassifier`
    or a timm model); ``target_layer`` names a module of the timm model.
    """

    def __init__(self, model: nn.Module, target_layer: str | None = None, method: str = "gradcam",
                 batch_size: int = 64) -> None:
        if method not in METHODS:
            raise UserError(f"unknown Grad-CAM method '{method}'; use one of: {', '.join(METHODS)}")
        self.model, self.method, self.batch_size = model, method, batch_size
        self.layer_name, self.layer = find_target_layer(model, target_layer)

    def __call__(self, images: torch.Tensor, classes: torch.Tensor | None = None) -> Explanation:
        maps, logits, explained = [], [], []
        with untouched(self.model):
            for start in range(0, len(images), self.batch_size):
                chunk = None if classes is None else classes[start:start + self.batch_size]
                m, lg, c = self._explain(images[start:start + self.batch_size], chunk)
                maps.append(m), logits.append(lg), explained.append(c)
        return Explanation(torch.cat(maps), torch.cat(logits), torch.cat(explained))

    def _explain(self, images: torch.Tensor, classes: torch.Tensor | None):
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)
                logits = self.model(x)
                if len(captured) != 1 or not isinstance(captured[0], torch.Tensor) or captured[0].ndim != 4:
                    shape = tuple(captured[0].shape) if captured and isinstance(captured[0], torch.Tensor) else None
                    raise UserError(f"Grad-CAM layer '{self.layer_name}' gives {shape}, not one [N, C, H, W] "
                                    "feature map; set target_layer to a convolutional stage")
                activation = captured[0]
                if classes is None:
                    classes = logits.argmax(dim=1)
                classes = classes.to(logits.device)
                score = logits.gather(1, classes[:, None]).sum()
                (grads,) = torch.autograd.grad(score, activation)
        finally:
            handle.remove()
        cam = self._combine(activation.detach().float(), grads.float())
        cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = to_input_frame(timm_model(self.model), x.detach(), cam)
        peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
        return (cam / peak).clamp(0, 1).cpu(), logits.detach().float().cpu(), classes.cpu()

    def _combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights times activations, summed over channels, positive part ([N, h, w])."""
        if self.method == "gradcam":
            weights = grads.mean(dim=(2, 3))
        else:  # Grad-CAM++ with the exponential-score closed form of the second and third derivatives
            g2, g3 = grads.pow(2), grads.pow(3)
            denominator = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
            alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
            weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3))
        return F.relu((weights[:, :, None, None] * acts).sum(dim=1))


def to_input_frame(net: nn.Module, images: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Heat maps ``[N, H, W]`` of a network behind a :class:`SpatialTransformer`, moved from the resampled image
    back onto ``images`` (unchanged for any other network).

    The transformer samples its output at ``theta @ (u, v, 1)`` of the input; a map on the output is read back at
    ``inverse(theta) @ (x, y, 1)`` for each input pixel; input pixels the transformer cropped away get no heat.
    """
    stn = getattr(net, "stn", None)
    if not isinstance(stn, SpatialTransformer):
        return cam
    with torch.no_grad():
        theta = stn.transform(images).float().cpu()
    last_row = torch.tensor([0.0, 0.0, 1.0]).expand(len(theta), 1, 3)
    inverse = torch.linalg.pinv(torch.cat([theta, last_row], dim=1))[:, :2]  # pinv: a collapsed transform is no error
    grid = F.affine_grid(inverse.to(cam.device), [len(cam), 1, *cam.shape[-2:]], align_corners=False)
    return F.grid_sample(cam[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
