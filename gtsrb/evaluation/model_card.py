"""The model card: ``MODEL_CARD.md`` in Hugging Face's format, written by ``evaluate.py`` next to its report.

A YAML header with a ``model-index`` (the numbers a hub or a reader's tool
picks up), then what a person deciding whether to use the model needs:
intended use, limitations, data and split, how it was trained and the
command that reproduces it, its weakest classes and most-confused pairs,
its calibration and, where FGSM was run, its robustness.

:func:`headline_metrics` reads the same numbers back for the server's
``/info`` and its page, from the evaluation report next to a calibrated
checkpoint, or from the training run of a plain one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gtsrb.data.sources import SOURCES



def headline_metrics(model_path: str | Path | None) -> dict[str, Any]:
    """Test accuracy, macro F1 and ECE of the checkpoint at ``model_path``, as its evaluation report or its
    training run recorded them; empty where neither is found."""
    if model_path is None:
        return {}
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / "metrics.json", folder.parent / "metrics.json"):
        if not candidate.is_file():
            continue
        try:
            report = json.loads(candidate.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(report.get("metrics"), dict):  # an evaluation report
            before = report["metrics"].get("uncalibrated") or {}
            after = report["metrics"].get("calibrated") or {}
            return {"source": str(candidate), "split": report.get("split"), "images": report.get("num_images"),
                    "acc": before.get("acc"), "f1": before.get("f1"), "ece": before.get("ece"),
                    "ece_calibrated": after.get("ece"), "temperature": report.get("temperature")}
        final = report.get("final") or {}
        split = "test" if "test" in final else "val"
        values = final.get(split) or {}
        if values:  # a training run
            return {"source": str(candidate), "split": split, "acc": values.get(f"{split}/acc"),
                    "f1": values.get(f"{split}/f1"), "ece": values.get(f"{split}/ece"), "ece_calibrated": None}
    return {}


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.2f} %" if percent else f"{value:.4f}"


def model_card(report: dict[str, Any], rows: list[dict], pairs: list[dict], training: dict[str, Any] | None) -> str:
    """The card's text from the evaluation ``report`` (metrics.json), per-class ``rows``, confused ``pairs`` and the
    training run's ``metrics.json`` (``None`` when it cannot be found)."""
    data = report["config"]["data"]
    model = report["config"]["model"]
    names = report["config"]["class_names"]
    split = report["split"]
    before = report["metrics"]["uncalibrated"]
    after = report["metrics"]["calibrated"]
    source = SOURCES.get(data.get("source"))
    dataset_id, dataset_name = (source.dataset_id, source.title) if source else ("unknown", str(data.get("source")))
    metrics = [{"type": "accuracy", "value": round(before["acc"], 5), "name": f"{split} accuracy"},
               {"type": "f1", "value": round(before["f1"], 5), "name": f"{split} macro F1"},
               {"type": "ece", "value": round(before["ece"], 5), "name": "ECE (15 bins), before temperature scaling"}]
    if after:
        metrics.append({"type": "ece", "value": round(after["ece"], 5),
                        "name": f"ECE (15 bins), after temperature scaling (T = {report['temperature']:.3f})"})
    header = {
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "traffic-signs", "gtsrb", "lightning", "timm"],
        "datasets": [dataset_id],
        "metrics": ["accuracy", "f1", "ece"],
        "model-index": [{"name": model["name"], "results": [{
            "task": {"type": "image-classification", "name": "Traffic sign classification"},
            "dataset": {"type": dataset_id, "name": dataset_name, "split": split},
            "metrics": metrics}]}],
    }
    size = data["image_size"]
    present = [r for r in rows if r["support"] > 0]
    weakest = sorted(present, key=lambda r: (r["accuracy"], r["class_id"]))[:8]
    command = "uv run train.py " + " ".join(training.get("overrides") or []) if training else None
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {model['name']} traffic-sign classifier ({len(names)} classes, {size}x{size} px)", "",
        f"Evaluated on the **{split}** split of {dataset_name}: {report['num_images']} images, "
        f"accuracy **{_fmt(before['acc'])}**, macro F1 {_fmt(before['f1'])}, "
        f"ECE {_fmt(before['ece'])}" + (f" ({_fmt(after['ece'])} after temperature scaling)" if after else "") + ".",
        "",
        "## Intended use", "",
        f"Classifying cropped images of German road signs into the {len(names)} classes listed below, for research, "
        "teaching and as a baseline. The probabilities are calibrated with the fitted temperature "
        f"(T = {report['temperature']:.3f}) when the model is loaded from `calibrated.ckpt` or exported from it.", "",
        "## Limitations", "",
        f"- It knows only these {len(names)} classes (German signs); any other sign, or no sign at all, is still "
        "assigned one of them, often with high confidence.",
        f"- Input is resized to {size}x{size} px; the image should show one sign, roughly centred and filling most of "
        "the frame" + (" (it was trained on crops to the annotated sign box)" if data.get("roi_crop") else "") + ".",
        f"- Preprocessing `{data.get('preprocess', 'none')}` must be applied as in training "
        "(`gtsrb.inference.Predictor` and the exported ONNX metadata do this).",
        "- Not tested on: other countries' signs, night or heavy weather beyond what the data holds, video "
        "motion blur, adversarial patches, cameras and resolutions other than the dataset's.",
        "", "## Data and split", "",
        f"- Source: {dataset_name} (`data.source={data.get('source')}`), images at {size} px, "
        f"preprocessing `{data.get('preprocess', 'none')}`, ROI crop {bool(data.get('roi_crop'))}.",
        f"- Validation: {source.validation(data) if source else 'unknown'}.",
        f"- Evaluated split: {split}, {report['num_images']} images; checkpoint `{report['checkpoint']}`.",
        "", "## Training", "",
    ]
    if training:
        config = training.get("config") or {}
        lines += [f"- Model `{model['name']}`, optimiser {config.get('optimizer', {}).get('name')} "
                  f"(lr {config.get('optimizer', {}).get('lr')}), scheduler {config.get('scheduler', {}).get('name')}, "
                  f"augmentation {config.get('augmentation', {}).get('name')}, {training.get('epochs')} epochs, "
                  f"seed {config.get('seed')}, {training.get('seconds')} s.",
                  "- Reproduce:", "", "```bash", command, "```"]
    else:
        lines.append("- The training run's metrics.json was not found next to the checkpoint; its config is in the "
                     "checkpoint's hyperparameters.")
    lines += ["", "## Weakest classes", "", "| class | accuracy | F1 | images |", "|---|---:|---:|---:|"]
    lines += [f"| {r['class_name']} ({r['class_id']}) | {_fmt(r['accuracy'])} | {r['f1']:.3f} | {r['support']} |"
              for r in weakest]
    lines += ["", "## Most-confused pairs", ""]
    if pairs:
        lines += ["| true class | predicted as | images | share of the true class |", "|---|---|---:|---:|"]
        lines += [f"| {p['true_name']} | {p['pred_name']} | {p['count']} | {_fmt(p['share_of_true_class'])} |"
                  for p in pairs[:10]]
    else:
        lines.append("No mistakes on this split.")
    lines += ["", "## Calibration", "",
              "| | NLL | ECE (15 bins) |", "|---|---:|---:|",
              f"| T = 1 | {before['nll']:.4f} | {_fmt(before['ece'])} |"]
    if after:
        lines.append(f"| T = {report['temperature']:.3f} (fitted on val) | {after['nll']:.4f} | {_fmt(after['ece'])} |")
        if split == "val":
            lines += ["", "The temperature was fitted and measured on the same validation images, so the calibrated "
                          "figures are optimistic; evaluate on the test split for unbiased ones."]
    if report.get("fgsm"):
        lines += ["", "## Robustness (FGSM)", "", "| epsilon (pixel scale) | accuracy |", "|---:|---:|"]
        lines += [f"| {row['epsilon']:.4f} | {_fmt(row['acc'])} |" for row in report["fgsm"]]
    lines += ["", "## Classes", "", ", ".join(f"{i}: {n}" for i, n in enumerate(names)), ""]
    return "\n".join(lines)


def training_report(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of the training run a checkpoint came from (``<run>/checkpoints/<file>.ckpt``)."""
    for candidate in (Path(checkpoint).parent.parent / "metrics.json", Path(checkpoint).parent / "metrics.json"):
        try:
            report = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "final" in report:
            return report
    return None
