"""``python -m gtsrb.serve``: a real server on localhost answers predictions, its page and its metadata, and
answers every kind of bad upload with a 4xx JSON error while it goes on serving."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from gtsrb.data.synthetic import make_synthetic
from gtsrb.inference import OnnxPredictor, Predictor
from gtsrb.serve import running_server
from test_evaluate import trained_run  # noqa: F401  (session-scoped trained checkpoint)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server(trained_run):  # noqa: F811
    with running_server(trained_run) as url:
        yield url


def png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def signs() -> dict[int, bytes]:
    """PNG files of synthetic signs, 48 px (the server resizes them to the model's 32 px)."""
    data = make_synthetic(1, 48, seed=11)
    return {int(label): png(image) for image, label in zip(data.images, data.labels)}


def post(url: str, files: list[tuple[str, bytes]], **fields) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("file", (name, data)) for name, data in files],
                      data={k: str(v) for k, v in fields.items()}, timeout=60)


def test_predict_gives_the_predictors_calibrated_top_k(server, signs, trained_run):  # noqa: F811
    response = post(server, [("stop.png", signs[14])], top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "simple_cnn"
    [prediction] = body["predictions"]
    assert prediction["file"] == "stop.png" and len(prediction["top_k"]) == 3
    probabilities = [hit["probability"] for hit in prediction["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)
    # the same numbers as the inference path on the same bytes
    predictor = Predictor.from_checkpoint(trained_run, device="cpu")
    expected = predictor.probabilities(predictor.prepare([Image.open(io.BytesIO(signs[14])).convert("RGB")]))[0]
    top = expected.topk(3)
    assert [hit["class_id"] for hit in prediction["top_k"]] == top.indices.tolist()
    assert probabilities == pytest.approx(top.values.tolist(), abs=2e-6)
    assert prediction["top_k"][0]["class_name"] == predictor.class_names[int(top.indices[0])]


def test_several_files_and_a_gradcam_overlay_in_one_request(server, signs):
    response = post(server, [("a.png", signs[1]), ("b.png", signs[13])], gradcam="true")
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == ["a.png", "b.png"]
    for p in predictions:
        overlay = Image.open(io.BytesIO(base64.b64decode(p["gradcam_png"])))
        assert overlay.format == "PNG" and overlay.width == 2 * overlay.height  # image and overlay side by side


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")  # 30 MP of zeros compress to a few KB
    return buffer.getvalue()


@pytest.mark.parametrize(("case", "status", "message"), [
    ("not an image", 415, "notes.png is not an image"),
    ("truncated", 400, "cannot decode image cut.png"),
    ("empty", 400, "upload empty.png is empty"),
    ("missing field", 422, "send it as multipart form field 'file'"),
    ("text field", 422, "holds text, not a file"),
    ("not multipart", 415, "takes multipart/form-data"),
    ("over the pixel limit", 413, "over the limit of 25000000"),
    ("body too large", 413, "request body over the limit of 10 MB"),
    ("bad top_k", 422, "top_k='many' is not a whole number"),
    ("no such path", 404, "Not Found (GET /nowhere)"),
])
def test_bad_input_gets_a_4xx_that_names_it_and_the_next_request_is_served(server, signs, case, status, message):
    if case == "not an image":
        response = post(server, [("notes.png", b"these are notes, not pixels")])
    elif case == "truncated":
        response = post(server, [("cut.png", _truncated(signs[2]))])
    elif case == "empty":
        response = post(server, [("empty.png", b"")])
    elif case == "missing field":
        response = httpx.post(f"{server}/predict", files={"image": ("a.png", signs[2])}, timeout=60)
    elif case == "text field":
        response = httpx.post(f"{server}/predict", data={"file": "a.png"}, files={"other": ("x", b"x")}, timeout=60)
    elif case == "not multipart":
        response = httpx.post(f"{server}/predict", json={"file": "a.png"}, timeout=60)
    elif case == "over the pixel limit":
        response = post(server, [("bomb.png", _bomb())])
    elif case == "body too large":
        response = post(server, [("huge.png", os.urandom(11 * 1024 * 1024))])
    elif case == "bad top_k":
        response = post(server, [("a.png", signs[2])], top_k="many")
    else:
        response = httpx.get(f"{server}/nowhere", timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "\n" not in response.json()["error"]
    after = post(server, [("a.png", signs[2])])
    assert after.status_code == 200 and after.json()["predictions"][0]["top_k"]


def test_a_bad_upload_batched_with_good_ones_fails_alone(server, signs):
    """LitServe batches requests that arrive together; one bad image must not fail the others."""
    uploads = [("bad.png", b"no image")] * 4 + [(f"good{i}.png", signs[i]) for i in range(12)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda upload: post(server, [upload]), uploads))
    assert [r.status_code for r in responses] == [415] * 4 + [200] * 12


def test_info_health_page_and_examples(server, trained_run):  # noqa: F811
    assert httpx.get(f"{server}/health").text == "ok"
    info = httpx.get(f"{server}/info").json()["model"]
    assert info["name"] == "simple_cnn" and info["image_size"] == 32 and len(info["classes"]) == 43
    card = info["model_card"]
    assert card["split"] == "test" and 0 <= card["acc"] <= 1  # the training run's final test metrics
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/predict" in page.text
    examples = httpx.get(f"{server}/examples").json()
    assert len(examples) >= 6 and {"class_id", "class_name", "url"} <= set(examples[0])
    picture = httpx.get(f"{server}{examples[0]['url']}")
    assert picture.headers["content-type"] == "image/png" and Image.open(io.BytesIO(picture.content)).size == (96, 96)


def test_a_missing_model_is_one_line_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gtsrb.serve", f"model={tmp_path / 'none.onnx'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: ONNX model {tmp_path / 'none.onnx'} does not exist; export one "
                                                "with uv run python -m gtsrb.export ckpt_path=<run>"]


def test_the_onnx_model_serves_the_same_probabilities(trained_run, signs, tmp_path):  # noqa: F811
    """The API on an exported model, in process: same answers as the checkpoint, and Grad-CAM refused in a 400."""
    from starlette.datastructures import FormData, UploadFile

    from gtsrb.export import export_onnx
    from gtsrb.serve import Problem, TrafficSignAPI

    predictor = Predictor.from_checkpoint(trained_run, device="cpu")
    path = export_onnx(predictor, tmp_path / "model.onnx")
    answers = {}
    for model in (str(trained_run), str(path)):
        api = TrafficSignAPI(model, max_batch_size=1)
        api.setup("cpu")
        assert isinstance(api.predictor, OnnxPredictor if model.endswith(".onnx") else Predictor)
        form = FormData([("file", UploadFile(io.BytesIO(signs[14]), filename="stop.png"))])
        answers[model] = api.predict(api.decode_request(form))
        gradcam = FormData([("file", UploadFile(io.BytesIO(signs[14]), filename="stop.png")), ("gradcam", "true")])
        explained = api.predict(api.decode_request(gradcam))
        assert isinstance(explained, Problem) == model.endswith(".onnx")
    torch_hits, onnx_hits = (answers[m]["predictions"][0]["top_k"] for m in (str(trained_run), str(path)))
    assert [h["class_id"] for h in onnx_hits] == [h["class_id"] for h in torch_hits]
    assert [h["probability"] for h in onnx_hits] == pytest.approx([h["probability"] for h in torch_hits], abs=1e-5)
