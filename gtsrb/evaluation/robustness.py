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

from gtsrb.data.imageset import ImageSet
from gtsrb.explain.gradcam import untouched
from gtsrb.inference import Predictor


def fgsm_accuracy(predictor: Predictor, data: ImageSet, epsilons: Sequence[float]) -> list[dict]:
    """Accuracy on ``data`` after an FGSM step of each size in ``epsilons`` (0 = clean accuracy)."""
    correct = torch.zeros(len(epsilons))
    with untouched(predictor.model):
        for index, pixels in predictor.batches(data.images, normalized=False):
            labels = data.labels[index].to(pixels.device)
            with torch.enable_grad():
                x = pixels.clone().requires_grad_(True)
                loss = F.cross_entropy(predictor.logits_of_pixels(x), labels)
                (grad,) = torch.autograd.grad(loss, x)  # w.r.t. the input only: no parameter .grad
            with torch.no_grad():
                for k, eps in enumerate(epsilons):
                    adversarial = (pixels + eps * grad.sign()).clamp(0, 1)
                    predicted = predictor.logits_of_pixels(adversarial).argmax(dim=1)
                    correct[k] += (predicted == labels).sum().item()
    total = max(len(data), 1)
    return [{"epsilon": float(eps), "acc": float(correct[k] / total)} for k, eps in enumerate(epsilons)]
