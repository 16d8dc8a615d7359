"""ONNX export: every conf/model exports, and ONNX Runtime gives PyTorch's calibrated probabilities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gtsrb.config import register_export_config
from gtsrb.data.synthetic import make_synthetic
from gtsrb.errors import UserError
from gtsrb.export import INPUT, OUTPUT, export, export_onnx, onnx_session
from gtsrb.inference import InputSpec, Predictor
from gtsrb.models.factory import min_input_size
from gtsrb.module import TrafficSignClassifier
from test_evaluate import trained_run  # noqa: F401  (session-scoped trained checkpoint)

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
TOLERANCE = 1e-4  # largest |probability difference| allowed between ONNX Runtime and PyTorch

pytestmark = pytest.mark.usefixtures("one_thread")


def sharp_predictor(model_name: str, images_seed: int = 1, size: int = 32) -> tuple[Predictor, torch.Tensor]:
    """A randomly initialised ``conf/model`` whose temperature spreads its probabilities over [0, 1], and 256
    synthetic signs of every class at its input size.

    An untrained network gives every class about 1/43, and any two
    implementations agree to 1e-8 whatever they compute; a temperature of a
    quarter of the logits' spread puts real weight on the comparison (and
    on the temperature inside the graph).
    """
    cfg = {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{model_name}.yaml")), "pretrained": False}
    torch.manual_seed(0)
    model = TrafficSignClassifier(cfg, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}, {"name": "none"},
                                  [f"class {i}" for i in range(43)]).eval()
    stn = getattr(model.model, "stn", None)
    if hasattr(stn, "theta"):  # a spatial transformer starts as the identity: compare on resampled images
        torch.nn.init.normal_(stn.theta.weight, std=0.05)
    predictor = Predictor(model, InputSpec(max(size, min_input_size(model.model))), batch_size=64, device="cpu")
    images = make_synthetic(6, predictor.spec.image_size, seed=images_seed).images[:256]
    model.temperature.fill_(float(predictor.logits(images).std()) / 4)
    return predictor, images


# Beyond 32 px: at 40 px the spatial transformer max-pools a 10x10 map to 4x4, which ONNX has no pool for
# (gtsrb/models/pooling.py); at 40 and 48 px the 4x4 head averages a 5x5 or 6x6 map.
SIZES = [(name, 32) for name in MODELS] + [("simple_cnn_stn", 40), ("simple_cnn_stn_grid", 40),
                                           ("simple_cnn_stn_grid", 48), ("simple_cnn_stn_ms", 40)]


@pytest.mark.parametrize("model_name,size", SIZES)
def test_onnx_runtime_gives_pytorchs_probabilities_for_every_model(model_name, size, tmp_path):
    predictor, images = sharp_predictor(model_name, size=size)
    assert images.shape[-1] == predictor.spec.image_size >= size  # the export runs at the size asked for, or larger
    path = export_onnx(predictor, tmp_path / "model.onnx")
    expected = predictor.probabilities(images)
    session = onnx_session(path)
    got = torch.from_numpy(session.run([OUTPUT], {INPUT: images.numpy()})[0])
    assert got.shape == expected.shape == (256, 43)
    assert expected.max() > 0.25 and expected.min() < 1e-3  # the probabilities spread: the comparison has weight
    assert (got - expected).abs().max() < TOLERANCE
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * TOLERANCE  # a near-tie may fall either way in float32
    assert clear.float().mean() > 0.9
    assert torch.equal(got.argmax(1)[clear], expected.argmax(1)[clear])
    # the batch dimension is dynamic
    for n in (1, 7):
        single = session.run([OUTPUT], {INPUT: images[:n].numpy()})[0]
        assert single.shape == (n, 43)


def test_metadata_says_how_to_prepare_the_input_and_read_the_output(trained_run, tmp_path):  # noqa: F811
    predictor = Predictor.from_checkpoint(trained_run, device="cpu")
    path = export_onnx(predictor, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == predictor.class_names and len(predictor.class_names) == 43
    assert int(meta["image_size"]) == predictor.spec.image_size == 32
    assert meta["preprocess"] == predictor.spec.preprocess and json.loads(meta["roi_crop"]) is False
    assert json.loads(meta["mean"]) == list(predictor.spec.mean) and json.loads(meta["std"]) == list(predictor.spec.std)
    assert float(meta["temperature"]) == predictor.temperature
    assert meta["model_name"] == "simple_cnn" and meta["source_checkpoint"] == str(predictor.checkpoint)
    graph_input = proto.graph.input[0]
    assert graph_input.name == INPUT and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch dimension


def test_export_app_writes_model_onnx_and_checks_it(trained_run, tmp_path, capsys):  # noqa: F811
    register_export_config()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={trained_run}", f"output_dir={tmp_path}", "verify_images=16"])
    report = export(cfg)
    assert Path(report["onnx"]) == tmp_path / "model.onnx" and (tmp_path / "model.onnx").is_file()
    assert report["verify"]["images"] == 16 and report["verify"]["max_abs_diff"] < TOLERANCE
    assert report["verify"]["top1_agreement"] == 1.0
    assert f"onnx model: {tmp_path / 'model.onnx'}" in capsys.readouterr().out


def test_cli_error_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "gtsrb.export", f"ckpt_path={tmp_path / 'nope'}",
                           f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'nope'} does not exist; pass "
                                                "ckpt_path=<run directory> or ckpt_path=<run>/checkpoints/<file>.ckpt"]
    assert not (out / "model.onnx").exists()


def test_a_model_the_exporter_refuses_is_named_in_one_line(tmp_path, monkeypatch):
    predictor, _ = sharp_predictor("simple_cnn")

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported operator: aten::frobnicate\nlong trace follows")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(UserError, match=r"model simple_cnn cannot be exported to ONNX \(RuntimeError: Unsupported "
                                        r"operator: aten::frobnicate\)") as info:
        export_onnx(predictor, tmp_path / "model.onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
