"""The per-class tables of the evaluation report, computed from cached logits with torchmetrics.

Everything here is a pure function of ``(logits, labels)``, so the report,
its CSV files and its figures always agree with each other. The headline
metrics are :func:`gtsrb.metrics.compute_metrics`, the ones training logs.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def confusion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Counts [true, predicted]."""
    return multiclass_confusion_matrix(logits, labels, logits.shape[1])


def per_class_rows(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """One row per class: precision, recall, F1, support and accuracy (share of its images classified right).

    For a single class, accuracy and recall are the same number; both columns
    are kept because readers look for either name. Classes without images in
    the split have support 0 and empty (NaN) recall/accuracy.
    """
    c = logits.shape[1]
    precision = multiclass_precision(logits, labels, c, average="none")
    recall = multiclass_recall(logits, labels, c, average="none")
    f1 = multiclass_f1_score(logits, labels, c, average="none")
    matrix = confusion(logits, labels)
    support = matrix.sum(dim=1)
    correct = matrix.diag()
    rows = []
    for i, name in enumerate(class_names):
        n = int(support[i])
        rows.append({"class_id": i, "class_name": name, "precision": round(float(precision[i]), 4),
                     "recall": round(float(recall[i]), 4) if n else float("nan"),
                     "f1": round(float(f1[i]), 4), "support": n,
                     "accuracy": round(float(correct[i]) / n, 4) if n else float("nan")})
    return rows


def confused_pairs(matrix: torch.Tensor, class_names: list[str], top: int = 15) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most images: which sign is taken for which, how often."""
    off = matrix.clone()
    off.fill_diagonal_(0)
    support = matrix.sum(dim=1)
    values, flat = off.flatten().sort(descending=True)
    rows = []
    for count, index in zip(values.tolist(), flat.tolist()):
        if count <= 0 or len(rows) >= top:
            break
        t, p = divmod(index, matrix.shape[1])
        rows.append({"true_id": t, "true_name": class_names[t], "pred_id": p, "pred_name": class_names[p],
                     "count": int(count), "share_of_true_class": round(count / max(int(support[t]), 1), 4)})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
    """Write atomically (a temp file renamed into place), header even for no rows."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or (list(rows[0]) if rows else []))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
