"""``python -m gtsrb.predict``: top-k names with calibrated probabilities as a table and JSON, Grad-CAM
overlays, and one clear line (and no output folder) for every input that cannot work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from gtsrb.errors import UserError
from gtsrb.checkpoint import read_checkpoint, save_calibrated
from gtsrb.predict import main, predict
from test_evaluate import trained_run  # noqa: F401  (session-scoped trained checkpoint)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder with two real images of different sizes and modes, and a README that is no image."""
    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 256, (40, 50, 3), generator=g, dtype=torch.uint8).numpy()).save(folder / "a.png")
    Image.fromarray(torch.randint(0, 256, (20, 20), generator=g, dtype=torch.uint8).numpy(), "L").save(folder / "b.jpg")
    (folder / "README.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def calibrated(trained_run, tmp_path_factory) -> Path:  # noqa: F811
    best = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    dest = tmp_path_factory.mktemp("calibrated") / "calibrated.ckpt"
    return save_calibrated(read_checkpoint(Path(best)), 2.0, dest, {"temperature": 2.0})


def test_folder_prediction_writes_json_and_overlays(calibrated, images, tmp_path):
    out = tmp_path / "pred"
    report = predict(str(calibrated), [str(images)], top_k=3, gradcam=True, output=str(out))
    assert [Path(p["image"]).name for p in report["predictions"]] == ["a.png", "b.jpg"]
    assert report["skipped_files"] == [str(images / "README.txt")]
    assert report["calibrated"] is True and report["temperature"] == pytest.approx(2.0)
    for entry in report["predictions"]:
        probs = [hit["probability"] for hit in entry["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(isinstance(hit["class_name"], str) and hit["class_name"] for hit in entry["top_k"])
        assert Path(entry["gradcam"]).is_file() and f"pred-" in Path(entry["gradcam"]).name
    assert json.loads((out / "predictions.json").read_text()) == report
    assert sorted(p.name for p in out.iterdir()) == ["gradcam", "predictions.json"]  # no staging leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["pred"]


def test_probabilities_are_the_calibrated_ones(calibrated, trained_run, images):  # noqa: F811
    best = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    plain = predict(best, [str(images / "a.png")], top_k=1)["predictions"][0]["top_k"][0]
    scaled = predict(str(calibrated), [str(images / "a.png")], top_k=1)["predictions"][0]["top_k"][0]
    assert plain["class_id"] == scaled["class_id"]
    assert scaled["probability"] < plain["probability"]  # T = 2 softens an over-confident model


def test_cli_prints_a_table_or_json(calibrated, images, capsys):
    assert main([str(calibrated), str(images / "a.png"), "--top-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "rank", "class", "probability"]
    assert table[1].startswith("a.png") and table[2].split()[0] == "2"
    assert "calibrated with temperature 2.000" in table[-1]
    assert main([str(calibrated), str(images / "a.png"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"][0]["top_k"]) == 5


def _truncated_png(folder: Path) -> Path:
    path = folder / "broken.png"
    Image.new("RGB", (30, 30), "red").save(path)
    path.write_bytes(path.read_bytes()[:60])
    return path


@pytest.mark.parametrize("case, message", [
    ("unreadable", "cannot decode image .*broken.png"),
    ("fake_png", "cannot decode image .*fake.png"),
    ("not_an_image", "notes.csv is not an image file"),
    ("empty_folder", "no images in"),
    ("other_classes", "classifies 43 classes, not the 10 of --expect-classes"),
    ("missing_ckpt", "checkpoint .*missing.ckpt does not exist"),
    ("foreign_ckpt", "is not a checkpoint of this project's TrafficSignClassifier"),
])
def test_bad_inputs_are_one_line_and_leave_no_output(calibrated, images, tmp_path, capsys, case, message):
    ckpt, inputs, extra = str(calibrated), [str(images / "a.png")], []
    bad = tmp_path / "bad"
    bad.mkdir()
    if case == "unreadable":
        inputs.append(str(_truncated_png(bad)))
    elif case == "fake_png":
        (bad / "fake.png").write_text("this is text, not a PNG")
        inputs.append(str(bad / "fake.png"))
    elif case == "not_an_image":
        (bad / "notes.csv").write_text("a,b\n")
        inputs = [str(bad / "notes.csv")]
    elif case == "empty_folder":
        inputs = [str(bad)]
    elif case == "other_classes":
        extra = ["--expect-classes", "10"]
    elif case == "missing_ckpt":
        ckpt = str(tmp_path / "missing.ckpt")
    elif case == "foreign_ckpt":
        ckpt = str(tmp_path / "foreign.ckpt")
        torch.save({"state_dict": {}}, ckpt)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([ckpt, *inputs, "--gradcam", "--output", str(out), *extra])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert captured.out == ""
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_an_existing_output_folder_is_not_overwritten(calibrated, images, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        predict(str(calibrated), [str(images)], output=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
