"""Classifier networks: timm models and a small from-scratch CNN behind one API."""

from gtsrb.models.factory import build_model, parameter_blocks

__all__ = ["build_model", "parameter_blocks"]
