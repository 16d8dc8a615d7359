"""One inference path: prediction on image files gives evaluation's answers, for every ``data.preprocess``
option and with ROI crops; a uint8 tensor gives the answer of the file it came from."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gtsrb.checkpoint import read_checkpoint, resolve_checkpoint
from gtsrb.data.synthetic import make_synthetic
from gtsrb.errors import UserError
from gtsrb.evaluation.run import evaluate
from gtsrb.inference import Predictor
from gtsrb.predict import predict
from test_evaluate import eval_cfg, trained_run  # noqa: F401  (session-scoped trained checkpoint)
from test_gtsrb_data import HEADER, build_train

pytestmark = pytest.mark.usefixtures("one_thread")

TEST_SIZE = 48  # larger than the model's 32 px, so the resize (and the crop) matter


@pytest.fixture(scope="module")
def gtsrb_tree(tmp_path_factory) -> Path:
    """GTSRB in the official layout; the test split holds textured signs with sign boxes off-centre."""
    root = tmp_path_factory.mktemp("gtsrb_textured")
    build_train(root / "GTSRB" / "Final_Training" / "Images")
    images = root / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    signs = make_synthetic(1, TEST_SIZE, seed=5, num_classes=12)
    g = torch.Generator().manual_seed(0)
    lines = [HEADER]
    for i, (image, label) in enumerate(zip(signs.images, signs.labels.tolist())):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(images / f"{i:05d}.ppm")
        x1, y1 = torch.randint(0, 12, (2,), generator=g).tolist()
        x2, y2 = x1 + 30 + int(torch.randint(0, 6, (1,), generator=g)), y1 + 30
        lines.append(f"{i:05d}.ppm;{TEST_SIZE};{TEST_SIZE};{x1};{y1};{x2};{y2};{label}\n")
    (root / "GT-final_test.csv").write_text("".join(lines))
    return root


def _checkpoint_trained_with(trained_run: Path, dest: Path, root: Path, **data) -> Path:  # noqa: F811
    """The trained checkpoint, as if trained on GTSRB at ``root`` with these ``data.*`` settings."""
    ckpt = read_checkpoint(resolve_checkpoint(trained_run))
    hparams = dict(ckpt["datamodule_hyper_parameters"])
    hparams["data"] = {**hparams["data"], "source": "gtsrb", "root": str(root), "val_fraction": 0.25, **data}
    torch.save({**ckpt, "datamodule_hyper_parameters": hparams}, dest)
    return dest


@pytest.mark.parametrize(("preprocess", "roi_crop"), [
    ("none", False), ("autocontrast", False), ("equalize", False), ("clahe", False), ("clahe", True), ("none", True),
])
def test_prediction_on_files_equals_evaluation_on_the_same_files(trained_run, gtsrb_tree, tmp_path,  # noqa: F811
                                                                  preprocess, roi_crop):
    ckpt = _checkpoint_trained_with(trained_run, tmp_path / "model.ckpt", gtsrb_tree, preprocess=preprocess,
                                    roi_crop=roi_crop)
    evaluate(eval_cfg(f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}", "split=test", "calibrate=false",
                      "gallery_size=0"))
    with open(tmp_path / "eval" / "predictions.csv") as f:
        evaluated = list(csv.DictReader(f))
    files = [str(gtsrb_tree / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm") for i in range(len(evaluated))]
    roi_csv = str(gtsrb_tree / "GT-final_test.csv") if roi_crop else None
    predicted = predict(str(ckpt), files, top_k=1, roi_csv=roi_csv)["predictions"]
    assert len(predicted) == len(evaluated) == 12
    for ours, theirs in zip(predicted, evaluated):
        assert ours["top_k"][0]["class_id"] == int(theirs["pred_id"])
        # the report rounds to 5 digits; both sides compute the same float32 probabilities
        assert ours["top_k"][0]["probability"] == pytest.approx(float(theirs["confidence"]), abs=1e-5)


def test_a_uint8_tensor_is_classified_like_the_file_it_came_from(trained_run, gtsrb_tree, tmp_path):  # noqa: F811
    ckpt = _checkpoint_trained_with(trained_run, tmp_path / "model.ckpt", gtsrb_tree, preprocess="clahe")
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    files = sorted((gtsrb_tree / "GTSRB" / "Final_Test" / "Images").glob("*.ppm"))[:4]
    raw = torch.stack([torch.from_numpy(np.asarray(Image.open(f))).permute(2, 0, 1) for f in files])
    prepared = predictor.prepare(raw)
    assert prepared.shape == (4, 3, 32, 32) and prepared.dtype == torch.uint8
    assert torch.equal(prepared, predictor.load(files))  # same uint8 pixels: decoding and resizing are one path
    torch.testing.assert_close(predictor.probabilities(prepared), predictor.predict_files(files))


def test_a_checkpoint_without_its_data_settings_is_refused_in_one_line(trained_run, tmp_path):  # noqa: F811
    ckpt = read_checkpoint(resolve_checkpoint(trained_run))
    path = tmp_path / "bare.ckpt"
    torch.save({k: v for k, v in ckpt.items() if k != "datamodule_hyper_parameters"}, path)
    with pytest.raises(UserError, match="does not record the image size") as info:
        Predictor.from_checkpoint(path, device="cpu")
    assert "\n" not in str(info.value)


def test_the_callback_s_live_module_keeps_its_training_mode(trained_run):  # noqa: F811
    predictor = Predictor.from_checkpoint(trained_run, device="cpu")
    predictor.model.train()
    predictor.logits(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    assert predictor.model.training and all(m.training for m in predictor.model.modules())
