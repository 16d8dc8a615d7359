"""Grad-CAM: it localises, it finds a layer in every configured model, it leaves the model as it was,
and the training callback writes its overlays without changing a single metric of the run."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from gtsrb.cli import CONF_DIR
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.errors import UserError
from gtsrb.explain.callback import GradCamCallback
from gtsrb.explain.gradcam import GradCAM, find_target_layer, to_input_frame
from gtsrb.explain.callback import diverse_indices
from gtsrb.models import build_model
from gtsrb.models.simple_cnn import SimpleCNN
from gtsrb.module import TrafficSignClassifier


pytestmark = pytest.mark.usefixtures("one_thread")


def _evidence_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images whose only class evidence is an 8x8 stripe patch (vertical: 0, horizontal: 1)
    in the middle of one random quadrant; returns normalised images, labels and a mask of that quadrant."""
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.6 + 0.2
    labels = torch.randint(0, 2, (n,), generator=g)
    quadrant = torch.randint(0, 4, (n,), generator=g)
    stripes = (torch.arange(8) % 2).float()
    mask = torch.zeros(n, 32, 32)
    for i in range(n):
        r, c = divmod(int(quadrant[i]), 2)
        patch = stripes[None, :].expand(8, 8) if labels[i] == 0 else stripes[:, None].expand(8, 8)
        x[i, :, r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12] = patch
        mask[i, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = 1
    return (x - 0.5) / 0.25, labels, mask


@pytest.fixture(scope="module")
def patch_model() -> tuple[SimpleCNN, torch.Generator]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SimpleCNN(num_classes=2, widths=(8, 16, 32), drop_rate=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        x, y, _ = _evidence_images(32, g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), g


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heat_map_mass_falls_in_the_region_that_holds_the_evidence(patch_model, method):
    model, g = patch_model
    x, y, mask = _evidence_images(32, g)
    assert (model(x).argmax(1) == y).float().mean() > 0.9  # the model did learn the patches
    heat = GradCAM(model, method=method)(x, y).heatmaps
    assert heat.shape == (32, 32, 32) and heat.min() >= 0 and heat.max() <= 1
    share = (heat * mask).flatten(1).sum(1) / heat.flatten(1).sum(1)
    assert share.mean() > 0.6  # the quadrant is 25 % of the image
    assert (share > 0.4).float().mean() > 0.9


def _model_names() -> list[str]:
    return [yaml.safe_load(p.read_text())["name"] for p in sorted((CONF_DIR / "model").glob("*.yaml"))]


@pytest.mark.parametrize("name", _model_names())
def test_target_layer_is_found_for_every_configured_model(name):
    model = build_model(name, num_classes=5).eval()
    layer_name, layer = find_target_layer(model)
    assert layer is model.get_submodule(layer_name)
    explained = GradCAM(model, method="gradcam++")(torch.randn(2, 3, 32, 32))
    assert explained.heatmaps.shape == (2, 32, 32) and torch.isfinite(explained.heatmaps).all()
    assert explained.logits.shape == (2, 5)


def _behind_a_fixed_transform(theta: list[float]) -> SimpleCNN:
    net = SimpleCNN(num_classes=2, widths=(8, 16), stn=True)
    with torch.no_grad():  # zero weights: every image gets the bias as its transform
        net.stn.theta.bias.copy_(torch.tensor(theta))
    return net.eval()


def test_heat_behind_a_spatial_transformer_is_moved_back_onto_the_input_pixels():
    images = torch.randn(2, 3, 32, 32)
    # output pixel (u, v) shows input pixel (u + 0.5, v) in normalised coordinates: a shift by 8 pixels
    shifted = _behind_a_fixed_transform([1.0, 0.0, 0.5, 0.0, 1.0, 0.0])
    peak = torch.zeros(2, 32, 32)
    peak[:, 15:17, 15:17] = 1.0  # heat at the centre of what the classifier saw
    moved = to_input_frame(shifted, images, peak)
    row, col = divmod(int(moved[0].argmax()), 32)
    assert 14 <= row <= 17 and 22 <= col <= 25  # the centre of what it saw is 8 pixels right of the input's
    # a 2x zoom on the centre: the whole of what it saw is the input's middle half; the rest gets no heat
    zoomed = to_input_frame(_behind_a_fixed_transform([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]), images, torch.ones(2, 32, 32))
    assert torch.allclose(zoomed[:, 9:23, 9:23], torch.ones(2, 14, 14), atol=1e-5)
    assert zoomed[:, :6].max() == 0 and zoomed[:, :, 26:].max() == 0
    # any other network's maps are left as they are
    assert torch.equal(to_input_frame(SimpleCNN(num_classes=2), images, peak), peak)


def test_target_layer_can_be_overridden_and_a_wrong_name_is_one_line():
    model = SimpleCNN(num_classes=3)
    assert GradCAM(model, target_layer="stages.1").layer is model.stages[1]
    with pytest.raises(UserError, match="no layer 'stages.9'.*stages.0, stages.1, stages.2"):
        GradCAM(model, target_layer="stages.9")
    with pytest.raises(UserError, match="unknown Grad-CAM method"):
        GradCAM(model, method="cam")


def test_explaining_leaves_modes_flags_grads_hooks_and_rng_as_they_were():
    model = SimpleCNN(num_classes=4, widths=(8, 16, 32))
    model.train()
    model.stages[0].eval()  # a frozen block in eval mode, as during fine-tuning
    for p in model.stages.parameters():
        p.requires_grad_(False)  # frozen backbone: Grad-CAM still needs activation gradients
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bn = model.stages[1][1]
    running = bn.running_mean.clone()
    rng = torch.get_rng_state()

    heat = GradCAM(model)(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))).heatmaps

    assert heat.amax() > 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.5))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert torch.equal(bn.running_mean, running)  # eval mode: BatchNorm statistics untouched
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_diverse_indices_cover_the_classes_before_repeating_any():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    picked = diverse_indices(labels, 6)
    assert sorted(labels[picked[:4]].tolist()) == [0, 1, 2, 3]
    assert len(set(picked)) == 6
    assert diverse_indices(labels, 6) == picked  # fixed across epochs


# --------------------------------------------------------------------------- the training callback


class Recorder(L.Callback):
    """Every epoch's logged metrics, as the run's history would show them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.rows.append({k: float(v) for k, v in sorted(trainer.callback_metrics.items())})


def _fit(cfg, root: Path, *extra: L.Callback) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Three epochs of a tiny run with dropout and random augmentation, so any RNG use would show."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = TrafficSignDataModule(cfg.data, cfg.augmentation, cfg.mixup, seed=cfg.seed)
    datamodule.setup("fit")
    model = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, datamodule.class_names)
    recorder = Recorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=3, limit_val_batches=2,
                        logger=TensorBoardLogger(str(root), name="tensorboard", version=""),
                        callbacks=[*extra, recorder], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(model, datamodule=datamodule)
    return recorder.rows, {k: v.clone() for k, v in model.state_dict().items()}


def test_callback_writes_overlays_and_leaves_the_run_identical(make_cfg, tmp_path):
    cfg = make_cfg("augmentation=standard", "model.drop_rate=0.5")
    plain_rows, plain_weights = _fit(cfg, tmp_path / "plain")
    callback = GradCamCallback(dirpath=str(tmp_path / "run" / "gradcam"), every_n_epochs=2, num_images=6,
                               num_misclassified=2, method="gradcam++")
    cam_rows, cam_weights = _fit(cfg, tmp_path / "run", callback)

    assert len(cam_rows) == 3 and cam_rows == plain_rows
    assert all(torch.equal(cam_weights[k], plain_weights[k]) for k in plain_weights)

    cam_dir = tmp_path / "run" / "gradcam"
    assert sorted(p.name for p in cam_dir.iterdir()) == ["epoch_001", "epoch_002"]  # every 2nd epoch and the end
    files = sorted(p.name for p in (cam_dir / "epoch_002").glob("*.png"))
    assert "grid.png" in files
    overlays = [f for f in files if f != "grid.png"]
    assert 6 <= len(overlays) <= 8
    assert all(re.fullmatch(r"\d\d_true-[a-z0-9-]+_pred-[a-z0-9-]+_conf[01]\.\d\d\.png", f) for f in overlays)
    assert any(f.split("_true-")[1].split("_pred-")[0] != f.split("_pred-")[1].split("_conf")[0]
               for f in overlays)  # misclassified examples are shown

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("gradcam")] == [1, 2]


def test_gradcam_callback_config_instantiates_next_to_the_defaults(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("callbacks=gradcam", "callbacks.gradcam.method=gradcam++")
    assert "checkpoint" in cfg.callbacks  # the default callbacks stay
    callback = instantiate(cfg.callbacks.gradcam)
    assert isinstance(callback, GradCamCallback) and callback.method == "gradcam++"
    assert callback.dirpath == Path(cfg.output_dir) / "gradcam"
