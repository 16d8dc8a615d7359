"""Model construction: backbone/head split for every configured model, local weights, offline errors."""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

from gtsrb.cli import CONF_DIR, group_options
from gtsrb.errors import UserError
from gtsrb.models import build_model, parameter_blocks


@pytest.mark.parametrize("option", group_options("model"))
def test_blocks_and_head_cover_every_parameter_once(option):
    name = OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml").name
    model = build_model(name, num_classes=43)
    blocks, head = parameter_blocks(model)
    listed = [p for block in blocks for m in block for p in m.parameters(recurse=False)]
    listed += [p for m in head for p in m.parameters(recurse=False)]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert len(blocks) == len(model.feature_info) and all(blocks)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 43)


def test_local_weights_file_replaces_the_download(mobilenet_weights):
    model = build_model("mobilenetv3_small_100", num_classes=43, weights=str(mobilenet_weights))
    saved = torch.load(mobilenet_weights)
    state = model.state_dict()
    assert torch.equal(state["conv_stem.weight"], saved["conv_stem.weight"])
    assert torch.equal(state["bn1.running_mean"], saved["bn1.running_mean"])
    assert state["classifier.weight"].shape == (43, saved["classifier.weight"].shape[1])  # a fresh 43-way head


def test_weights_of_another_model_are_a_one_line_error(mobilenet_weights):
    with pytest.raises(UserError, match="model.weights") as info:
        build_model("resnet18", num_classes=43, weights=str(mobilenet_weights))
    assert "\n" not in str(info.value)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model("resnet18", num_classes=43, weights=str(tmp_path / "nope.safetensors"))


def test_offline_download_names_both_ways_out():
    with pytest.raises(UserError) as info:  # HF_HUB_OFFLINE=1 (conftest): fails without waiting for retries
        build_model("resnet18", num_classes=43, pretrained=True)
    message = str(info.value)
    assert "model.pretrained=false" in message and "model.weights=" in message and "\n" not in message


def test_unknown_timm_name_is_a_user_error():
    assert not timm.is_model("resnet_9000")
    with pytest.raises(UserError, match="resnet_9000"):
        build_model("resnet_9000", num_classes=43)


@pytest.mark.parametrize("multiscale", [False, True])
def test_multiscale_features_reach_the_classifier_past_the_last_stage(multiscale):
    # With the last stage's convolutions zeroed its output no longer depends on the image, so only the
    # multi-scale model's classifier, which also sees the first two stages, can still tell two images apart.
    model = build_model("simple_cnn_stn_ms" if multiscale else "simple_cnn_stn", num_classes=5).eval()
    for module in model.stages[-1].modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.zeros_(module.weight)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    features = model.forward_features(images)
    assert features.shape == (2, 224 if multiscale else 128, 5, 5)
    logits = model(images)
    assert torch.allclose(logits, model.forward_head(features))
    assert torch.allclose(logits[0], logits[1], atol=1e-5) != multiscale


@pytest.mark.parametrize(("name", "head_grid"), [("simple_cnn_stn", 1), ("simple_cnn_stn_grid", 4)])
def test_a_gridded_head_tells_where_a_feature_fired(name, head_grid):
    # Global average pooling (head_grid=1) sees only which features fired, so a last map and its mirror image
    # score alike; a 4x4 grid keeps the layout and tells them apart (keep left and keep right are mirror images).
    model = build_model(name, num_classes=5).eval()
    assert model.get_classifier().in_features == 128 * head_grid ** 2
    features = torch.rand(1, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    logits = model.forward_head(torch.cat([features, features.flip(-1)]))
    assert torch.allclose(logits[0], logits[1], atol=1e-5) == (head_grid == 1)
    model.reset_classifier(7)
    assert model(torch.rand(2, 3, 40, 40)).shape == (2, 7)  # any input size: the grid is pooled to, not assumed


def test_model_kwargs_reach_the_network_and_its_checkpoint_rebuilds_it(make_cfg, tmp_path):
    """``+model.kwargs.widths`` widens simple_cnn, and a checkpoint of the wider network loads back as itself,
    because the kwargs travel in its hyperparameters."""
    from gtsrb.checkpoint import load_classifier
    from gtsrb.module import TrafficSignClassifier

    cfg = make_cfg("model=simple_cnn", "+model.kwargs.widths=[8,16,24]")
    module = TrafficSignClassifier(cfg.model, cfg.optimizer, cfg.scheduler, [f"c{i}" for i in range(5)]).eval()
    assert [info["num_chs"] for info in module.model.feature_info] == [8, 16, 24]
    assert module.model.get_classifier().in_features == 24
    path = tmp_path / "wide.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    loaded = load_classifier(path)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(images), module(images))


def test_model_kwargs_override_what_the_model_name_sets():
    model = build_model("resnet_gtsrb_s", num_classes=43, kwargs={"widths": [8, 16, 24, 32]})
    assert [info["num_chs"] for info in model.feature_info] == [8, 16, 24, 32]


def test_model_kwargs_reach_a_timm_model():
    from timm.layers import DropPath

    def drop_probs(model):
        return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]

    assert drop_probs(build_model("resnet18", num_classes=43)) == []
    deeper = build_model("resnet18", num_classes=43, kwargs={"drop_path_rate": 0.1})
    assert max(drop_probs(deeper)) == pytest.approx(0.1)


@pytest.mark.parametrize(("name", "kwargs", "named"), [
    ("simple_cnn", {"widht": [8, 16]}, "model.kwargs.widht=[8, 16]"),  # misspelt: not silently dropped
    ("simple_cnn", {"widths": 5}, "model.kwargs.widths=5"),
    ("resnet18", {"foo": 1}, "model.kwargs.foo=1"),
    ("simple_cnn", {"widths": []}, "model.kwargs.widths=[]"),  # builds, then cannot classify
    ("resnet18", {"global_pool": ""}, "model.kwargs.global_pool="),
    ("simple_cnn", {"in_chans": 1}, "model.kwargs.in_chans is set by the images' 3 RGB channels"),
    ("simple_cnn", {"drop_rate": 0.5}, "model.kwargs.drop_rate is set by model.drop_rate"),
    ("resnet18", {"num_classes": 3}, "model.kwargs.num_classes is set by the data's classes"),
])
def test_model_kwargs_the_network_cannot_take_are_one_line_errors(name, kwargs, named):
    with pytest.raises(UserError) as info:
        build_model(name, num_classes=43, kwargs=kwargs)
    assert named in str(info.value) and "\n" not in str(info.value)
