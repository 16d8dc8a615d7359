"""The batched augmentation path against the per-sample path and torchvision's functional ops.

Speed is measured in benchmarks/, not here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from gtsrb.classes import gtsrb_hflip_map
from gtsrb.config import AugmentationConfig
from gtsrb.data import batch_augment as B
from gtsrb.data.datamodule import AugmentedSamples, TrafficSignDataModule
from gtsrb.data.synthetic import make_synthetic
from numerics import EPS, assert_same_augmentation, augmentation_tolerance, rounding_tolerance, uint8_step

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
CONFIGS = ["light", "standard", "strong"]
ATOL = augmentation_tolerance(32, STD)  # float32 rounding of one 32 px augmentation, normalised
BLUR_ATOL = rounding_tolerance(1.0, roundings=18)  # nine weights times pixels <= 1, summed, in any order
_QUANTISING = [B.OPS.index(name) for name in ("posterize", "solarize", "equalize")]


def quantising(params: B.AugmentParams) -> torch.Tensor:
    """[n] bool: samples whose auto-augment ops round to uint8 levels or threshold (see assert_same_augmentation)."""
    if params.aa_ops is None:
        return torch.zeros(len(params.warp), dtype=torch.bool)
    return torch.isin(params.aa_ops, torch.tensor(_QUANTISING)).any(dim=1)


def aug_cfg(name: str | None = None, **values):
    cfg = OmegaConf.structured(AugmentationConfig)
    if name:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(f"conf/augmentation/{name}.yaml"))
    return OmegaConf.merge(cfg, values)


@pytest.fixture(scope="module")
def signs():
    return make_synthetic(2, 32, seed=3)  # 86 images, every class twice


def test_the_tolerance_is_far_below_one_uint8_step_and_above_float32_rounding():
    assert 100 * EPS < ATOL < uint8_step(STD) / 20


@pytest.mark.parametrize("name", [*CONFIGS, "randaugment"])
def test_same_parameters_give_the_same_images_batched_or_in_pieces(signs, name, threads):
    """The per-sample path (pieces of 1) and odd batch sizes give the batch's images, to float32 rounding."""
    aug = aug_cfg("strong", auto_augment="randaugment") if name == "randaugment" else aug_cfg(name)
    augment = B.BatchAugment(aug, MEAN, STD, gtsrb_hflip_map())
    params, labels = augment.sample(signs.labels, 32, generator=torch.Generator().manual_seed(0))
    batch = augment.apply(signs.images, params)
    assert batch.dtype == torch.float32 and torch.isfinite(batch).all()
    for piece in (1, 5, 17):
        pieces = torch.cat([augment.apply(signs.images[i:i + piece], params[i:i + piece])
                            for i in range(0, len(signs), piece)])
        assert_same_augmentation(pieces, batch, ATOL, quantising(params))


def test_a_sample_given_another_samples_parameters_fails_the_comparison(signs):
    """The comparison above has teeth: one sample's parameters shifted by one position are caught."""
    augment = B.BatchAugment(aug_cfg("standard"), MEAN, STD, gtsrb_hflip_map())
    params, _ = augment.sample(signs.labels, 32, generator=torch.Generator().manual_seed(0))
    batch = augment.apply(signs.images, params)
    wrong = batch.clone()
    wrong[3] = augment.apply(signs.images[3:4], params[4:5])[0]
    with pytest.raises(AssertionError, match="values differ"):
        assert_same_augmentation(wrong, batch, ATOL, quantising(params))


def test_per_sample_dataset_and_batched_path_draw_the_same_distribution(signs):
    """Both paths call the same sampler, so image statistics over many draws agree."""
    augment = B.BatchAugment(aug_cfg("strong"), MEAN, STD, gtsrb_hflip_map())
    image, label = signs.images[:1].expand(400, -1, -1, -1), signs.labels[:1].expand(400)
    torch.manual_seed(0)
    batched, _ = augment(image, label)
    dataset = AugmentedSamples(type(signs)(image.contiguous(), label.contiguous()), augment)
    torch.manual_seed(1)
    single = torch.stack([dataset[i][0] for i in range(400)])
    for stat in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3))):
        a, b = stat(batched), stat(single)
        assert abs(a.mean() - b.mean()) < 4 * (a.std() + b.std()) / 400 ** 0.5
        assert 0.7 < a.std() / b.std() < 1.4


def test_label_safe_flip_mirrors_exactly_and_remaps_labels(signs):
    augment = B.BatchAugment(aug_cfg(hflip="label_safe"), MEAN, STD, gtsrb_hflip_map())
    params, labels = augment.sample(signs.labels, 32, generator=torch.Generator().manual_seed(1))
    out = augment.apply(signs.images, params)
    flip_map = torch.tensor(gtsrb_hflip_map())
    assert params.flip.any() and not params.flip.all()
    assert not params.flip[flip_map[signs.labels] < 0].any()  # a mirrored stop sign is no sign
    torch.testing.assert_close(labels, torch.where(params.flip, flip_map[signs.labels], signs.labels))
    plain = B.normalize(B.to_float(signs.images), MEAN, STD)
    expected = torch.where(params.flip.view(-1, 1, 1, 1), plain.flip(-1), plain)
    # a mirror samples exact pixel centres with weights 0 and 1: only normalisation rounds
    torch.testing.assert_close(out, expected, atol=rounding_tolerance(1 / min(STD), roundings=4), rtol=0)


def test_label_safe_without_a_map_never_flips_and_any_flips_everything_keeping_labels(signs):
    none = B.BatchAugment(aug_cfg(hflip="label_safe"), MEAN, STD, None)
    params, labels = none.sample(signs.labels, 32)
    assert params.warp is None and torch.equal(labels, signs.labels)
    anything = B.BatchAugment(aug_cfg(hflip="any"), MEAN, STD, gtsrb_hflip_map())
    params, labels = anything.sample(signs.labels.repeat(10), 32)
    assert torch.equal(labels, signs.labels.repeat(10)) and 0.3 < params.flip.float().mean() < 0.7


def test_affine_follows_torchvision_conventions(signs):
    """Our warp matrix is torchvision's: the same angle/translate/scale/shear give the same image."""
    x = B.to_float(signs.images[:4])
    angle, tx, ty, scale, shear = 17.0, 3.0, -2.0, 1.1, 8.0
    inverse = B._affine_inverse(*(torch.full((4,), v) for v in (angle, tx, ty, scale, shear, 0.0)))
    ours = B.warp_images(x, inverse)
    theirs = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[shear, 0.0],
                       interpolation=InterpolationMode.BILINEAR)
    # the two grids are computed in different orders: coordinates up to 32 px, about ten roundings, slope <= 1
    torch.testing.assert_close(ours, theirs, atol=rounding_tolerance(32, roundings=10), rtol=0)


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda x: B.adjust_brightness(x, torch.full((len(x),), 1.4)), lambda x: TF.adjust_brightness(x, 1.4)),
    (lambda x: B.adjust_contrast(x, torch.full((len(x),), 0.6)), lambda x: torch.stack([TF.adjust_contrast(i, 0.6) for i in x])),
    (lambda x: B.adjust_saturation(x, torch.full((len(x),), 1.5)), lambda x: TF.adjust_saturation(x, 1.5)),
    (lambda x: B.adjust_sharpness(x, torch.full((len(x),), 1.8)), lambda x: TF.adjust_sharpness(x, 1.8)),
    (lambda x: B.solarize(x, torch.full((len(x),), 0.6)), lambda x: TF.solarize(x, 0.6)),
    (lambda x: B.posterize(x, torch.full((len(x),), 3.0)), lambda x: TF.posterize((x * 255).round().to(torch.uint8), 3) / 255),
    (B.autocontrast, TF.autocontrast),
    (B.equalize, lambda x: TF.equalize((x * 255).round().to(torch.uint8)) / 255),
])
def test_colour_ops_match_torchvision(signs, ours, theirs):
    """Within half a uint8 level: some of torchvision's ops run on uint8 and round where ours stay in float."""
    x = B.to_float(signs.images[:8])
    torch.testing.assert_close(ours(x), theirs(x).float(), atol=0.5 / 255, rtol=0)


def test_blur_matches_torchvision_gaussian_blur(signs):
    x = B.to_float(signs.images[:4])
    ours = B.gaussian_blur3(x, torch.tensor([0.7, 0.7, 0.0, 0.7]))
    theirs = TF.gaussian_blur(x, [3, 3], [0.7, 0.7])
    torch.testing.assert_close(ours[[0, 1, 3]], theirs[[0, 1, 3]], atol=BLUR_ATOL, rtol=0)
    torch.testing.assert_close(ours[2], x[2])  # sigma 0: unchanged


def test_erasing_fills_one_box_with_the_mean_colour(signs):
    x = torch.ones(2, 3, 32, 32)
    out = B.erase(x, torch.tensor([[2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 9.0]]))
    assert (out[0] == 0).sum() == 3 * 4 * 5 and out[0, :, 2:6, 3:8].eq(0).all()
    assert torch.equal(out[1], x[1])


def test_datamodule_batched_path_feeds_uint8_and_augments_after_transfer():
    dm = TrafficSignDataModule({"source": "synthetic", "train_per_class": 2, "val_per_class": 1, "test_per_class": 0,
                                "batch_size": 16}, aug_cfg("standard"))
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32)
    augmented, new_labels = dm.augment_batch(images, labels)
    assert augmented.dtype == torch.float32 and augmented.shape == images.shape and len(new_labels) == 16
    val_images, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val_images, B.normalize(B.to_float(dm.splits["val"].images[:16]), dm.cfg.mean, dm.cfg.std))


def test_datamodule_per_sample_path_gives_normalised_float_batches():
    dm = TrafficSignDataModule({"source": "synthetic", "train_per_class": 2, "val_per_class": 1, "test_per_class": 0,
                                "batch_size": 16, "augment_on": "sample"}, aug_cfg("strong"))
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    val_images, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val_images, B.normalize(B.to_float(dm.splits["val"].images[:16]), dm.cfg.mean, dm.cfg.std))


@pytest.mark.parametrize("method", ["autocontrast", "equalize", "clahe"])
def test_preprocessing_keeps_shape_and_lifts_dark_images(method):
    from gtsrb.data.preprocess import preprocess_images

    dark = (make_synthetic(1, 32, seed=0, num_classes=4).images // 6)  # a badly underexposed sign
    out = preprocess_images(dark, method)
    assert out.dtype == torch.uint8 and out.shape == dark.shape
    assert out.float().std() > 2 * dark.float().std()


# --------------------------------------------------------------------------- pinned behaviour of the fast paths
# apply_params and the ops below are tuned for speed (in-place arithmetic, blurring only the samples that are
# blurred, a coordinate-major warp grid); these tests hold them to plain formulas written out here.


def _random_batch(n=6, h=9, w=11, seed=0):
    """Float images with a different height and width, so that swapped axes show."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _separable_gaussian3(image, sigma):
    """GaussianBlur(3): kernel exp(-d^2 / 2 sigma^2) for d in -1, 0, 1, normalised; reflect padding."""
    k = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * sigma ** 2))
    k = k / k.sum()
    padded = torch.nn.functional.pad(image[None], (1, 1, 1, 1), mode="reflect")
    return torch.nn.functional.conv2d(padded, torch.outer(k, k).expand(3, 1, 3, 3), groups=3)[0]


@pytest.mark.parametrize("sigma", [[0.0, 0.5, 0.0, 1.0, 0.3, 0.0], [0.0] * 6, [0.2, 0.4, 0.6, 0.8, 1.0, 0.1]],
                         ids=["some", "none", "all"])
def test_blur_changes_only_samples_with_sigma_and_those_as_a_direct_gaussian(sigma, threads):
    x = _random_batch()
    before = x.clone()
    sigma = torch.tensor(sigma)
    out = B.gaussian_blur3(x, sigma)
    assert torch.equal(x, before)  # the public op leaves its input alone
    full_batch = B._blur3(x, sigma)  # what runs on an accelerator: every sample through the kernel
    for i, s in enumerate(sigma.tolist()):
        if s == 0:
            assert torch.equal(out[i], x[i]) and torch.equal(full_batch[i], x[i])
        else:
            expected = _separable_gaussian3(x[i], s)
            torch.testing.assert_close(out[i], expected, atol=BLUR_ATOL, rtol=0)
            torch.testing.assert_close(full_batch[i], expected, atol=BLUR_ATOL, rtol=0)


def _bilinear_homography(image, inverse):
    """Output pixel centre (origin at the image centre) -> ``inverse`` -> input, bilinear, zero outside."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    src = torch.einsum("ij,jhw->ihw", inverse.double(), torch.stack([xs, ys, torch.ones_like(xs)]).double())
    px, py = src[0] / src[2] + w / 2 - 0.5, src[1] / src[2] + h / 2 - 0.5  # input pixel indices
    x0, y0 = px.floor().long(), py.floor().long()
    out = torch.zeros(image.shape, dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += torch.where(inside, weight, 0.0) * image.double()[:, yi.clamp(0, h - 1), xi.clamp(0, w - 1)]
    return out.float()


def test_warp_is_bilinear_sampling_through_each_samples_homography(threads):
    x = _random_batch(3)
    atol = rounding_tolerance(max(x.shape[-2:]), roundings=10)  # coordinates up to 11 px; slope <= 1 per px
    inverse = torch.eye(3).repeat(3, 1, 1)
    inverse[1, :2, 2] = torch.tensor([2.0, -3.0])  # a whole-pixel shift
    inverse[2] = torch.tensor([[0.9, 0.2, 0.7], [-0.1, 1.1, -0.4], [0.02, -0.03, 1.0]])  # a perspective
    out = B.warp_images(x, inverse)
    torch.testing.assert_close(out[0], x[0], atol=atol, rtol=0)
    shifted = torch.zeros_like(x[1])
    shifted[:, 3:, :-2] = x[1][:, :-3, 2:]  # output pixel (row r, column c) reads input (r - 3, c + 2)
    torch.testing.assert_close(out[1], shifted, atol=atol, rtol=0)
    for i in range(3):
        torch.testing.assert_close(out[i], _bilinear_homography(x[i], inverse[i]), atol=atol, rtol=0)


def test_colour_jitter_ops_are_torchvisions_per_image_to_float_precision(threads):
    """Per-sample factors, each image against torchvision's float formula (tighter than the op table above)."""
    x = _random_batch(5)
    factor = torch.tensor([0.0, 0.7, 1.0, 1.3, 2.0])
    for ours, theirs in [(B.adjust_brightness, TF.adjust_brightness), (B.adjust_contrast, TF.adjust_contrast),
                         (B.adjust_saturation, TF.adjust_saturation)]:
        before = x.clone()
        out = ours(x, factor)
        assert torch.equal(x, before)
        for i, f in enumerate(factor.tolist()):
            # a blend rounds about four times on values up to 2 (factor 2 times a pixel <= 1)
            torch.testing.assert_close(out[i], theirs(x[i], f), atol=rounding_tolerance(2.0, roundings=4), rtol=0)


def test_public_ops_leave_their_input_alone():
    x = _random_batch(4)
    before = x.clone()
    f = torch.tensor([0.5, 1.2, 0.9, 1.6])
    B.adjust_hue(x, torch.tensor([0.02, -0.02, 0.0, 0.01]))
    B.adjust_sharpness(x, f)
    B.normalize(x, MEAN, STD)
    B.erase(x, torch.tensor([[1.0, 1.0, 3.0, 3.0]]).expand(4, 4))
    assert torch.equal(x, before)


def _chain(images, params, mean, std):
    """apply_params written out with the public ops, one sample at a time, auto-augment op by op."""
    public = {"brightness": lambda x, m: B.adjust_brightness(x, 1 + m),
              "color": lambda x, m: B.adjust_saturation(x, 1 + m),
              "contrast": lambda x, m: B.adjust_contrast(x, 1 + m),
              "sharpness": lambda x, m: B.adjust_sharpness(x, 1 + m),
              "posterize": lambda x, m: B.posterize(x, 8 - m), "solarize": lambda x, m: B.solarize(x, 1 - m),
              "autocontrast": lambda x, m: B.autocontrast(x), "equalize": lambda x, m: B.equalize(x)}
    out = []
    for i in range(len(images)):
        p = params[i:i + 1]
        x = images[i:i + 1].float() / 255
        x = B.warp_images(x, p.warp)
        x = B.adjust_brightness(x, p.brightness)
        x = B.adjust_contrast(x, p.contrast)
        x = B.adjust_saturation(x, p.saturation)
        x = B.adjust_hue(x, p.hue)
        x = B.gaussian_blur3(x, p.blur_sigma)
        if p.aa_ops is not None:
            for op, m in zip(p.aa_ops[0].tolist(), p.aa_magnitudes[0]):
                if B.OPS[op] in public:
                    x = public[B.OPS[op]](x, m.view(1))
        x = B.normalize(x, mean, std)
        if p.erase is not None:
            x = B.erase(x, p.erase)
        out.append(x[0])
    return torch.stack(out)


@pytest.mark.parametrize("name", ["standard", "strong"])
def test_apply_params_is_the_chain_of_public_ops_and_leaves_the_batch_alone(signs, name, threads):
    augment = B.BatchAugment(aug_cfg(name), MEAN, STD, gtsrb_hflip_map())
    images = signs.images[:24]
    params, _ = augment.sample(signs.labels[:24], 32, generator=torch.Generator().manual_seed(2))
    assert 0 < (params.blur_sigma > 0).sum() < 24  # some samples blurred, some not
    before = images.clone()
    out = augment.apply(images, params)
    assert torch.equal(images, before)  # a copy: exact
    assert_same_augmentation(out, _chain(images, params, MEAN, STD), ATOL, quantising(params))


def test_apply_params_without_ops_only_normalises_and_never_writes_to_a_float_input(signs):
    images = signs.images[:8]
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(B.apply_params(images, B.AugmentParams(), MEAN, STD), expected,
                               atol=rounding_tolerance(1 / min(STD), roundings=4), rtol=0)
    floats = images.float() / 255  # to_float makes no copy of a float32 batch
    before = floats.clone()
    params = B.AugmentParams(brightness=torch.full((8,), 1.5), contrast=torch.full((8,), 0.5),
                             blur_sigma=torch.full((8,), 0.8), erase=torch.tensor([[1.0, 1.0, 4.0, 4.0]]).expand(8, 4))
    B.apply_params(floats, params, MEAN, STD)
    B.apply_params(floats, B.AugmentParams(), MEAN, STD)
    assert torch.equal(floats, before)


@pytest.mark.parametrize("name", CONFIGS)
def test_batch_augment_draws_what_sample_params_draws_from_the_config(signs, name):
    """BatchAugment samples from a plain copy of its config; the draws must be those of the config itself."""
    aug = aug_cfg(name, auto_augment="randaugment") if name == "strong" else aug_cfg(name)
    augment = B.BatchAugment(aug, MEAN, STD, gtsrb_hflip_map())
    ours, our_labels = augment.sample(signs.labels, 32, generator=torch.Generator().manual_seed(5))
    theirs, their_labels = B.sample_params(aug, signs.labels, 32, torch.tensor(gtsrb_hflip_map()),
                                           generator=torch.Generator().manual_seed(5))
    assert torch.equal(our_labels, their_labels)
    for field in dataclasses.fields(B.AugmentParams):
        a, b = getattr(ours, field.name), getattr(theirs, field.name)
        assert (a is None and b is None) or torch.equal(a, b), field.name
