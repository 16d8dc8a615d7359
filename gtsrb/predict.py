"""Classify your own images with a trained checkpoint: top-k classes with calibrated probabilities.

Usage::

    uv run python -m gtsrb.predict CHECKPOINT IMAGE_OR_FOLDER [...] [--top-k 5] [--json]
                                   [--gradcam] [--output DIR] [--expect-classes 43] [--roi-csv GT.csv]

CHECKPOINT is a ``.ckpt`` file, a training run directory (its best
checkpoint) or an ``evaluate.py`` directory (its ``calibrated.ckpt``, whose
temperature makes the probabilities trustworthy). Images are prepared as in
training and evaluation (:mod:`gtsrb.inference`): resized to the model's
size, contrast-normalised with its ``data.preprocess``, and, for a model
trained on ROI crops, cropped to the sign boxes of ``--roi-csv``. The table goes to stdout (``--json`` prints
JSON instead); ``--output`` also writes ``predictions.json`` and, with
``--gradcam``, one Grad-CAM overlay per image.

Every input is checked before anything is written: a missing or foreign
checkpoint, an unreadable or non-image file, or a model with another number
of classes than ``--expect-classes`` ends in one ``error:`` line (exit 2), and
the output folder only appears, complete, once every prediction succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gtsrb.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_images(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """The image files named or contained (recursively) in ``inputs``, and the other files skipped in folders.

    A file named explicitly must be an image; in a folder, files of other
    kinds (a README, a CSV) are skipped and reported.
    """
    images, skipped = [], []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            images += [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
                raise UserError(f"no images in {path} (looked for {', '.join(IMAGE_SUFFIXES)}); "
                                "give an image file or a folder that holds some")
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{path} is not an image file ({path.suffix or 'no extension'}); "
                                f"give a {', '.join(IMAGE_SUFFIXES)} file or a folder of them")
            images.append(path)
        else:
            raise UserError(f"{path} does not exist; give an image file or a folder of images")
    return images, skipped


def _prepare_output(output: Path | None) -> None:
    if output is not None and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"output folder {output} already exists and is not empty; give a new --output folder")


def predict(checkpoint: str, inputs: list[str], top_k: int = 5, gradcam: bool = False, method: str = "gradcam",
            target_layer: str | None = None, output: str | None = None, expect_classes: int | None = None,
            device: str = "auto", batch_size: int = 64, roi_csv: str | None = None) -> dict[str, Any]:
    """Predict every image; write ``output`` (if given) only after all of them succeeded. Returns the JSON report.

    Images go through :class:`gtsrb.inference.Predictor`, the path evaluation takes: the same decoding,
    ROI crop (with ``roi_csv``, a GTSRB annotation CSV), resize, ``data.preprocess`` and normalisation.
    """
    from gtsrb.data.gtsrb import read_rois
    from gtsrb.inference import Predictor

    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be 1 or more")
    out_dir = Path(output).expanduser() if output else None
    if gradcam and out_dir is None:
        raise UserError("--gradcam needs an --output folder for the overlay images")
    _prepare_output(out_dir)
    rois = read_rois(roi_csv) if roi_csv else None
    predictor = Predictor.from_checkpoint(
        checkpoint, device, batch_size, num_classes=expect_classes, expected_by="--expect-classes",
        fix=f"use a checkpoint of a {expect_classes}-class model, or drop --expect-classes")
    names = predictor.class_names
    paths, skipped = find_images(inputs)
    images = predictor.load(paths, rois)  # all decoded before any output
    probs = predictor.probabilities(images)
    k = min(top_k, len(names))
    top_p, top_i = probs.topk(k, dim=1)
    heatmaps = predictor.explain(images, top_i[:, 0], method, target_layer).heatmaps if gradcam else None
    temperature = predictor.temperature
    report: dict[str, Any] = {
        "checkpoint": str(predictor.checkpoint), "temperature": temperature, "calibrated": temperature != 1.0,
        "top_k": k,
        "predictions": [{"image": str(p), "top_k": [{"class_id": int(c), "class_name": names[int(c)],
                                                      "probability": round(float(q), 6)}
                                                     for q, c in zip(top_p[i], top_i[i])]}
                        for i, p in enumerate(paths)],
        "skipped_files": [str(p) for p in skipped],
    }
    if out_dir is not None:
        _write_output(out_dir, report, images, heatmaps)
    return report


def _write_output(out_dir: Path, report: dict, images: torch.Tensor, heatmaps: torch.Tensor | None) -> None:
    """Write into a hidden staging folder, then rename it into place: all files or none."""
    from gtsrb.explain.overlays import overlay_filename, save_overlay

    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        if heatmaps is not None:
            (staging / "gradcam").mkdir()
            for i, entry in enumerate(report["predictions"]):
                best = entry["top_k"][0]
                name = f"{Path(entry['image']).stem[:40]}_" + overlay_filename(i, None, best["class_name"],
                                                                              best["probability"])
                save_overlay(staging / "gradcam" / name, images[i], heatmaps[i])
                entry["gradcam"] = str(out_dir / "gradcam" / name)
        (staging / "predictions.json").write_text(json.dumps(report, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # checked empty before
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def format_table(report: dict) -> str:
    """A plain-text table: one block per image, one line per rank."""
    width = max([len("image")] + [len(Path(p["image"]).name) for p in report["predictions"]])
    lines = [f"{'image':<{width}}  rank  {'class':<44}  probability"]
    for entry in report["predictions"]:
        for rank, hit in enumerate(entry["top_k"], start=1):
            image = Path(entry["image"]).name if rank == 1 else ""
            label = f"{hit['class_name']} ({hit['class_id']})"
            lines.append(f"{image:<{width}}  {rank:>4}  {label:<44}  {hit['probability']:.4f}")
    note = (f"probabilities calibrated with temperature {report['temperature']:.3f}" if report["calibrated"] else
            "probabilities NOT calibrated (temperature 1); calibrate with: uv run evaluate.py ckpt_path=<run>, "
            "then predict with <evaluation dir>/calibrated.ckpt")
    return "\n".join([*lines, note])


def main(argv: list[str] | None = None) -> int:
    from gtsrb.cli import fail

    parser = argparse.ArgumentParser(prog="python -m gtsrb.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help=".ckpt file, training run directory, or evaluate.py output directory")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--gradcam", action="store_true",
                        help="write a Grad-CAM overlay per image into --output (default: outputs/predict/<time>)")
    parser.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    parser.add_argument("--target-layer", default=None, help="Grad-CAM layer (module name); default: last stage")
    parser.add_argument("--output", default=None, help="folder for predictions.json and overlays (must be new)")
    parser.add_argument("--expect-classes", type=int, default=None,
                        help="refuse a checkpoint with another number of classes (e.g. 43 for GTSRB)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--roi-csv", default=None,
                        help="GTSRB annotation CSV (Filename;Width;Height;Roi.X1;...): crop the images it lists to "
                             "their sign, as a model trained with data.roi_crop=true expects")
    args = parser.parse_args(argv)
    if args.gradcam and args.output is None:
        args.output = str(Path("outputs") / "predict" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    try:
        report = predict(args.checkpoint, args.inputs, args.top_k, args.gradcam, args.method, args.target_layer,
                         args.output, args.expect_classes, args.device, roi_csv=args.roi_csv)
    except UserError as exc:
        fail(str(exc))
    if report["skipped_files"]:
        print(f"skipped {len(report['skipped_files'])} non-image file(s), e.g. {report['skipped_files'][0]}",
              file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    if args.output:
        print(f"written: {Path(args.output) / 'predictions.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
