"""Explainability: Grad-CAM heat maps (``gradcam``), their overlays (``overlays``), and the training callback
that dumps them (``callback``, which classifies through :mod:`gtsrb.inference`)."""
