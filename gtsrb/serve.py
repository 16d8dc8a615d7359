"""Serve a trained model: ``uv run python -m gtsrb.serve model=<run dir | .ckpt | evaluation dir | .onnx> port=8000``.

A REST service and a web page in one process tree, on LitServe (FastAPI
underneath) for its inference worker process and its dynamic batching:
requests that arrive within ``batch_timeout`` of each other are classified
in one forward pass (``max_batch_size=1`` turns batching off).

* ``POST /predict``: multipart form field ``file`` (one image, or several
  ``file`` fields), optional fields ``top_k`` and ``gradcam=true``. Answers
  JSON: the model's name and, per image, the top-k classes (``class_id``,
  ``class_name``, calibrated ``probability``) and on request a Grad-CAM
  overlay (PNG, base64; needs a PyTorch checkpoint).
* ``GET /health``: ``ok`` once the worker has loaded the model.
* ``GET /info``: classes, image size, model name and the headline metrics
  of its model card.
* ``GET /``: the page (``gtsrb/web/index.html``); ``GET /examples`` and
  ``/examples/<class id>.png``: example signs from the synthetic generator.

Images take the one inference path (:mod:`gtsrb.inference`). Bad input gets
a 4xx JSON ``{"error": ...}`` that names the problem, and the service goes
on serving: not multipart, no ``file`` field, an empty upload, a file that
is no image or is truncated, an image over ``max_pixels`` (decompression
bombs), a body over ``max_upload_mb``, too many files. Each request's
problems are answered for that request alone: a decoding error never
raises inside LitServe's batch, where it would fail every request batched
with it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import litserve as ls
from omegaconf import DictConfig

from gtsrb.cli import report_user_errors, start
from gtsrb.config import register_serve_config
from gtsrb.errors import UserError, first_line

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "web" / "index.html"
EXAMPLE_CLASSES = (1, 12, 13, 14, 17, 25, 33, 38)  # 30 km/h, priority road, yield, stop, no entry, road work, ...


@dataclass
class Problem:
    """A request that cannot be answered with predictions: its HTTP status and a one-line reason."""

    status: int
    error: str


def read_upload(name: str, data: bytes, max_pixels: int):
    """The bytes of one upload as a decoded RGB PIL image, or a :class:`Problem` that names what is wrong."""
    from PIL import Image, UnidentifiedImageError

    from gtsrb.data.gtsrb import strict_pil

    if not data:
        return Problem(400, f"upload {name} is empty; send an image file")
    try:
        with strict_pil():
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return Problem(413, f"{name} has {width}x{height} = {width * height} pixels, over the limit of "
                                    f"{max_pixels}; send a smaller image")
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError:
        return Problem(413, f"{name} is over the pixel limit of {max_pixels} (a decompression bomb?); "
                            "send a smaller image")
    except UnidentifiedImageError:
        return Problem(415, f"{name} is not an image (no known image format); send a PNG, JPEG, PPM, BMP or WebP file")
    except (OSError, SyntaxError, ValueError) as exc:
        reason = first_line(exc, 100)
        return Problem(400, f"cannot decode image {name} ({reason}); send the complete file")


class TrafficSignAPI(ls.LitAPI):
    """decode_request: form -> prepared images or a Problem; predict: one forward pass over every good
    image of the batch; encode_response: JSON, or the Problem as a 4xx response."""

    def __init__(self, model: str, top_k: int = 5, max_pixels: int = 25_000_000, max_files: int = 32,
                 threads: int = 1, max_batch_size: int = 16, batch_timeout: float = 0.005) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model_path, self.top_k, self.max_pixels = model, top_k, max_pixels
        self.max_files, self.threads = max_files, threads

    def setup(self, device) -> None:
        import torch

        from gtsrb.inference import load_predictor

        torch.set_num_threads(self.threads)
        self.predictor = load_predictor(self.model_path, device="cpu")

    # ------------------------------------------------------------------ one request

    def decode_request(self, request) -> dict | Problem:
        files = request.getlist("file") if hasattr(request, "getlist") else []  # starlette's FormData
        uploads = [f for f in files if hasattr(f, "read")]
        if not uploads:
            return Problem(422, "no image in the request; send it as multipart form field 'file'"
                           if not files else "form field 'file' holds text, not a file; send an image file")
        if len(uploads) > self.max_files:
            return Problem(413, f"{len(uploads)} files in one request, over the limit of {self.max_files}")
        top_k = request.get("top_k") or self.top_k
        try:
            top_k = int(top_k)
            if top_k < 1:
                raise ValueError
        except ValueError:
            return Problem(422, f"top_k={top_k!r} is not a whole number of 1 or more")
        images, names = [], []
        for upload in uploads:
            name = upload.filename or "upload"
            image = read_upload(name, upload.file.read(), self.max_pixels)
            if isinstance(image, Problem):
                return image
            images.append(image)
            names.append(name)
        gradcam = str(request.get("gradcam", "false")).lower() in ("1", "true", "yes", "on")
        return {"images": self.predictor.prepare(images), "names": names, "top_k": top_k, "gradcam": gradcam}

    def encode_response(self, output: dict | Problem):
        if isinstance(output, Problem):
            from fastapi.responses import JSONResponse

            return JSONResponse({"error": output.error}, status_code=output.status)
        return output

    # ------------------------------------------------------------------ the batch

    def batch(self, inputs: list) -> list:
        return inputs  # predict takes the whole list: requests carry several images, or a Problem

    def unbatch(self, outputs: list) -> list:
        return outputs

    def predict(self, x):
        single = self.max_batch_size == 1
        items = [x] if single else x
        outputs = self._predict(items)
        return outputs[0] if single else outputs

    def _predict(self, items: list) -> list:
        import torch

        good = [item for item in items if not isinstance(item, Problem)]
        probs = self.predictor.probabilities(torch.cat([item["images"] for item in good])) if good else None
        outputs, start = [], 0
        for item in items:
            if isinstance(item, Problem):
                outputs.append(item)
                continue
            n = len(item["images"])
            try:
                outputs.append(self._answer(item, probs[start:start + n]))
            except UserError as exc:  # Grad-CAM asked of an ONNX model
                outputs.append(Problem(400, str(exc)))
            start += n
        return outputs

    def _answer(self, item: dict, probs) -> dict:
        names = self.predictor.class_names
        k = min(item["top_k"], len(names))
        top_p, top_i = probs.topk(k, dim=1)
        heatmaps = self.predictor.explain(item["images"], top_i[:, 0]).heatmaps if item["gradcam"] else None
        predictions = []
        for j, name in enumerate(item["names"]):
            entry: dict[str, Any] = {"file": name, "top_k": [
                {"class_id": int(c), "class_name": names[int(c)], "probability": round(float(p), 6)}
                for p, c in zip(top_p[j], top_i[j])]}
            if heatmaps is not None:
                entry["gradcam_png"] = _png_base64(item["images"][j], heatmaps[j])
            predictions.append(entry)
        return {"model": self.predictor.model_name, "calibrated": self.predictor.temperature != 1.0,
                "predictions": predictions}


def _png_base64(image, heatmap) -> str:
    from gtsrb.explain.overlays import overlay_pair

    buffer = io.BytesIO()
    overlay_pair(image, heatmap).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------- what the HTTP process adds


class MultipartOnly:
    """ASGI middleware: a POST to /predict that is not multipart gets a 415 here (LitServe would read it as JSON
    and answer a malformed body with a 500)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/predict":
            headers = dict(scope.get("headers") or [])
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            if not content_type.startswith("multipart/form-data"):
                from starlette.responses import JSONResponse

                response = JSONResponse({"error": f"POST /predict takes multipart/form-data with the image in field "
                                                  f"'file', not {content_type or 'a body without a content type'}"},
                                        status_code=415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def model_info(predictor) -> dict[str, Any]:
    """What /info and the page show: the model, its classes and input, and its model card's headline numbers."""
    from gtsrb.evaluation.model_card import headline_metrics

    return {"name": predictor.model_name, "classes": predictor.class_names, "image_size": predictor.spec.image_size,
            "preprocess": predictor.spec.preprocess, "temperature": predictor.temperature,
            "source": str(predictor.checkpoint), "model_card": headline_metrics(predictor.source_checkpoint)}


def example_signs(class_names: list[str], size: int = 96) -> dict[int, bytes]:
    """PNG bytes of one synthetic sign per example class (the project's own generator, so no download)."""
    from PIL import Image

    from gtsrb.data.synthetic import make_synthetic

    signs = make_synthetic(1, size, seed=7, num_classes=max(EXAMPLE_CLASSES) + 1)
    out = {}
    for image, label in zip(signs.images, signs.labels.tolist()):
        if label in EXAMPLE_CLASSES and label < len(class_names):
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            out[label] = buffer.getvalue()
    return out


def build_server(cfg: DictConfig) -> ls.LitServer:
    """The LitServer with the page, the examples and /info filled in (the model is loaded once here, for its
    metadata, and again in the worker process)."""
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from gtsrb.inference import load_predictor

    predictor = load_predictor(cfg.model, device="cpu")  # fails here, in one line, before any process starts
    info = model_info(predictor)
    api = TrafficSignAPI(cfg.model, cfg.top_k, cfg.max_pixels, cfg.max_files, cfg.threads, cfg.max_batch_size,
                         cfg.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=cfg.workers,
                          timeout=cfg.timeout, model_metadata=info,
                          max_payload_size=int(cfg.max_upload_mb * 1024 * 1024), middlewares=[MultipartOnly])
    examples = example_signs(predictor.class_names)
    page = PAGE.read_text()
    app = server.app
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]  # LitServe's plain "/"

    @app.exception_handler(StarletteHTTPException)
    async def error_as_json(request, exc: StarletteHTTPException) -> JSONResponse:
        """LitServe's and FastAPI's own errors (body too large, timeout, no such path) in the API's format."""
        text = f"request body over the limit of {cfg.max_upload_mb:g} MB; send a smaller image" \
            if exc.status_code == 413 else f"{exc.detail} ({request.method} {request.url.path})"
        return JSONResponse({"error": text}, status_code=exc.status_code)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/examples")
    async def example_list() -> JSONResponse:
        return JSONResponse([{"class_id": c, "class_name": predictor.class_names[c], "url": f"/examples/{c}.png"}
                             for c in sorted(examples)])

    @app.get("/examples/{class_id}.png")
    async def example(class_id: int) -> Response:
        if class_id not in examples:
            return JSONResponse({"error": f"no example for class {class_id}; see /examples"}, status_code=404)
        return Response(examples[class_id], media_type="image/png")

    return server


def serve(cfg: DictConfig) -> None:
    server = build_server(cfg)
    print(f"serving {cfg.model} on http://{cfg.host}:{cfg.port}/ (batching: "
          f"{'off' if cfg.max_batch_size == 1 else f'up to {cfg.max_batch_size} requests'})", flush=True)
    server.run(host=cfg.host, port=cfg.port, generate_client_file=False, log_level=cfg.log_level)


@contextlib.contextmanager
def running_server(model: str | Path, *overrides: str, startup_s: float = 180) -> Iterator[str]:
    """``python -m gtsrb.serve model=... <overrides>`` on a free localhost port, as a context that yields its URL
    once ``/health`` says ok and stops the whole process group (LitServe's workers too) on exit. For tests,
    benchmarks and notebooks."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "gtsrb.serve", f"model={model}", f"port={port}", *overrides],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the server did not become healthy within {startup_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@hydra.main(config_path=None, config_name="serve", version_base="1.3")  # conf/serve.yaml, via the ConfigStore
@report_user_errors
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    start(main, "serve", register_serve_config)
