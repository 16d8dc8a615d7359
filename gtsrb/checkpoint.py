"""Find, check and load the checkpoints that ``train.py`` writes; save a calibrated copy.

Used by every command that starts from a trained model: evaluation,
prediction (:mod:`gtsrb.inference`), export and serving. Every mistake a user
can make here (a wrong path, a run directory without a best checkpoint, a
file that is no checkpoint, a checkpoint of another model or another number
of classes) ends in a one-line :class:`UserError`, never in a traceback from
deep inside ``torch.load``.

torch is imported inside the functions that need it, so that the command
line can resolve a path (and fail on a wrong one) within a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gtsrb.errors import UserError, first_line

if TYPE_CHECKING:
    import torch

    from gtsrb.module import TrafficSignClassifier

_REQUIRED_HPARAMS = ("model", "optimizer", "scheduler", "class_names")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or the checkpoint a run directory stands for.

    An evaluation directory stands for its ``calibrated.ckpt``. In a training
    run directory, ``metrics.json`` names the checkpoint the run ended on (the
    best, or the last with ``final_checkpoint=last``); without it (a run that
    was interrupted) the newest ``checkpoints/best-*.ckpt``.
    """
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.exists():
        raise UserError(f"checkpoint {given} does not exist; pass ckpt_path=<run directory> or "
                        "ckpt_path=<run>/checkpoints/<file>.ckpt")
    if (given / "calibrated.ckpt").is_file():
        return given / "calibrated.ckpt"
    metrics = given / "metrics.json"
    if metrics.is_file():
        try:
            best = json.loads(metrics.read_text()).get("best_checkpoint") or ""
        except (json.JSONDecodeError, AttributeError):
            best = ""
        if best and Path(best).is_file():
            return Path(best)
        if best and (given / "checkpoints" / Path(best).name).is_file():  # the run directory was moved
            return given / "checkpoints" / Path(best).name
    candidates = sorted((given / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if candidates:
        return candidates[-1]
    raise UserError(f"{given} holds no best checkpoint (checkpoints/best-*.ckpt); pass the .ckpt file itself, "
                    "e.g. ckpt_path=<run>/checkpoints/last.ckpt")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dictionary, checked to be one of :class:`TrafficSignClassifier`."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and I/O errors come in many types
        reason = first_line(exc, 120)
        raise UserError(f"cannot read checkpoint {path} ({reason}); pass a .ckpt file written by train.py") from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or any(k not in hparams for k in _REQUIRED_HPARAMS) \
            or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path} is not a checkpoint of this project's TrafficSignClassifier (no model "
                        "hyperparameters or class names); pass a .ckpt file written by train.py")
    return ckpt


def load_classifier(path: Path, ckpt: dict[str, Any] | None = None, model_overrides: dict | None = None,
                    num_classes: int | None = None, device: str | torch.device = "cpu", expected_by: str = "the data",
                    fix: str = "use a checkpoint trained on these classes, or the data it was trained on",
                    ) -> "TrafficSignClassifier":
    """Rebuild the model from its saved hyperparameters and load the weights, in eval mode.

    The network is built without pretrained weights (the checkpoint holds the
    trained ones), so a model that was fine-tuned from ImageNet loads offline.
    ``num_classes``, when given, is the number of classes the caller expects
    (``expected_by`` says who, ``fix`` what to do); a checkpoint with another
    number is refused.
    """
    import torch

    from gtsrb.module import TrafficSignClassifier

    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hparams = dict(ckpt["hyper_parameters"])
    model_cfg = {**hparams["model"], **(model_overrides or {}), "pretrained": False, "weights": None}
    names = list(hparams["class_names"])
    head = _head_size(ckpt["state_dict"])
    if head is not None and head != len(names):
        raise UserError(f"{path} has a {head}-way classifier but names {len(names)} classes; "
                        "it was not written by train.py, pass one that was")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"{path} classifies {len(names)} classes, not the {num_classes} of {expected_by}; {fix}")
    hparams["model"] = model_cfg
    known = ("model", "optimizer", "scheduler", "class_names", "label_smoothing", "backbone_lr_ratio",
             "channels_last", "monitor", "monitor_mode")
    module = TrafficSignClassifier(**{k: v for k, v in hparams.items() if k in known})
    state = dict(ckpt["state_dict"])
    state.setdefault("temperature", torch.ones(()))  # checkpoints from before calibration existed
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"the weights in {path} do not fit a {model_cfg['name']} with {len(names)} classes; "
                        "drop the model.* overrides or pass a checkpoint of this model") from exc
    return module.to(device).eval()


def _head_size(state_dict: dict[str, "torch.Tensor"]) -> int | None:
    """Output size of the last 2-D weight of the network (the classifier), or None if there is none."""
    weights = [v for k, v in state_dict.items() if k.startswith("model.") and k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


def save_calibrated(ckpt: dict[str, Any], temperature: float, dest: Path, info: dict[str, Any]) -> Path:
    """The original checkpoint with the fitted temperature buffer, written atomically to ``dest``.

    Loading it (``TrafficSignClassifier.load_from_checkpoint`` or
    :func:`load_classifier`) gives calibrated probabilities in ``predict_step``.
    """
    import torch

    calibrated = dict(ckpt)
    calibrated["state_dict"] = {**ckpt["state_dict"], "temperature": torch.tensor(float(temperature))}
    calibrated["calibration"] = info
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save(calibrated, tmp)
    os.replace(tmp, dest)
    return dest
