"""A spatial transformer (Jaderberg et al., 2015) in front of a classifier: it learns to undo pose.

GTSRB's best single models put one in front of their convolutions: a small localisation network looks at
the image, predicts an affine transform, and the image is resampled through it, so the classifier sees the sign
centred, upright and at one scale. It learns this from the classification loss alone, no boxes needed.

Two choices keep it cheap and safe to train:

* The localisation network looks at the image at half resolution and ends in an adaptive pool, so it costs
  about 1.1 MMAC at 32 px (simple_cnn costs about 39) and works, and exports, at any input size.
* Its last layer starts at zero weights with the identity as bias: at step 0 the transformer passes the image
  through unchanged, and the classifier trains as it would without it until the gradients say otherwise.

The resampling runs in the input's dtype (fp32): under bf16 autocast only the localisation network's
convolutions and linear layers drop to bf16, and the predicted transform is cast back before sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gtsrb.models.pooling import AdaptiveMaxPool2d


class SpatialTransformer(nn.Module):
    def __init__(self, in_chans: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.localisation = nn.Sequential(
            nn.AvgPool2d(2),  # half resolution: where the sign is needs no fine detail
            nn.Conv2d(in_chans, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(inplace=True), AdaptiveMaxPool2d(4),
            nn.Flatten(), nn.Linear(32 * 4 * 4, hidden), nn.ReLU(inplace=True),
        )
        self.theta = nn.Linear(hidden, 6)
        nn.init.zeros_(self.theta.weight)
        with torch.no_grad():
            self.theta.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))  # the identity transform

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted affine transforms, [N, 2, 3], in ``affine_grid``'s normalised coordinates."""
        return self.theta(self.localisation(x)).view(-1, 2, 3).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.transform(x), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # grid_sample returns NCHW; the convolutions after it were set up for the input's layout (channels_last)
        return out.contiguous(memory_format=torch.channels_last) if _is_nhwc(x) else out


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
