"""The batched augmentation path against the per-sample path and torchvision's functional ops.

Speed is measured in benchmarks/, not here.
"""

from __future__ import annotations

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

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
CONFIGS = ["light", "standard", "strong"]


def aug_cfg(name: str | None = None, **values):
    cfg = OmegaConf.structured(AugmentationConfig)
    if name:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(f"conf/augmentation/{name}.yaml"))
    return OmegaConf.merge(cfg, values)


@pytest.fixture(scope="module")
def signs():
    return make_synthetic(2, 32, seed=3)  # 86 images, every class twice


@pytest.mark.parametrize("name", [*CONFIGS, "randaugment"])
def test_same_parameters_give_identical_images_batched_or_one_by_one(signs, name):
    aug = aug_cfg("strong", auto_augment="randaugment") if name == "randaugment" else aug_cfg(name)
    augment = B.BatchAugment(aug, MEAN, STD, gtsrb_hflip_map())
    params, labels = augment.sample(signs.labels, 32, generator=torch.Generator().manual_seed(0))
    batch = augment.apply(signs.images, params)
    assert batch.dtype == torch.float32 and torch.isfinite(batch).all()
    for i in range(len(signs)):
        single = augment.apply(signs.images[i:i + 1], params[i:i + 1])
        torch.testing.assert_close(single[0], batch[i], atol=1e-5, rtol=0)


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
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


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
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


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
    x = B.to_float(signs.images[:8])
    torch.testing.assert_close(ours(x), theirs(x).float(), atol=2e-3, rtol=0)


def test_blur_matches_torchvision_gaussian_blur(signs):
    x = B.to_float(signs.images[:4])
    ours = B.gaussian_blur3(x, torch.tensor([0.7, 0.7, 0.0, 0.7]))
    theirs = TF.gaussian_blur(x, [3, 3], [0.7, 0.7])
    torch.testing.assert_close(ours[[0, 1, 3]], theirs[[0, 1, 3]], atol=1e-5, rtol=0)
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
