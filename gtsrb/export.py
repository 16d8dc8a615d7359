"""Export a trained model to ONNX: ``uv run python -m gtsrb.export ckpt_path=<run | .ckpt | evaluation dir>``.

The file ``model.onnx`` holds the whole network side of :class:`gtsrb.inference.Predictor`:

* input ``images``: uint8 [batch, 3, S, S], RGB, already resized to S and
  contrast-normalised with the model's ``data.preprocess`` (both recorded
  in the metadata; :meth:`Predictor.prepare` and :meth:`Predictor.load`
  make exactly this input);
* inside: scaling to [0, 1], normalisation by mean and std, the network, the
  fitted softmax temperature, softmax;
* output ``probabilities``: float32 [batch, classes], calibrated;
* a dynamic batch dimension;
* metadata (``metadata_props``, strings; lists as JSON): class names, image
  size, preprocessing, ROI crop, mean, std, temperature, model name, source
  checkpoint.

It is written with the exporter torch recommends (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``), checked with ONNX's checker and,
with ``verify=true`` (the default), run once in ONNX Runtime against
PyTorch. A model the exporter cannot handle ends in one line that names
the model and the reason; a failed export leaves no file behind.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from gtsrb.cli import report_user_errors, start
from gtsrb.config import register_export_config
from gtsrb.errors import UserError, first_line
from gtsrb.inference import ONNX_INPUT as INPUT
from gtsrb.inference import ONNX_OUTPUT as OUTPUT
from gtsrb.inference import Predictor, onnx_session

log = logging.getLogger(__name__)


class ExportedClassifier(nn.Module):
    """Prepared uint8 images -> calibrated probabilities: the network side of a :class:`Predictor` as one module."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.model = predictor.model
        self.register_buffer("mean", torch.tensor(predictor.spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(predictor.spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(predictor.temperature, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255 - self.mean) / self.std
        return (self.model(x).float() / self.temperature).softmax(dim=1)


def metadata(predictor: Predictor) -> dict[str, str]:
    """What a consumer of ``model.onnx`` needs to prepare its input and read its output."""
    spec = predictor.spec
    return {
        "class_names": json.dumps(predictor.class_names),
        "image_size": str(spec.image_size),
        "preprocess": spec.preprocess,
        "roi_crop": json.dumps(spec.roi_crop),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "temperature": repr(predictor.temperature),
        "model_name": predictor.model_name,
        "source_checkpoint": str(predictor.checkpoint),
        "input": f"{INPUT}: uint8 [batch, 3, {spec.image_size}, {spec.image_size}] RGB, resized and preprocessed",
        "output": f"{OUTPUT}: float32 [batch, {len(predictor.class_names)}], softmax(logits / temperature)",
    }


def export_onnx(predictor: Predictor, path: Path, opset: int | None = None) -> Path:
    """Write ``path`` (atomically: a failed export leaves nothing behind); returns it."""
    import onnx

    name = predictor.model.hparams.model["name"]
    module = ExportedClassifier(predictor).cpu().eval()
    size = predictor.spec.image_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes={"images": {0: batch}}, opset_version=opset,
                                        external_data=False, verbose=False)
        proto = program.model_proto
        onnx.checker.check_model(proto)
    except Exception as exc:  # the exporter raises many types
        reason = first_line(exc, 200)
        raise UserError(f"model {name} cannot be exported to ONNX ({type(exc).__name__}: {reason}); "
                        "export a model of another conf/model, or serve the PyTorch checkpoint") from exc
    del proto.metadata_props[:]
    for key, value in metadata(predictor).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"GTSRB traffic-sign classifier {name}: {len(predictor.class_names)} classes"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return path


def verify(predictor: Predictor, path: Path, images: torch.Tensor) -> dict[str, float]:
    """ONNX Runtime against PyTorch on prepared uint8 ``images``: the largest probability difference and the
    share of identical top-1 answers."""
    expected = predictor.probabilities(images)
    got = torch.from_numpy(onnx_session(path).run([OUTPUT], {INPUT: images.numpy()})[0])
    return {"images": len(images), "max_abs_diff": float((got - expected).abs().max()),
            "top1_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean())}


def export(cfg: DictConfig) -> dict:
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # INFO lines for every graph pass
        logging.getLogger(noisy).setLevel(logging.WARNING)
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, device="cpu", batch_size=64)
    out = Path(cfg.output_dir)
    path = export_onnx(predictor, out / "model.onnx", cfg.opset)
    report = {"onnx": str(path), "checkpoint": str(predictor.checkpoint), **metadata(predictor)}
    if cfg.verify:
        g = torch.Generator().manual_seed(0)
        size = predictor.spec.image_size
        images = torch.randint(0, 256, (cfg.verify_images, 3, size, size), dtype=torch.uint8, generator=g)
        report["verify"] = verify(predictor, path, images)
    print(f"onnx model: {path}\nsource checkpoint: {predictor.checkpoint}", flush=True)
    if cfg.verify:
        v = report["verify"]
        print(f"onnx runtime vs pytorch on {v['images']} random images: max |p difference| {v['max_abs_diff']:.2e}, "
              f"top-1 agreement {v['top1_agreement']:.4f}", flush=True)
    return report


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    start(main, "export", register_export_config)
