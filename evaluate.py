"""Evaluate a trained checkpoint: not available yet.

The evaluation report (metrics, calibration, confusion matrix, Grad-CAM
gallery) is still being built. Until then, ``train.py`` evaluates the best
checkpoint on the validation and test splits and writes ``metrics.json``.
"""

import sys

if __name__ == "__main__":
    print("error: evaluate.py is not available yet; train.py writes val/test metrics to <run>/metrics.json",
          file=sys.stderr)
    sys.exit(2)
