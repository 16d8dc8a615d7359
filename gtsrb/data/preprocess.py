"""Contrast normalisation applied once, when the dataset is decoded (``data.preprocess``).

GTSRB was filmed in every kind of light: many signs are nearly black or
washed out. Normalising the contrast of each image before training (and,
with the same setting, before evaluation: the choice is saved with the data
module's hyperparameters) is one of the best-known gains on this dataset.
Each option works on whole uint8 batches and runs once, so its cost does not
recur per epoch; the result is what the cache stores.

* ``none``: the images as decoded.
* ``autocontrast``: stretch each channel of each image to 0..255.
* ``equalize``: histogram-equalise each channel of each image.
* ``clahe``: contrast-limited adaptive equalisation of the luminance on a
  4x4 grid of tiles, colours scaled along; lifts dark signs without
  blowing up the background noise that global equalisation amplifies.
"""

from __future__ import annotations

import torch

from gtsrb.data.batch_augment import autocontrast, equalize

PREPROCESS = ("none", "autocontrast", "equalize", "clahe")


def clahe(x: torch.Tensor, grid: int = 4, clip_limit: float = 2.0) -> torch.Tensor:
    """CLAHE of the luminance of float [0, 1] images [n, 3, H, W]; RGB is scaled by the luminance gain."""
    n, _, h, w = x.shape
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    q = (luma * 255).round().long().clamp(0, 255)
    th, tw = -(-h // grid), -(-w // grid)
    padded = torch.nn.functional.pad(q.unsqueeze(1).float(), (0, tw * grid - w, 0, th * grid - h),
                                     mode="replicate").squeeze(1).long()
    tiles = padded.view(n, grid, th, grid, tw).permute(0, 1, 3, 2, 4).reshape(n, grid * grid, th * tw)
    hist = torch.zeros(n, grid * grid, 256, device=x.device).scatter_add_(2, tiles, torch.ones_like(tiles, dtype=torch.float))
    limit = max(1.0, clip_limit * th * tw / 256)
    excess = (hist - limit).clamp_min(0).sum(-1, keepdim=True)
    hist = hist.clamp(max=limit) + excess / 256  # clipped counts are spread over all levels
    lut = (hist.cumsum(-1) / (th * tw) * 255).view(n, grid * grid * 256)

    # Bilinear blend of the four nearest tiles' mappings, by pixel position relative to tile centres.
    fy = ((torch.arange(h, device=x.device) + 0.5) / th - 0.5).clamp(0, grid - 1)
    fx = ((torch.arange(w, device=x.device) + 0.5) / tw - 0.5).clamp(0, grid - 1)
    y0, x0 = fy.floor().long(), fx.floor().long()
    y1, x1 = (y0 + 1).clamp(max=grid - 1), (x0 + 1).clamp(max=grid - 1)
    wy, wx = (fy - y0).view(1, h, 1), (fx - x0).view(1, 1, w)
    flat_q = q.view(n, h * w)

    def lookup(ty, tx):
        tile = (ty.view(h, 1) * grid + tx.view(1, w)).view(1, h * w)
        return lut.gather(1, tile * 256 + flat_q).view(n, h, w)

    mapped = ((1 - wy) * ((1 - wx) * lookup(y0, x0) + wx * lookup(y0, x1))
              + wy * ((1 - wx) * lookup(y1, x0) + wx * lookup(y1, x1))) / 255
    gain = mapped / luma.clamp_min(1 / 255)
    return (x * gain.unsqueeze(1)).clamp(0, 1)


def preprocess_images(images: torch.Tensor, method: str, chunk: int = 4096) -> torch.Tensor:
    """Apply ``method`` to uint8 images [N, 3, H, W]; returns uint8 of the same shape."""
    if method == "none" or len(images) == 0:
        return images
    op = {"autocontrast": autocontrast, "equalize": equalize, "clahe": clahe}.get(method)
    if op is None:
        raise ValueError(f"unknown preprocessing {method!r}; use one of {PREPROCESS}")
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):  # bounded memory for float copies
        batch = images[start:start + chunk].float() / 255
        out[start:start + chunk] = (op(batch) * 255).round().clamp(0, 255).to(torch.uint8)
    return out
