"""Explainability: Grad-CAM heat maps, their overlays, and the training callback that dumps them."""

from gtsrb.explain.callback import GradCamCallback
from gtsrb.explain.gradcam import GradCAM, find_target_layer

__all__ = ["GradCAM", "GradCamCallback", "find_target_layer"]
