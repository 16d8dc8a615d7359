"""How easily is the model fooled? Accuracy under the fast gradient sign method (FGSM).

FGSM (Goodfellow et al., 2015) moves every pixel by ``epsilon`` in the
direction that increases the loss the most, in one step. Epsilons are in
pixel units of [0, 1] (``8/255`` ~ 0.031 is the classic budget) and the
perturbed image is clipped back to valid pixels before it is normalised, so
the attack stays a real image. A steep drop at tiny epsilons is a warning
sign for deployment; it is no full robustness certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gtsrb.data.imageset import ImageSet
from gtsrb.explain.gradcam import untouched


def fgsm_accuracy(model: nn.Module, data: ImageSet, epsilons: Sequence[float], mean: Sequence[float],
                  std: Sequence[float], batch_size: int = 256, device: str | torch.device = "cpu") -> list[dict]:
    """Accuracy on ``data`` after an FGSM step of each size in ``epsilons`` (0 = clean accuracy)."""
    mean_t = torch.tensor(list(mean), device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(list(std), device=device).view(1, 3, 1, 1)
    correct = torch.zeros(len(epsilons))
    with untouched(model):
        for start in range(0, len(data), batch_size):
            pixels = (data.images[start:start + batch_size].float() / 255).to(device)
            labels = data.labels[start:start + batch_size].to(device)
            with torch.enable_grad():
                x = pixels.clone().requires_grad_(True)
                loss = F.cross_entropy(model((x - mean_t) / std_t), labels)
                (grad,) = torch.autograd.grad(loss, x)  # w.r.t. the input only: no parameter .grad
            with torch.no_grad():
                for k, eps in enumerate(epsilons):
                    adversarial = (pixels + eps * grad.sign()).clamp(0, 1)
                    predicted = model((adversarial - mean_t) / std_t).argmax(dim=1)
                    correct[k] += (predicted == labels).sum().item()
    total = max(len(data), 1)
    return [{"epsilon": float(eps), "acc": float(correct[k] / total)} for k, eps in enumerate(epsilons)]
