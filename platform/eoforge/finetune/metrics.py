"""Evaluation metrics, from confusion matrices (single-label, pixels) or scores (multi-label).

Confusion matrices are summed across Ray Train workers before the metrics are taken, so
the numbers are exact for the whole split. Classes without a single true sample are
left out of class means (their recall is undefined); they still appear in the per-class
table with support 0.

- classification: ``oa`` (overall accuracy), ``aa`` (average accuracy: class-mean recall,
  the seeds' headline number), ``f1`` (macro F1);
- segmentation: ``pixel_acc``, ``aa`` (class-mean pixel accuracy), ``miou`` (mean IoU);
- multilabel: ``map`` (macro average precision, scikit-learn), ``f1`` (macro F1 at 0.5),
  ``f1_overall`` (micro F1 at 0.5).
"""

from __future__ import annotations

import numpy as np


def confusion(true: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """K x K counts, rows = true class, columns = predicted. ``ignore_index`` entries of ``true`` are dropped."""
    true, pred = true.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    keep = (true != ignore_index) & (true >= 0) & (true < num_classes)
    idx = true[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def per_class_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class support, precision, recall (= class accuracy), F1 and IoU. Each [K]."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    iou = _safe_div(tp, support + predicted - tp)
    return {"support": support, "precision": precision, "recall": recall, "f1": f1, "iou": iou}


def single_label_metrics(cm: np.ndarray, segmentation: bool = False) -> dict[str, float]:
    """Headline metrics of a confusion matrix (see module docstring)."""
    pc = per_class_from_confusion(cm)
    present = pc["support"] > 0
    total = cm.sum()
    acc = float(np.trace(cm) / total) if total else 0.0
    out = {
        "aa": float(pc["recall"][present].mean()) if present.any() else 0.0,
        "f1": float(pc["f1"][present].mean()) if present.any() else 0.0,
    }
    if segmentation:
        out.update(pixel_acc=acc, miou=float(pc["iou"][present].mean()) if present.any() else 0.0)
    else:
        out["oa"] = acc
    return out


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Multi-label metrics of sigmoid scores [N, K] against 0/1 targets [N, K]."""
    from sklearn.metrics import average_precision_score, f1_score

    targets = (targets > 0.5).astype(np.int64)
    present = targets.sum(axis=0) > 0
    if len(targets) == 0 or not present.any():
        return {"map": 0.0, "f1": 0.0, "f1_overall": 0.0}
    pred = (scores >= threshold).astype(np.int64)
    ap = average_precision_score(targets[:, present], scores[:, present], average="macro")
    f1 = f1_score(targets[:, present], pred[:, present], average="macro", zero_division=0)
    f1_all = f1_score(targets, pred, average="micro", zero_division=0)
    return {"map": float(ap), "f1": float(f1), "f1_overall": float(f1_all)}


def multilabel_per_class(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per-class support, precision, recall, F1 and AP for multi-label scores. Each [K]."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    targets = (targets > 0.5).astype(np.int64)
    pred = (scores >= threshold).astype(np.int64)
    k = targets.shape[1]
    precision, recall, f1, _ = precision_recall_fscore_support(
        targets, pred, average=None, zero_division=0, labels=list(range(k))
    )
    ap = np.array(
        [average_precision_score(targets[:, j], scores[:, j]) if targets[:, j].any() else 0.0 for j in range(k)]
    )
    return {
        "support": targets.sum(axis=0).astype(np.float64),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ap": ap,
    }
