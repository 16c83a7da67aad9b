"""Probes on frozen features: a linear head (``linear_probe``) or k nearest neighbours (``knn``).

A frozen backbone in eval mode gives every chip the same features at every step, so they are
computed once per split (:mod:`eoforge.finetune.probe_job`) and the probe works on them:
thousands of head steps cost what one backbone pass costs. This is exactly what training the
head through the frozen backbone would compute, minus the repeated forward passes.

- ``linear_probe``: the model's head (``BatchNorm1d`` without affine + ``Linear``, see
  :mod:`eoforge.finetune.task_heads`) trains with AdamW on minibatches of train features for the
  job's step budget (``train.steps``, else ``epochs`` x batches per epoch); it is evaluated on
  val ``train.evals`` times (or every ``eval_every_epochs``), the best state on val is kept, and
  test is evaluated once, at that state.
- ``knn``: cosine similarity between L2-normalised features; a query's class scores are the
  similarity-weighted votes of its k nearest train chips (multi-label: the weighted mean of their
  label vectors). Each ``train.knn_k`` is scored on val; test is reported at the best k.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Modes that train no backbone: their head (or kNN) works on frozen, standardised features.
PROBE_MODES = ("linear_probe", "knn")


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


def probe_schedule(n_train: int, batch_size: int, epochs: int, steps: int | None, evals: int, every: int) -> list[int]:
    """The steps (1-based) after which val is evaluated; the last is the total step count."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    total = steps if steps is not None else epochs * per_epoch
    if steps is not None:
        gap = max(1, math.ceil(total / evals))
    else:
        gap = every * per_epoch
    marks = list(range(gap, total, gap))
    return [*marks, total]


def train_linear_probe(
    head: torch.nn.Module,
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    task: Any,
    lr: float,
    weight_decay: float,
    batch_size: int,
    schedule: list[int],
    seed: int,
    metric_key: str,
    on_eval: Callable[[int, float, dict[str, Any]], None],
) -> tuple[dict[str, Any], int, float]:
    """Train ``head`` on train features; (best state on val, its step, its val metric).

    ``on_eval(step, train loss, val metrics)`` is called at every evaluation (report, log).
    """
    feats, target = train
    device = feats.device
    y = torch.from_numpy(np.asarray(target)).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(feats), generator=gen)
    pos, losses = 0, []
    best_state, best_step, best_value = copy.deepcopy(head.state_dict()), 0, -np.inf
    step = 0
    for mark in schedule:
        head.train()
        while step < mark:
            if pos + batch_size > len(order) and pos > 0:  # a new epoch: reshuffle
                order, pos = torch.randperm(len(feats), generator=gen), 0
            idx = order[pos : pos + batch_size].to(device)
            pos += batch_size
            logits = head(feats[idx]) if len(idx) > 1 else head.eval()(feats[idx])
            if task.kind == "multilabel":
                loss = F.binary_cross_entropy_with_logits(logits, y[idx].float())
            else:
                loss = F.cross_entropy(logits, y[idx].long(), ignore_index=task.ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            head.train()
            losses.append(float(loss.detach()))
            step += 1
        head.eval()
        with torch.no_grad():
            metrics = score(task, head(val[0]), val[1])
        if metrics[metric_key] > best_value:
            best_value, best_step, best_state = float(metrics[metric_key]), step, copy.deepcopy(head.state_dict())
        on_eval(step, float(np.mean(losses[-50:])) if losses else float("nan"), metrics)
    return best_state, best_step, best_value
