"""The model report: metrics, calibration, robustness and figures for a trained checkpoint (``evaluate.py``)."""
