"""``evaluate.py`` end to end on a freshly trained quickstart-style checkpoint: every artifact, the
calibrated checkpoint, the options, and one clear line for each thing a user can get wrong."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import compose_cfg
from gtsrb.cli import CONF_DIR
from gtsrb.config import register_evaluate_config
from gtsrb.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["confusion_matrix.png", "reliability.png", "metrics_summary.png", "per_class_accuracy.png",
           "confused_pairs.png", "misclassified.png"]
# One thread per process: the suite shares a small CPU, and oversubscribed OpenMP makes tiny models crawl.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A quickstart-style run (simple_cnn, 43 synthetic classes, 32 px) trained for a few batches."""
    from gtsrb.training import train

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_cfg(run_dir, "trainer.fast_dev_run=false", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                      "augmentation=light"))
    return run_dir


def eval_cfg(*overrides: str) -> DictConfig:
    register_evaluate_config()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def test_cli_writes_every_artifact_and_a_calibrated_checkpoint(trained_run, tmp_path):
    from gtsrb.module import TrafficSignClassifier

    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={trained_run}", f"hydra.run.dir={out}",
                           "gallery_size=4"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in [*FIGURES, "metrics.json", "per_class_report.csv", "confused_pairs.csv", "predictions.csv",
                 "calibrated.ckpt"]:
        assert (out / name).is_file(), name
    assert len(list((out / "misclassified").glob("*_true-*_pred-*_conf*.png"))) == 4
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    report = json.loads((out / "metrics.json").read_text())
    best = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    assert report["checkpoint"] == best and report["split"] == "test" and report["num_images"] == 43
    assert report["acc_ci95"]["over"] == "43 images"  # no tracks in a test split: Wilson's interval over images
    expected = {"acc", "top3", "top5", "precision", "recall", "f1", "precision_weighted", "recall_weighted",
                "f1_weighted", "nll", "ece"}
    assert set(report["metrics"]["uncalibrated"]) == expected == set(report["metrics"]["calibrated"])
    assert report["metrics"]["calibrated"]["acc"] == report["metrics"]["uncalibrated"]["acc"]
    assert report["calibration"]["val_nll_after"] <= report["calibration"]["val_nll_before"]
    assert report["config"]["data"]["source"] == "synthetic" and report["config"]["model"]["name"] == "simple_cnn"
    assert f"calibrated checkpoint: {out / 'calibrated.ckpt'}" in proc.stdout

    with open(out / "per_class_report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 43 and rows[14]["class_name"] == "Stop"
    assert set(rows[0]) == {"class_id", "class_name", "precision", "recall", "f1", "support", "accuracy"}
    assert sum(int(r["support"]) for r in rows) == 43

    # the temperature travels with the weights: predictions from the new checkpoint are calibrated
    model = TrafficSignClassifier.load_from_checkpoint(out / "calibrated.ckpt", map_location="cpu").eval()
    assert float(model.temperature) == pytest.approx(report["temperature"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.predict_step(images, 0), (model(images) / report["temperature"]).softmax(1))
    # the training run is left as it was
    assert not (trained_run / "calibrated.ckpt").exists()


def test_training_and_evaluation_report_the_same_test_metrics_under_the_same_names(trained_run, tmp_path):
    """One metric definition: the run's final test metrics are the evaluation's, on the same checkpoint and split."""
    from gtsrb.evaluation.run import evaluate

    run = json.loads((trained_run / "metrics.json").read_text())
    trained = {key.removeprefix("test/"): value for key, value in run["final"]["test"].items() if key != "test/loss"}
    assert set(trained) == {"acc", "top5", "f1", "precision", "recall", "nll", "ece"}
    report = evaluate(eval_cfg(f"ckpt_path={trained_run}", f"output_dir={tmp_path}", "split=test", "calibrate=false",
                               "gallery_size=0"))
    assert report["checkpoint"] == run["best_checkpoint"]
    evaluated = report["metrics"]["uncalibrated"]
    assert set(trained) <= set(evaluated)
    for name, value in trained.items():
        # counts of right answers agree exactly; nll and ece are sums of float32 logits taken in other batches
        tolerance = 1e-5 if name in ("nll", "ece") else 1e-12
        assert evaluated[name] == pytest.approx(value, abs=tolerance), name


def test_training_and_evaluation_give_the_val_interval_over_the_same_tracks(make_cfg, gtsrb_root, tmp_path):
    """Held-out tracks: both reports count tracks, from the same per-image results in the split's order (a
    training report that took Wilson's over images, or shuffled its results, would disagree)."""
    from gtsrb.evaluation.measure import measure
    from gtsrb.training import train

    cfg = make_cfg("data=gtsrb", f"data.root={gtsrb_root}", "data.val_fraction=0.5", "data.batch_size=8",
                   "trainer.fast_dev_run=false", "trainer.max_epochs=2", "augmentation=none")
    train(cfg)
    run = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert run["acc_ci95"]["val"]["over"] == "10 tracks"  # 5 classes x 2 held-out tracks of 3 frames
    assert run["acc_ci95"]["test"]["over"].endswith(" images")  # the test CSV names no tracks: Wilson's
    measured = measure(eval_cfg(f"ckpt_path={cfg.output_dir}", f"output_dir={tmp_path / 'eval'}", "split=val",
                                "calibrate=false", "gallery_size=0"))
    assert measured.interval["over"] == "10 tracks"
    for end in ("low", "high"):
        assert run["acc_ci95"]["val"][end] == pytest.approx(measured.interval[end], abs=1e-6)


def test_the_model_card_is_hugging_face_format_with_the_reports_numbers(trained_run, tmp_path):
    import yaml

    from gtsrb.evaluation.run import evaluate

    report = evaluate(eval_cfg(f"ckpt_path={trained_run}", f"output_dir={tmp_path}", "gallery_size=0",
                               "fgsm_epsilons=[0.01]"))
    text = (tmp_path / "MODEL_CARD.md").read_text()
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    [result] = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "simple_cnn" and result["dataset"]["split"] == "test"
    values = {m["name"]: m["value"] for m in result["metrics"]}
    before, after = report["metrics"]["uncalibrated"], report["metrics"]["calibrated"]
    assert values["test accuracy"] == pytest.approx(before["acc"], abs=1e-5)
    assert values["test macro F1"] == pytest.approx(before["f1"], abs=1e-5)
    assert values["ECE (15 bins), before temperature scaling"] == pytest.approx(before["ece"], abs=1e-5)
    assert any(name.startswith("ECE (15 bins), after") and v == pytest.approx(after["ece"], abs=1e-5)
               for name, v in values.items())
    for section in ("## Intended use", "## Limitations", "## Data and split", "## Training", "## Weakest classes",
                    "## Most-confused pairs", "## Calibration", "## Robustness (FGSM)"):
        assert section in body, section
    run = json.loads((trained_run / "metrics.json").read_text())
    assert "uv run train.py " + " ".join(run["overrides"]) in body  # the command that reproduces it
    assert "MODEL_CARD.md" in report["artifacts"]


def test_options_tta_fgsm_val_split_and_tensorboard(trained_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gtsrb.evaluation.run import evaluate

    report = evaluate(eval_cfg(f"ckpt_path={trained_run}/checkpoints/last.ckpt", f"output_dir={tmp_path}",
                               "split=val", "tta=true", "fgsm_epsilons=[0.01,0.03]", "gradcam_method=gradcam++",
                               "gallery_size=2", "data.batch_size=32"))
    assert report["split"] == "val" and report["tta"] is True and report["tta_gain"] is not None
    interval = report["acc_ci95"]  # synthetic images have no tracks: Wilson's interval over the images
    assert interval["over"] == f"{report['num_images']} images"
    assert interval["low"] <= report["metrics"]["uncalibrated"]["acc"] <= interval["high"]
    assert [row["epsilon"] for row in report["fgsm"]] == [0.0, 0.01, 0.03]
    assert all(0 <= row["acc"] <= 1 for row in report["fgsm"])
    assert report["config"]["data"]["batch_size"] == 32  # overrides replace the checkpoint's values
    with open(tmp_path / "confused_pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    assert pairs and all(p["true_name"] != p["pred_name"] for p in pairs)
    assert [int(p["count"]) for p in pairs] == sorted((int(p["count"]) for p in pairs), reverse=True)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {f"eval_val/{name[:-4]}" for name in FIGURES} <= set(events.Tags()["images"])
    assert "eval_val/uncalibrated/acc" in events.Tags()["scalars"]


@pytest.mark.parametrize("setup, message", [
    ("missing", "does not exist; pass ckpt_path="),
    ("garbage", "cannot read checkpoint"),
    ("other_model", "is not a checkpoint of this project's TrafficSignClassifier"),
    ("empty_run_dir", "holds no best checkpoint"),
])
def test_bad_checkpoints_are_one_clear_line(tmp_path, setup, message):
    from gtsrb.evaluation.run import evaluate

    path = tmp_path / "model.ckpt"
    if setup == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif setup == "other_model":
        torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, path)
    elif setup == "empty_run_dir":
        path = tmp_path / "run"
        path.mkdir()
    out = tmp_path / "eval"
    with pytest.raises(UserError, match=message) as info:
        evaluate(eval_cfg(f"ckpt_path={path}", f"output_dir={out}"))
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_data_with_another_number_of_classes_is_refused(trained_run, tmp_path):
    from gtsrb.evaluation.run import evaluate

    with pytest.raises(UserError, match="classifies 43 classes, not the 10 of the data"):
        evaluate(eval_cfg(f"ckpt_path={trained_run}", f"output_dir={tmp_path / 'eval'}", "data.num_classes=10"))
    assert not (tmp_path / "eval").exists()


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={tmp_path / 'nope.ckpt'}",
                           f"hydra.run.dir={out}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'nope.ckpt'} does not exist; pass "
                                                "ckpt_path=<run directory> or ckpt_path=<run>/checkpoints/<file>.ckpt"]
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("override, message", [
    ("split=train", "split=train is not a valid choice"),
    ("fgsm_epsilons=[2]", "must lie in [0, 1]"),
    ("gradcam_method=cam", "gradcam_method=cam is not a valid choice"),
    ("+model.kwargs.widths=[8]", "model.kwargs come from the checkpoint"),
    ("+model.widths=[8]", "model.widths is not a model setting"),
])
def test_bad_options_are_one_line(tmp_path, override, message):
    from gtsrb.evaluation.run import evaluate

    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(eval_cfg("ckpt_path=x", f"output_dir={tmp_path}", override))


def test_tta_reads_a_mirrored_sign_as_its_mirror_twin():
    from gtsrb.tta import _unflip, tta_logits

    original = torch.tensor([[0.1, 0.2, 0.3]]).log()
    flipped = torch.tensor([[0.5, 0.4, 0.9]]).log()
    # class 0 and 1 are mirror twins, class 2 has no mirror image: it keeps the unflipped score
    assert torch.allclose(_unflip(flipped, original, [1, 0, -1]).exp(), torch.tensor([[0.4, 0.5, 0.3]]))

    class LeftOrRight(torch.nn.Module):
        """Says 'left' (0) when the left half is brighter, 'right' (1) otherwise; class 2 never."""

        def forward(self, x):
            left, right = x[..., :2].mean(dim=(1, 2, 3)), x[..., 2:].mean(dim=(1, 2, 3))
            return torch.stack([left - right, right - left, torch.full_like(left, -5.0)], dim=1) * 10

    image = torch.zeros(1, 3, 4, 4)
    image[..., :2] = 1.0
    averaged = tta_logits(LeftOrRight(), image, flip_map=[1, 0, -1], shift=0)
    # the mirrored view says 'right', which is evidence for 'left': both views agree exactly
    assert torch.allclose(averaged, LeftOrRight()(image).log_softmax(dim=1), atol=1e-5)


def test_a_checkpoint_from_before_val_split_keeps_the_tracks_it_was_validated_on():
    """The default protocol changed to blocks; a checkpoint that does not name its split was split by random tracks,
    and evaluating its val split on blocks would score tracks it trained on."""
    from omegaconf import OmegaConf

    from gtsrb.evaluation.measure import data_config

    old = {"datamodule_hyper_parameters": {"data": {"source": "gtsrb", "root": "data"}, "seed": 3}}
    assert data_config(old, OmegaConf.create({}))[0]["val_split"] == "tracks"
    assert data_config(old, OmegaConf.create({"val_split": "blocks"}))[0]["val_split"] == "blocks"
    new = {"datamodule_hyper_parameters": {"data": {"source": "gtsrb", "val_split": "blocks"}}}
    assert data_config(new, OmegaConf.create({}))[0]["val_split"] == "blocks"


def test_the_interval_counts_tracks_where_every_image_has_one():
    from gtsrb.metrics import split_accuracy_interval

    correct = torch.ones(60, dtype=torch.bool)
    correct[:20] = False  # two thirds of one track of 30 misread
    tracks = torch.arange(2).repeat_interleave(30)
    over_tracks = split_accuracy_interval(correct, tracks)
    assert over_tracks["over"] == "2 tracks"
    unknown = split_accuracy_interval(correct, torch.where(tracks == 0, -1, tracks))  # the test CSV's -1: no track
    assert unknown["over"] == "60 images" == split_accuracy_interval(correct, None)["over"]
    assert over_tracks["low"] < unknown["low"]  # two draws, not sixty: a wider interval



def test_measuring_writes_nothing_and_the_report_records_what_was_measured(trained_run, tmp_path):
    """evaluate's three steps: measure (no file yet, so bad input cannot half-overwrite a report), draw, write."""
    from gtsrb.evaluation.measure import measure
    from gtsrb.evaluation.plots import report_figures
    from gtsrb.evaluation.write import write_report

    out = tmp_path / "eval"
    measured = measure(eval_cfg(f"ckpt_path={trained_run}", f"output_dir={out}", "gallery_size=4"))
    assert not out.exists()
    predicted = measured.final_logits.argmax(1)
    mistakes = int((predicted != measured.labels).sum())
    assert measured.gallery.mistakes == mistakes and len(measured.gallery.true) == min(4, mistakes)
    figures = report_figures(measured)
    assert ("misclassified" in figures) and not out.exists()
    write_report(out, measured, figures, {"split": "test"}, seconds=1.0)
    report = json.loads((out / "metrics.json").read_text())
    accuracy = float((predicted == measured.labels).double().mean())
    assert report["metrics"]["uncalibrated"]["acc"] == pytest.approx(accuracy, abs=1e-6)
    assert report["num_images"] == len(measured.labels) and report["config"]["evaluate"] == {"split": "test"}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{name}.png" for name in figures)
