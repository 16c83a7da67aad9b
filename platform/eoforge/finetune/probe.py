"""Probes on frozen features: a linear head (``linear_probe``) or k nearest neighbours (``knn``).

A frozen backbone in eval mode gives every chip the same features at every step, so they are
computed once per split (:mod:`eoforge.finetune.probe_job`) and the probe works on them:
thousands of head steps cost what one backbone pass costs. This is exactly what training the
head through the frozen backbone would compute, minus the repeated forward passes.

- ``linear_probe``: the model's head (``BatchNorm1d`` without affine + ``Linear``, see
  :mod:`eoforge.finetune.task_heads`) is an L2-regularised logistic regression on the train
  features standardised by their own mean and variance, **solved** (scikit-learn's L-BFGS, to its
  tolerance) for each inverse strength ``C`` of ``train.probe_c``; the ``C`` with the best val
  metric is kept and test is evaluated once, at it. Multi-label: one binary regression per class.
  A convex problem has one answer per ``C``: no learning rate or step count decides how far the
  probe got. (Before, the head took ``train.steps`` AdamW steps at the sweep's fine-tuning lr, and
  200 steps at 3e-3 left a band-statistics probe about 0.12 test AA below its solved value on the
  benchmark's world-0 plan.)
- ``knn``: cosine similarity between L2-normalised features; a query's class scores are the
  similarity-weighted votes of its k nearest train chips (multi-label: the weighted mean of their
  label vectors). Each ``train.knn_k`` is scored on val; test is reported at the best k.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Modes that train no backbone: their head (or kNN) works on frozen, standardised features.
PROBE_MODES = ("linear_probe", "knn")


def solved_in_process(mode: str, task_kind: str) -> bool:
    """Whether an arm is a probe solved on features computed once (no lr, no steps): knn, or a whole-chip linear probe.

    Segmentation probes train a decoder on Ray Train instead.
    """
    return mode in PROBE_MODES and task_kind != "segmentation"


def score(task: Any, outputs: torch.Tensor, target: np.ndarray, logits: bool = True) -> dict[str, Any]:
    """Headline metrics and ``per_class`` of outputs (N, K) against targets.

    ``logits``: outputs are logits (multi-label: passed through a sigmoid); else class scores in [0, 1].
    """
    from eoforge.finetune.metrics import (
        confusion,
        multilabel_metrics,
        multilabel_per_class,
        per_class_from_confusion,
        single_label_metrics,
    )

    if task.kind == "multilabel":
        s = (torch.sigmoid(outputs) if logits else outputs).cpu().numpy()
        metrics: dict[str, Any] = multilabel_metrics(s, target)
        per_class = multilabel_per_class(s, target) if len(target) else {}
    else:
        cm = confusion(target, outputs.argmax(dim=1).cpu().numpy(), task.num_classes, task.ignore_index)
        metrics = single_label_metrics(cm)
        per_class = per_class_from_confusion(cm)
    metrics["n"] = len(target)
    metrics["per_class"] = {key: [float(v) for v in vals] for key, vals in per_class.items()}
    return metrics


def knn_scores(train_f: torch.Tensor, train_t: np.ndarray, query_f: torch.Tensor, k: int, task: Any) -> torch.Tensor:
    """Class scores (Q, K) of each query from its k most similar train chips (cosine, weighted votes)."""
    a = F.normalize(train_f, dim=1)
    q = F.normalize(query_f, dim=1)
    k = min(k, len(a))
    sims, idx = (q @ a.T).topk(k, dim=1)  # (Q, k)
    weights = sims.clamp_min(0) + 1e-6
    if task.kind == "multilabel":
        labels = torch.from_numpy(np.asarray(train_t, np.float32)).to(q.device)  # (N, K)
    else:
        t = torch.from_numpy(np.asarray(train_t, np.int64)).to(q.device)
        labels = F.one_hot(t.clamp(0, task.num_classes - 1), task.num_classes).float()
        labels[t == task.ignore_index] = 0
    votes = (weights[..., None] * labels[idx]).sum(dim=1)
    return votes / weights.sum(dim=1, keepdim=True)


def run_knn(
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    ks: list[int],
    task: Any,
    metric_key: str,
) -> tuple[int, dict[str, Any], dict[str, Any], dict[int, float]]:
    """(best k on val, val metrics at it, test metrics at it, {k: val metric})."""
    by_k = {k: score(task, knn_scores(*train, val[0], k, task), val[1], logits=False) for k in ks}
    curve = {k: float(m[metric_key]) for k, m in by_k.items()}
    best = max(ks, key=lambda k: (curve[k], -k))
    return best, by_k[best], score(task, knn_scores(*train, test[0], best, task), test[1], logits=False), curve


#: A logit that no softmax or sigmoid turns into a probability above ~1e-4000: classes the train subset lacks.
ABSENT_CLASS_LOGIT = -1e4


def _standardised(head: torch.nn.Module, feats: torch.Tensor) -> np.ndarray:
    """Set the head's ``BatchNorm1d`` statistics to the train features' own; the features as it standardises them."""
    bn = head[0]
    with torch.no_grad():
        bn.running_mean.copy_(feats.mean(dim=0))
        bn.running_var.copy_(feats.var(dim=0, unbiased=False))
        bn.num_batches_tracked.fill_(1)
        return bn.eval()(feats).double().cpu().numpy()


def _solve_classes(z: np.ndarray, y: np.ndarray, k: int, c: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regression of class ids ``y`` (N,) on ``z`` (N, D): weights (K, D), bias (K,), iterations.

    Classes absent from ``y`` get :data:`ABSENT_CLASS_LOGIT`; one present class is predicted everywhere.
    """
    from sklearn.linear_model import LogisticRegression

    weight, bias = np.zeros((k, z.shape[1])), np.full(k, ABSENT_CLASS_LOGIT)
    present = np.unique(y)
    if len(present) == 1:
        bias[present[0]] = 0.0
        return weight, bias, 0
    fit = LogisticRegression(C=c, max_iter=max_iter).fit(z, y)
    if len(present) == 2:  # scikit-learn keeps one row: the logit of classes_[1] against classes_[0]
        bias[present[0]] = 0.0
        weight[present[1]], bias[present[1]] = fit.coef_[0], fit.intercept_[0]
    else:
        weight[fit.classes_], bias[fit.classes_] = fit.coef_, fit.intercept_
    return weight, bias, int(np.max(fit.n_iter_))


def _solve_labels(z: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One binary logistic regression per column of the multi-hot ``y`` (N, K): weights (K, D), bias (K,), iterations.

    A class that is present in every train chip, or in none, gets its smoothed log-odds as a constant.
    """
    from sklearn.linear_model import LogisticRegression

    n, k = y.shape
    weight, bias, iters = np.zeros((k, z.shape[1])), np.zeros(k), 0
    for j in range(k):
        col = y[:, j] > 0.5
        if col.all() or not col.any():
            p = (col.sum() + 0.5) / (n + 1.0)
            bias[j] = np.log(p / (1 - p))
            continue
        fit = LogisticRegression(C=c, max_iter=max_iter).fit(z, col.astype(np.int64))
        weight[j], bias[j], iters = fit.coef_[0], fit.intercept_[0], max(iters, int(np.max(fit.n_iter_)))
    return weight, bias, iters


def fit_linear_probe(
    head: torch.nn.Module,
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    task: Any,
    cs: list[float],
    metric_key: str,
    on_eval: Callable[[int, float, dict[str, Any]], None],
    max_iter: int = 2000,
) -> tuple[dict[str, Any], float, float, int]:
    """Solve the probe for each inverse L2 strength in ``cs``; (best state on val, its C, val metric, iterations).

    Args:
        head: ``Sequential(BatchNorm1d(D, affine=False), Linear(D, K))``; its statistics are set to the
            train features' and its ``Linear`` to the solution.
        train: features (N, D) and targets: class ids (N,) (``task.ignore_index`` rows left out) or
            multi-hot (N, K).
        val: the same for the val split.
        task: the resolved task (kind, class count, ignore index).
        cs: inverse L2 strengths (scikit-learn's ``C``: penalty ||W||^2 / (2 C) against the summed log loss).
        metric_key: the val metric of :func:`score` that picks C (``aa``, ``map``, ...).
        on_eval: ``on_eval(index of C, train log loss, val metrics)`` for each C (report, log).
        max_iter: L-BFGS iterations at most per regression.
    """
    feats, target = train
    z = _standardised(head, feats)
    target = np.asarray(target)
    linear = head[1]
    best: tuple[dict[str, Any], float, float, int] | None = None
    for i, c in enumerate(cs):
        if task.kind == "multilabel":
            weight, bias, iters = _solve_labels(z, target, c, max_iter)
        else:
            keep = target != task.ignore_index
            weight, bias, iters = _solve_classes(z[keep], target[keep], task.num_classes, c, max_iter)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
            linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
        head.eval()
        with torch.no_grad():
            logits = head(feats)
            if task.kind == "multilabel":
                loss = F.binary_cross_entropy_with_logits(logits, torch.as_tensor(target, dtype=logits.dtype))
            else:
                tk = torch.as_tensor(target, dtype=torch.long, device=logits.device)
                loss = F.cross_entropy(logits, tk, ignore_index=task.ignore_index)
            metrics = score(task, head(val[0]), val[1])
        on_eval(i, float(loss), metrics)
        if best is None or metrics[metric_key] > best[2]:
            best = (copy.deepcopy(head.state_dict()), float(c), float(metrics[metric_key]), iters)
    assert best is not None, "fit_linear_probe: cs is empty"
    return best
