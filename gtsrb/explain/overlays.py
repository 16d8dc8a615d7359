"""Turn heat maps into pictures: one overlay per image, a captioned grid, file names that say it all.

The Grad-CAM callback, ``evaluate.py``'s misclassified gallery and
``python -m gtsrb.predict`` all draw through these functions, so an overlay
looks the same wherever it appears.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

CORRECT, WRONG = "#1a7f37", "#cf222e"


def overlay(image: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """A uint8 [3, H, W] image blended with a [H, W] heat map in [0, 1] (jet colours): uint8 [H, W, 3]."""
    rgb = image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255.0
    heat = matplotlib.colormaps["jet"](heatmap.cpu().numpy())[..., :3]
    return (((1 - alpha) * rgb + alpha * heat) * 255).round().clip(0, 255).astype(np.uint8)


def slug(text: str, max_len: int = 40) -> str:
    """``"Speed limit (20km/h)"`` -> ``"speed-limit-20kmh"``: safe in a file name on every system."""
    text = re.sub(r"[^a-z0-9]+", "-", text.lower().replace("/", "")).strip("-")
    return text[:max_len].rstrip("-") or "class"


def overlay_filename(index: int, true_name: str | None, pred_name: str, confidence: float) -> str:
    """``03_true-stop_pred-yield_conf0.87.png``; ``true`` is left out when the label is unknown."""
    true = f"_true-{slug(true_name)}" if true_name is not None else ""
    return f"{index:02d}{true}_pred-{slug(pred_name)}_conf{confidence:.2f}.png"


def overlay_pair(image: torch.Tensor, heatmap: torch.Tensor, min_size: int = 192) -> Image.Image:
    """The image and its overlay side by side, enlarged so a 32 px sign is still visible."""
    pair = np.concatenate([image.permute(1, 2, 0).cpu().numpy(), overlay(image, heatmap)], axis=1)
    height, width = pair.shape[:2]
    scale = max(1, int(np.ceil(min_size / height)))
    return Image.fromarray(pair).resize((width * scale, height * scale), Image.Resampling.BICUBIC)


def save_overlay(path: Path, image: torch.Tensor, heatmap: torch.Tensor, min_size: int = 192) -> None:
    overlay_pair(image, heatmap, min_size).save(path)


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def overlay_grid(images: torch.Tensor, heatmaps: torch.Tensor | None, pred_names: Sequence[str],
                 confidences: Sequence[float], true_names: Sequence[str | None] | None = None,
                 title: str = "", columns: int = 6) -> plt.Figure:
    """A captioned grid: each cell shows the image (with its overlay when heat maps are given).

    Captions name the true and the predicted class with its confidence, green
    when right and red when wrong, so mistakes stand out at a glance.
    """
    n = len(images)
    per_item = 2 if heatmaps is not None else 1
    columns = max(per_item, min(columns, n * per_item) // per_item * per_item) if n else per_item
    items_per_row = columns // per_item
    rows = max(1, -(-n // items_per_row))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.25 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, items_per_row)
        true = true_names[i] if true_names is not None else None
        color = "black" if true is None else (CORRECT if true == pred_names[i] else WRONG)
        caption = (f"true: {_short(true)}\n" if true is not None else "") + \
            f"pred: {_short(pred_names[i])}\nconf: {confidences[i]:.2f}"
        ax = axes[r, c * per_item]
        ax.imshow(images[i].permute(1, 2, 0).cpu().numpy())
        ax.set_title(caption, fontsize=6.5, color=color, loc="left")
        if heatmaps is not None:
            axes[r, c * per_item + 1].imshow(overlay(images[i], heatmaps[i]))
            axes[r, c * per_item + 1].set_title("Grad-CAM", fontsize=6.5, color=color)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
