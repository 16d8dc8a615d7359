"""One inference path: image files or uint8 tensors in, calibrated class probabilities out.

A :class:`Predictor` classifies images exactly as the model saw them in
training: strict decoding (a truncated file is an error, not a grey image),
the ROI crop when the model was trained on crops, the resize, the contrast
normalisation of ``data.preprocess``, the mean/std normalisation, the network
and its fitted softmax temperature. Evaluation, prediction, Grad-CAM (during
training and after), FGSM and export all go through it, so none of them can
forget a step: an earlier prediction command that skipped ``data.preprocess``
scored 97.0% where evaluation of the same checkpoint on the same files
scored 98.8%.

Two kinds of input:

* raw images (:meth:`Predictor.load` for files, :meth:`Predictor.prepare`
  for uint8 tensors of any size) become *prepared* images: uint8
  [N, 3, S, S], decoded, cropped, resized and preprocessed, as the data
  module keeps them;
* prepared images (a data split's ``images``, or the result of the above)
  go through the network in batches (:meth:`Predictor.logits`,
  :meth:`Predictor.probabilities`, :meth:`Predictor.explain`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gtsrb.checkpoint import load_classifier, read_checkpoint, resolve_checkpoint
from gtsrb.data.batch_augment import normalize, to_float
from gtsrb.data.gtsrb import Record, RecordDecoder, fit_image
from gtsrb.data.preprocess import preprocess_images
from gtsrb.errors import UserError, first_line
from gtsrb.explain.gradcam import Explanation, GradCAM, untouched
from gtsrb.module import TrafficSignClassifier
from gtsrb.tta import tta_logits

Roi = tuple[tuple[int, int, int, int], tuple[int, int]]  # (x1, y1, x2, y2) drawn on an image of (width, height)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name} is not one of auto, cpu, cuda; use device=auto")
    return torch.device(name)


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input: the ``data.*`` settings the model was trained with."""

    image_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    preprocess: str = "none"
    roi_crop: bool = False

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> "InputSpec":
        """From a data config (``conf/data``, or what a checkpoint recorded of it)."""
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]),
                   data.get("preprocess") or "none", bool(data.get("roi_crop", False)))


def load_images(spec: InputSpec, paths: Sequence[str | Path], rois: Mapping[str, Roi] | None = None) -> torch.Tensor:
    """Image files -> prepared uint8 [N, 3, S, S], decoded strictly; the first unreadable file is a UserError.

    ``rois`` maps a file name to its annotated sign box (GTSRB's CSVs,
    :func:`gtsrb.data.gtsrb.read_rois`); a model trained with
    ``data.roi_crop=true`` sees those files cropped to it.
    """
    decode = RecordDecoder(spec.image_size, spec.roi_crop, "error", spec.preprocess,
                           fix="replace the file with a valid image or remove it")
    out = torch.empty((len(paths), 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        roi, original = (rois or {}).get(Path(path).name, (None, None))
        out[i] = decode(Record(Path(path), -1, -1, roi, original))
    return out


def prepare_images(spec: InputSpec, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
    """Raw images -> prepared uint8 [N, 3, S, S], as :func:`load_images` makes them from files.

    ``images``: uint8 [N, 3, H, W] (or one [3, H, W]) of any size, or decoded
    PIL images. Resized through the same PIL call as files, so a tensor and
    the file it came from give the same pixels.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images[None]
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if images.shape[-2:] == (spec.image_size, spec.image_size):
            return preprocess_images(images, spec.preprocess)
        images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images.cpu()]
    resized = np.stack([fit_image(image, spec.image_size) for image in images]) if len(images) else \
        np.empty((0, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    return preprocess_images(torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous(), spec.preprocess)


class Predictor:
    """A classifier with its input pipeline: see the module docstring.

    ``model`` may be a module in the middle of training (the Grad-CAM
    callback): it is switched to eval mode only while it classifies, and
    every module's mode and the RNG state are put back afterwards.
    """

    def __init__(self, model: TrafficSignClassifier, spec: InputSpec, batch_size: int = 256,
                 device: torch.device | str | None = None, checkpoint: Path | None = None) -> None:
        self.model, self.spec, self.batch_size, self.checkpoint = model, spec, batch_size, checkpoint
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", batch_size: int = 256,
                        num_classes: int | None = None, expected_by: str = "the data",
                        fix: str = "use a checkpoint trained on these classes, or the data it was trained on",
                        ) -> "Predictor":
        """Everything from the checkpoint alone: weights, temperature, class names and ``data.*`` settings.

        ``path`` is a ``.ckpt`` file, a training run directory or an
        evaluation directory (:func:`gtsrb.checkpoint.resolve_checkpoint`).
        """
        ckpt_path = resolve_checkpoint(path)
        ckpt = read_checkpoint(ckpt_path)
        data = (ckpt.get("datamodule_hyper_parameters") or {}).get("data") or {}
        if not all(k in data for k in ("image_size", "mean", "std")):
            raise UserError(f"{ckpt_path} does not record the image size and normalisation it was trained with; "
                            "pass a checkpoint written by train.py")
        dev = pick_device(device)
        model = load_classifier(ckpt_path, ckpt, num_classes=num_classes, device=dev, expected_by=expected_by,
                                fix=fix)
        return cls(model, InputSpec.of(data), batch_size, dev, ckpt_path)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def temperature(self) -> float:
        return float(self.model.temperature)

    @property
    def model_name(self) -> str:
        return str(self.model.hparams.model["name"])

    @property
    def source_checkpoint(self) -> Path | None:
        """The checkpoint whose evaluation or training run holds this model's metrics (the model card's)."""
        return self.checkpoint

    # ------------------------------------------------------------------ raw images -> prepared images

    def load(self, paths: Sequence[str | Path], rois: Mapping[str, Roi] | None = None) -> torch.Tensor:
        return load_images(self.spec, paths, rois)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return prepare_images(self.spec, images)

    # ------------------------------------------------------------------ prepared images -> the network

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared uint8 images -> the network's float input, on the predictor's device."""
        return normalize(to_float(images.to(self.device)), self.spec.mean, self.spec.std)

    def batches(self, images, normalized: bool = True) -> Iterator[tuple[slice, torch.Tensor]]:
        """(which images, their batch on the device) over prepared ``images`` (a tensor or a data split's
        ``images``): normalised network input, or with ``normalized=False`` float pixels in [0, 1]."""
        for start in range(0, len(images), self.batch_size):
            index = slice(start, min(start + self.batch_size, len(images)))
            pixels = to_float(images[index].to(self.device))
            yield index, normalize(pixels, self.spec.mean, self.spec.std) if normalized else pixels

    def logits_of_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of float pixels in [0, 1], differentiable w.r.t. the pixels (for attacks)."""
        return self.model(normalize(pixels, self.spec.mean, self.spec.std))

    @torch.no_grad()
    def logits(self, images, tta: bool = False, flip_map: Sequence[int] | None = None, tta_shift: int = 2,
               mirror: bool = True) -> torch.Tensor:
        """Uncalibrated logits [N, C] (CPU, float32) of prepared images; ``tta`` averages the views of
        :func:`gtsrb.tta.tta_logits` (label-safe mirroring through ``flip_map``, ``tta_shift`` px shifts)."""
        out = []
        with untouched(self.model):
            for _, batch in self.batches(images):
                logits = tta_logits(self.model, batch, flip_map, tta_shift, mirror) if tta else self.model(batch)
                out.append(logits.float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def probabilities(self, images, **tta) -> torch.Tensor:
        """Calibrated class probabilities [N, C]: softmax of the logits divided by the fitted temperature."""
        return (self.logits(images, **tta) / self.temperature).softmax(dim=1)

    def predict_files(self, paths: Sequence[str | Path], rois: Mapping[str, Roi] | None = None) -> torch.Tensor:
        """Calibrated probabilities [N, C] of image files."""
        return self.probabilities(self.load(paths, rois))

    def explain(self, images: torch.Tensor, classes: torch.Tensor | None = None, method: str = "gradcam",
                target_layer: str | None = None) -> Explanation:
        """Grad-CAM (or Grad-CAM++) maps of prepared images for ``classes`` (default: the predicted ones)."""
        return GradCAM(self.model, target_layer, method, self.batch_size)(self.normalize(images), classes)


# ---------------------------------------------------------------------- the exported model

ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"  # the names gtsrb.export gives the graph's ends


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session (``threads``: intra-op threads; None = ONNX Runtime's default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """A ``model.onnx`` written by :mod:`gtsrb.export`, behind the part of :class:`Predictor`'s interface that
    needs no gradients: images are prepared from its metadata exactly as for the checkpoint, and ONNX
    Runtime computes the calibrated probabilities (Grad-CAM needs the PyTorch checkpoint)."""

    def __init__(self, path: str | Path, batch_size: int = 256, threads: int | None = None) -> None:
        import json

        self.checkpoint = Path(path).expanduser()
        if not self.checkpoint.is_file():
            raise UserError(f"ONNX model {self.checkpoint} does not exist; export one with "
                            "uv run python -m gtsrb.export ckpt_path=<run>")
        try:
            self.session = onnx_session(self.checkpoint, threads)
            meta = self.session.get_modelmeta().custom_metadata_map
            self.spec = InputSpec(int(meta["image_size"]), tuple(json.loads(meta["mean"])),
                                  tuple(json.loads(meta["std"])), meta["preprocess"], json.loads(meta["roi_crop"]))
            self.class_names = list(json.loads(meta["class_names"]))
            self.temperature = float(meta["temperature"])
            self.model_name = meta.get("model_name", self.checkpoint.stem)
            self.source_checkpoint = Path(meta["source_checkpoint"]) if meta.get("source_checkpoint") else None
        except (KeyError, ValueError) as exc:
            raise UserError(f"{self.checkpoint} lacks this project's metadata ({exc}); export it with "
                            "uv run python -m gtsrb.export") from exc
        except Exception as exc:  # onnxruntime's own errors for a file that is no ONNX model
            reason = first_line(exc, 120)
            raise UserError(f"cannot load ONNX model {self.checkpoint} ({reason}); export it again with "
                            "uv run python -m gtsrb.export") from exc
        self.batch_size = batch_size

    def load(self, paths: Sequence[str | Path], rois: Mapping[str, Roi] | None = None) -> torch.Tensor:
        return load_images(self.spec, paths, rois)

    def prepare(self, images) -> torch.Tensor:
        return prepare_images(self.spec, images)

    def probabilities(self, images) -> torch.Tensor:
        """Calibrated class probabilities [N, C] of prepared images (the temperature is inside the graph)."""
        out = [torch.from_numpy(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: images[s:s + self.batch_size].numpy()})[0])
               for s in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def explain(self, *args, **kwargs):
        raise UserError("Grad-CAM needs gradients, which an ONNX model does not give; serve the PyTorch checkpoint "
                        "(model=<run dir or .ckpt>) for Grad-CAM overlays")


def load_predictor(path: str | Path, device: str = "auto", batch_size: int = 256) -> Predictor | OnnxPredictor:
    """A ``.onnx`` file as an :class:`OnnxPredictor`; anything else (run directory, ``.ckpt``, evaluation
    directory) as a :class:`Predictor` from its checkpoint."""
    if str(path).endswith(".onnx"):
        return OnnxPredictor(path, batch_size)
    return Predictor.from_checkpoint(path, device, batch_size)
