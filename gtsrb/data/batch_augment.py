"""Augmentation of whole batches with per-sample random parameters, on whatever device the batch is on.

Why: a per-sample pipeline runs Python (and, for PIL, a decode/convert) for
every image of every epoch; on a 2-core CPU that competes with the training
step, and on a GPU it leaves the accelerator idle. Here a batch of uint8
images is augmented by a handful of tensor operations: every sample still
gets its own random pose, lighting, blur, auto-augment ops and erasing, drawn
as tensors.

How it is split up, so both data paths give the same result:

* :func:`sample_params` draws the random parameters of ``n`` samples into an
  :class:`AugmentParams` (and remaps the labels of flipped samples).
* :func:`apply_params` applies them: one warp, then colour, blur, auto-augment
  colour ops, normalisation and erasing.

The batched path calls both on the whole batch (``on_after_batch_transfer``);
the per-sample path (``data.augment_on=sample``, for data loaded lazily)
calls them with ``n=1`` per image. Applying the parameters of sample ``i``
alone gives the same image as row ``i`` of the batch, to float32 rounding:
the sampling grid is a matrix product, whose kernel (and so its rounding)
depends on the batch size, the thread count and the CPU. Ops that round to
uint8 levels or threshold (posterize, equalize, solarize) can turn such a
last-bit difference into a one-level step in a few pixels.

Every geometric change (label-safe flip, affine, perspective, auto-augment's
shear/translate/rotate) is composed into one homography per sample, so each
image is resampled once (bilinear, black fill), not once per op.

Differences from the torchvision v2 transforms of ``conf/augmentation`` that
they replace (ranges and probabilities are the same): colour jitter applies
brightness, contrast, saturation, hue in this fixed order (torchvision
shuffles it); hue is a rotation in YIQ space (close to an HSV hue shift for
the small shifts allowed here); translations and perspective corners are
continuous, not whole pixels; auto-augment's shears turn about the centre.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gtsrb.config import AugmentationConfig

# --------------------------------------------------------------------------- auto-augment op table

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_GEOMETRIC = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
_SIGNED = _GEOMETRIC | {"brightness", "color", "contrast", "sharpness"}
_NUM_BINS = 31  # torchvision's magnitude bins

# Largest magnitude of each op (translate as a share of the image width). Both
# policies use RandAugment's gentle geometry: TrivialAugmentWide's 135 degree
# rotations would turn "keep right" into "keep left".
_POLICIES = {
    "trivialaugment": dict(num_ops=1, bin=None, max={"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331,
                                                     "translate_y": 150 / 331, "rotate": 30.0, "brightness": 0.99,
                                                     "color": 0.99, "contrast": 0.99, "sharpness": 0.99,
                                                     "posterize": 6.0, "solarize": 1.0}),
    "randaugment": dict(num_ops=2, bin=9, max={"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331,
                                               "translate_y": 150 / 331, "rotate": 30.0, "brightness": 0.9,
                                               "color": 0.9, "contrast": 0.9, "sharpness": 0.9,
                                               "posterize": 4.0, "solarize": 1.0}),
}


@dataclass
class AugmentParams:
    """Random parameters of ``n`` samples; ``None`` where an op is switched off.

    ``warp`` maps output pixel coordinates (origin at the image centre) to
    input coordinates, as grid sampling needs it.
    """

    warp: torch.Tensor | None = None  # [n, 3, 3]
    brightness: torch.Tensor | None = None  # [n] factors, 1 = unchanged
    contrast: torch.Tensor | None = None
    saturation: torch.Tensor | None = None
    hue: torch.Tensor | None = None  # [n] share of a full turn
    blur_sigma: torch.Tensor | None = None  # [n], 0 = no blur
    aa_ops: torch.Tensor | None = None  # [n, k] indices into OPS
    aa_magnitudes: torch.Tensor | None = None  # [n, k], signed
    erase: torch.Tensor | None = None  # [n, 4] top, left, height, width in pixels; height 0 = no erasing
    flip: torch.Tensor | None = None  # [n] bool, only kept for inspection (the flip is in ``warp``)

    def __getitem__(self, index) -> "AugmentParams":
        """Parameters of a subset of samples (``params[i:i+1]`` for one sample)."""
        return replace(self, **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                                for f in fields(self)})


# --------------------------------------------------------------------------- sampling


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _affine_inverse(angle, tx, ty, scale, shear_x, shear_y) -> torch.Tensor:
    """torchvision's inverse affine matrix (``_get_inverse_affine_matrix``, centre 0), batched; degrees, pixels."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m = torch.zeros(len(angle), 3, 3, device=angle.device, dtype=angle.dtype)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = d / scale, -b / scale, -c / scale, a / scale
    m[:, 0, 2] = -(m[:, 0, 0] * tx + m[:, 0, 1] * ty)
    m[:, 1, 2] = -(m[:, 1, 0] * tx + m[:, 1, 1] * ty)
    m[:, 2, 2] = 1.0
    return m


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """3x3 matrices mapping the 4 points ``src`` [n, 4, 2] onto ``dst`` (direct linear transform)."""
    n = len(src)
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # [n, 8, 8]
    b = torch.cat([u, v], dim=1).unsqueeze(-1)
    h = torch.linalg.solve(a.double(), b.double()).squeeze(-1).to(src.dtype)
    return torch.cat([h, torch.ones(n, 1, device=src.device, dtype=src.dtype)], dim=1).view(n, 3, 3)


def _perspective_inverse(n: int, size: int, distortion: float, generator, device) -> torch.Tensor:
    """RandomPerspective's corner jitter: each corner moves inwards by up to ``distortion`` x half the size."""
    half = (size - 1) / 2  # corner pixel centres, origin at the image centre
    corners = torch.tensor([[-half, -half], [half, -half], [half, half], [-half, half]], device=device)
    inward = -corners.sign()
    shift = torch.rand(n, 4, 2, generator=generator, device=device) * (distortion * (size // 2))
    moved = corners + inward * shift
    return _homography(moved, corners.expand(n, 4, 2))  # output (moved) -> input (corners)


def _auto_augment(policy: str, n: int, size: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Op indices [n, k] and signed magnitudes [n, k] of TrivialAugment or RandAugment."""
    spec = _POLICIES[policy]
    k = spec["num_ops"]
    ops = torch.randint(len(OPS), (n, k), generator=generator, device=device)
    if spec["bin"] is None:
        bins = torch.randint(_NUM_BINS, (n, k), generator=generator, device=device)
    else:
        bins = torch.full((n, k), spec["bin"], device=device)
    maxima = torch.tensor([spec["max"].get(op, 0.0) * (size if op.startswith("translate") else 1.0) for op in OPS],
                          device=device)
    magnitude = maxima[ops] * bins.float() / (_NUM_BINS - 1)
    signed = torch.tensor([op in _SIGNED for op in OPS], device=device)[ops]
    sign = torch.where(torch.rand(n, k, generator=generator, device=device) < 0.5, -1.0, 1.0)
    return ops, torch.where(signed, magnitude * sign, magnitude)


def _auto_augment_warp(ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """The geometric auto-augment ops of each sample, as one inverse matrix [n, 3, 3]."""
    n = len(ops)
    total = torch.eye(3, device=ops.device).expand(n, 3, 3)
    zero, one = torch.zeros(n, device=ops.device), torch.ones(n, device=ops.device)
    for j in range(ops.shape[1]):
        op, m = ops[:, j], magnitudes[:, j]

        def pick(name):
            return torch.where(op == OPS.index(name), m, zero)

        shear_x = torch.rad2deg(torch.atan(pick("shear_x")))
        shear_y = torch.rad2deg(torch.atan(pick("shear_y")))
        step = _affine_inverse(pick("rotate"), pick("translate_x"), pick("translate_y"), one, shear_x, shear_y)
        total = total @ step  # a later op acts on the output of earlier ones: its inverse is applied first
    return total


def sample_params(aug: AugmentationConfig, labels: torch.Tensor, size: int, flip_map: torch.Tensor | None,
                  generator: torch.Generator | None = None) -> tuple[AugmentParams, torch.Tensor]:
    """Draw parameters for ``len(labels)`` samples of ``size`` x ``size`` pixels; returns them and the new labels.

    ``flip_map`` (:func:`gtsrb.classes.gtsrb_hflip_map`) gives the label after
    a mirror flip, or -1 where the mirror image is no sign.
    """
    n, device = len(labels), labels.device
    params = AugmentParams()

    flip_ok = None
    if aug.hflip == "any":
        flip_ok, flipped_label = torch.ones(n, dtype=torch.bool, device=device), labels
    elif aug.hflip == "label_safe" and flip_map is not None:
        flipped_label = flip_map.to(device)[labels]
        flip_ok = flipped_label >= 0
    warps = []
    if flip_ok is not None:
        params.flip = flip_ok & (torch.rand(n, generator=generator, device=device) < 0.5)
        labels = torch.where(params.flip, flipped_label, labels)
        mirror = torch.eye(3, device=device).repeat(n, 1, 1)
        mirror[:, 0, 0] = torch.where(params.flip, -1.0, 1.0)
        warps.append(mirror)
    if aug.rotation or aug.translate or aug.shear or tuple(aug.scale) != (1.0, 1.0):
        zero = torch.zeros(n, device=device)
        angle = _uniform(n, -aug.rotation, aug.rotation, generator, device)
        tx = _uniform(n, -aug.translate * size, aug.translate * size, generator, device)
        ty = _uniform(n, -aug.translate * size, aug.translate * size, generator, device)
        scale = _uniform(n, aug.scale[0], aug.scale[1], generator, device)
        shear = _uniform(n, -aug.shear, aug.shear, generator, device)
        warps.append(_affine_inverse(angle, tx, ty, scale, shear, zero))
    if aug.perspective:
        inverse = _perspective_inverse(n, size, aug.perspective, generator, device)
        applied = torch.rand(n, generator=generator, device=device) < 0.5  # torchvision's p=0.5
        warps.append(torch.where(applied[:, None, None], inverse, torch.eye(3, device=device)))
    if aug.brightness:
        params.brightness = _uniform(n, max(0.0, 1 - aug.brightness), 1 + aug.brightness, generator, device)
    if aug.contrast:
        params.contrast = _uniform(n, max(0.0, 1 - aug.contrast), 1 + aug.contrast, generator, device)
    if aug.saturation:
        params.saturation = _uniform(n, max(0.0, 1 - aug.saturation), 1 + aug.saturation, generator, device)
    if aug.hue:
        params.hue = _uniform(n, -aug.hue, aug.hue, generator, device)
    if aug.blur:
        sigma = _uniform(n, 0.1, 1.0, generator, device)
        applied = torch.rand(n, generator=generator, device=device) < aug.blur
        params.blur_sigma = torch.where(applied, sigma, torch.zeros_like(sigma))
    if aug.auto_augment:
        params.aa_ops, params.aa_magnitudes = _auto_augment(aug.auto_augment, n, size, generator, device)
        warps.append(_auto_augment_warp(params.aa_ops, params.aa_magnitudes))
    if aug.random_erasing:
        params.erase = _erase_boxes(n, size, aug.random_erasing, generator, device)
    if warps:
        # applied in list order, so the inverse (output -> input) multiplies the first op's inverse leftmost
        total = warps[0]
        for w in warps[1:]:
            total = total @ w
        params.warp = total
    return params, labels


def _erase_boxes(n: int, size: int, p: float, generator, device) -> torch.Tensor:
    """RandomErasing(scale=(0.02, 0.15), ratio=(0.3, 3.3)) boxes; a box too big is clipped instead of redrawn."""
    area = _uniform(n, 0.02, 0.15, generator, device) * size * size
    ratio = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), generator, device))
    h = torch.sqrt(area * ratio).round().clamp(1, size - 1)
    w = torch.sqrt(area / ratio).round().clamp(1, size - 1)
    top = (torch.rand(n, generator=generator, device=device) * (size - h + 1)).floor()
    left = (torch.rand(n, generator=generator, device=device) * (size - w + 1)).floor()
    applied = torch.rand(n, generator=generator, device=device) < p
    return torch.stack([top, left, torch.where(applied, h, torch.zeros_like(h)), w], dim=1)


# --------------------------------------------------------------------------- applying


@functools.lru_cache(maxsize=8)
def _pixel_centres(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Homogeneous pixel centres [3, h*w] (x, y, 1; origin at the image centre); cached, never written to.

    Built once per size: rebuilding it costs a tenth of warping one image in
    the per-sample path.
    """
    ys = torch.arange(h, device=device, dtype=dtype) + 0.5 - h / 2
    xs = torch.arange(w, device=device, dtype=dtype) + 0.5 - w / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten(), torch.ones(h * w, device=device, dtype=dtype)])


def warp_images(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample float images [n, C, H, W] through per-sample inverse homographies (bilinear, black fill).

    The sampling grid is built coordinate-major, [n, 2, H*W], and handed to
    ``grid_sample`` as a permuted view: computing it as [n, H*W, 2] (the
    layout ``grid_sample`` names) puts a dimension of 2 or 3 innermost, where
    every elementwise op crawls; on one CPU thread that cost several times
    the resampling itself. ``grid_sample`` reads the permuted view directly,
    and the grid values are the same.
    """
    n, _, h, w = x.shape
    mapped = inverse.to(x.dtype) @ _pixel_centres(h, w, x.device, x.dtype)  # [n, 3, h*w]: source x, y, w
    grid = mapped[:, :2].div_(mapped[:, 2:].clamp_min(1e-6))
    grid.div_(torch.tensor([w / 2, h / 2], device=x.device, dtype=x.dtype).view(1, 2, 1))
    return F.grid_sample(x, grid.view(n, 2, h, w).permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


# The colour ops below come in pairs: ``_op_(x, ...)`` overwrites ``x`` and
# returns it, ``op(x, ...)`` leaves its input alone. apply_params and
# auto-augment work on tensors they made themselves (the float copy of the
# uint8 batch, the warp's output, a gathered subset), so they call the
# in-place ops and skip an allocation and a pass over the batch per op. The
# in-place ops do the same arithmetic in the same order, so both give the
# same bits.


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


_GREY = (0.2989, 0.587, 0.114)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's luma, [n, 1, H, W] (accumulated in place: same sums, fewer temporaries)."""
    grey = x[:, 0] * _GREY[0]
    grey += x[:, 1] * _GREY[1]
    grey += x[:, 2] * _GREY[2]
    return grey.unsqueeze(1)


def _blend_(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` in place: factor * x + (1 - factor) * other, clipped; factor per sample."""
    f = _per_sample(factor)
    return x.mul_(f).add_((1 - f) * other).clamp_(0, 1)


def _adjust_brightness_(x, factor):
    return x.mul_(_per_sample(factor)).clamp_(0, 1)


def _adjust_contrast_(x, factor):
    """Blend with the mean luma of each image.

    The mean luma is taken as the luma of the channel means (the mean is
    linear): one reduction over the image instead of building the luma image
    first. It differs from the mean of the luma image by float rounding only
    (~1e-7).
    """
    means = x.mean(dim=(2, 3))  # [n, 3]
    grey = _GREY[0] * means[:, 0] + _GREY[1] * means[:, 1] + _GREY[2] * means[:, 2]
    return _blend_(x, _per_sample(grey), factor)


def _adjust_saturation_(x, factor):
    return _blend_(x, _grayscale(x), factor)


def adjust_brightness(x, factor):
    return _adjust_brightness_(x.clone(), factor)


def adjust_contrast(x, factor):
    return _adjust_contrast_(x.clone(), factor)


def adjust_saturation(x, factor):
    return _adjust_saturation_(x.clone(), factor)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def adjust_hue(x, shift):
    """Rotate the chroma plane (YIQ) by ``shift`` turns: brightness stays, colours move round the wheel."""
    yiq, rgb = _RGB_TO_YIQ.to(x.device, x.dtype), _YIQ_TO_RGB.to(x.device, x.dtype)
    angle = 2 * math.pi * shift.to(x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
    matrix = rgb @ rot @ yiq  # [n, 3, 3]
    return (matrix @ x.flatten(2)).view_as(x).clamp_(0, 1)


def _blur3(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur, separable, reflect padding; returns a new tensor (sigma 0: the same values as ``x``)."""
    side = torch.where(sigma > 0, torch.exp(-0.5 / sigma.clamp_min(1e-3) ** 2), torch.zeros_like(sigma))
    side = _per_sample(side / (1 + 2 * side)).to(x.dtype)
    centre = 1 - 2 * side
    p = F.pad(x, (1, 1, 0, 0), mode="reflect")
    x = (p[..., :-2] + p[..., 2:]).mul_(side).add_(centre * x)
    p = F.pad(x, (0, 0, 1, 1), mode="reflect")
    return (p[..., :-2, :] + p[..., 2:, :]).mul_(side).add_(centre * x)


def _gaussian_blur3_(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_blur3` writing into ``x``.

    On the CPU only the samples with sigma > 0 are blurred (gather, blur,
    scatter back): the configs blur a fifth of the samples, and blurring all
    of them cost as much as the warp. Each sample is blurred on its own, so
    the subset gets the same bits as a full-batch blur would. On an
    accelerator the whole batch is blurred instead: that is cheap there, and
    picking the subset would wait for the device.
    """
    if x.device.type != "cpu":
        return _blur3(x, sigma)
    index = torch.nonzero(sigma > 0).flatten()
    if len(index) == len(x):
        return _blur3(x, sigma)
    if len(index):
        x[index] = _blur3(x[index], sigma[index])
    return x


def gaussian_blur3(x, sigma):
    """3x3 Gaussian blur with a per-sample sigma (0 = unchanged), reflect padding, as GaussianBlur(3)."""
    return _gaussian_blur3_(x.clone(), sigma)


def adjust_sharpness(x, factor):
    """torchvision's sharpness: blend with a 3x3 smoothed copy whose border pixels are the originals."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    c = x.shape[1]
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend_(x.clone(), degenerate, factor)


def posterize(x, bits):
    """Keep the top ``bits`` bits of each 8-bit value, as torchvision does on uint8 images."""
    step = _per_sample(torch.pow(2.0, 8 - bits.round())).to(x.dtype)
    return torch.floor((x * 255).round() / step) * step / 255


def solarize(x, threshold):
    return torch.where(x >= _per_sample(threshold), 1.0 - x, x)


def autocontrast(x):
    """Stretch each channel of each image to the full range (constant channels are left alone)."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-6), x).clamp(0, 1)


def equalize(x):
    """Histogram equalisation of each channel of each image (torchvision's algorithm), batched."""
    n, c, h, w = x.shape
    q = (x * 255).round().long().clamp(0, 255).view(n, c, h * w)
    hist = torch.zeros(n, c, 256, device=x.device, dtype=torch.long).scatter_add_(2, q, torch.ones_like(q))
    last = hist.gather(2, q.amax(dim=2, keepdim=True))  # count of the brightest value present
    step = (h * w - last) // 255
    lut = (hist.cumsum(2) + step // 2) // step.clamp_min(1)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut[..., :-1]], dim=2).clamp(0, 255)
    out = lut.gather(2, q).to(x.dtype) / 255
    return torch.where(step > 0, out, q.to(x.dtype) / 255).view(n, c, h, w)


_COLOUR_OPS = {  # each is given a gathered copy, so may overwrite it
    "brightness": lambda x, m: _adjust_brightness_(x, 1 + m),
    "color": lambda x, m: _adjust_saturation_(x, 1 + m),
    "contrast": lambda x, m: _adjust_contrast_(x, 1 + m),
    "sharpness": lambda x, m: adjust_sharpness(x, 1 + m),
    "posterize": lambda x, m: posterize(x, 8 - m),
    "solarize": lambda x, m: solarize(x, 1 - m),
    "autocontrast": lambda x, m: autocontrast(x),
    "equalize": lambda x, m: equalize(x),
}


def _auto_augment_colour_(x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Colour ops of auto-augment, in order, written into ``x``; each sample takes its own op (the geometry is in
    the warp).

    Each op runs only on the samples that drew it (gather, compute, scatter
    back): computing all eight on the whole batch costs 8x more. Every op acts
    on each image independently, so a sample's result does not depend on the
    rest of the batch.
    """
    for j in range(ops.shape[1]):
        op, m = ops[:, j], magnitudes[:, j]
        for name, compute in _COLOUR_OPS.items():
            index = torch.nonzero(op == OPS.index(name)).flatten()
            if len(index):
                x[index] = compute(x[index], m[index])
    return x


def _erase_mask(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[n, 1, H, W]: inside each sample's box (top, left, height, width); height 0 leaves the sample alone."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left, bh, bw = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return inside.unsqueeze(1)


def erase(x: torch.Tensor, boxes: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Fill each sample's box (top, left, height, width) with ``value``; height 0 leaves the sample alone."""
    return x.masked_fill(_erase_mask(x, boxes), value)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _normalize_(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return _normalize_(x.clone(), mean, std)


def apply_params(images: torch.Tensor, params: AugmentParams, mean: Sequence[float],
                 std: Sequence[float]) -> torch.Tensor:
    """Augment uint8 (or [0, 1] float) images [n, 3, H, W] with ``params``; returns normalised float32.

    Order: geometry (one warp), colour jitter, blur, auto-augment colour ops,
    normalisation, then erasing with 0 (the mean colour), as RandomErasing
    after Normalize does.

    Every step after the first works in place on the float tensor made here
    (``images`` itself is never written to): a new tensor per op cost about
    as much as the arithmetic.
    """
    x = to_float(images)
    if params.warp is not None:
        x = warp_images(x, params.warp)
    elif x is images:  # float32 input: to_float made no copy
        x = x.clone()
    if params.brightness is not None:
        x = _adjust_brightness_(x, params.brightness)
    if params.contrast is not None:
        x = _adjust_contrast_(x, params.contrast)
    if params.saturation is not None:
        x = _adjust_saturation_(x, params.saturation)
    if params.hue is not None:
        x = adjust_hue(x, params.hue)
    if params.blur_sigma is not None:
        x = _gaussian_blur3_(x, params.blur_sigma)
    if params.aa_ops is not None:
        x = _auto_augment_colour_(x, params.aa_ops, params.aa_magnitudes)
    x = _normalize_(x, mean, std)
    if params.erase is not None:
        x = x.masked_fill_(_erase_mask(x, params.erase), 0.0)
    return x


class BatchAugment:
    """``conf/augmentation`` as a callable on (uint8 images, labels) -> (normalised float images, labels).

    Used on whole batches on the training device, and with one image at a time
    by the per-sample path; both give the same result for the same parameters.
    """

    def __init__(self, aug: AugmentationConfig, mean: Sequence[float], std: Sequence[float],
                 flip_map: Sequence[int] | None = None) -> None:
        self.aug, self.mean, self.std = aug, list(mean), list(std)
        self.flip_map = None if flip_map is None else torch.as_tensor(list(flip_map), dtype=torch.long)
        # A plain copy of the config for sampling: each read of an OmegaConf field costs ~10 us, and
        # sample_params reads about 35 of them, which was 40% of its time (and paid per image in the
        # per-sample path).
        self._sampling_cfg = SimpleNamespace(**OmegaConf.to_container(aug, resolve=True)) \
            if OmegaConf.is_config(aug) else aug

    def sample(self, labels: torch.Tensor, size: int,
               generator: torch.Generator | None = None) -> tuple[AugmentParams, torch.Tensor]:
        return sample_params(self._sampling_cfg, labels, size, self.flip_map, generator)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        return apply_params(images, params, self.mean, self.std)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with one_thread_on_cpu(images):
            params, labels = self.sample(labels, images.shape[-1], generator)
            return self.apply(images, params), labels


@contextlib.contextmanager
def one_thread_on_cpu(images: torch.Tensor):
    """Run the many small augmentation ops on one CPU thread.

    Each op is too small to gain from a second thread, and every parallel op
    ends in a thread barrier: when another process holds the other core, each
    barrier waits for a time slice. Measured on a shared 2-core CPU: 7 ms per
    batch of 128 on one thread against 220 ms on two (benchmarks/README.md).
    The training step itself keeps all threads.
    """
    threads = torch.get_num_threads()
    if images.is_cuda or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
