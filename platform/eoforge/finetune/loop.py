"""The per-worker fine-tuning loop (Ray Train; one process per GPU or CPU slot).

Each worker builds the same model (the backbone from its :class:`BackboneSpec`, a seeded
head), trains on its shard of the label subset, and every ``eval_every_epochs`` evaluates
its shard of ``val`` with the unwrapped model. Confusion matrices (or multi-label scores) are
summed across workers, so the metrics are exact for the whole split. Every evaluation is a
``ray.train.report`` (a barrier; Tune sees it through ``TuneReportCallback``, which is what
ASHA acts on). The best weights on ``val`` are kept; at the end they are evaluated on
``test`` and rank 0 writes the final metrics, the per-class table and the checkpoint.
Every ``checkpoint_every_evals``-th evaluation also carries a checkpoint (weights, optimiser,
the best weights so far), so a run restarted after a lost worker or node (Ray Train's
``FailureConfig``; a sweep's trial restarted by Tune) resumes from it, not from epoch 0.

The loop reads as its steps: :func:`setup_worker` (model, optimiser, restored state, the
splits), then per epoch :func:`train_epoch` and, every ``eval_every_epochs``,
:func:`validate`; :func:`final_report` at the end. What they share lives in one
:class:`FinetuneWorker`.

Linear probe: the backbone's parameters get no gradient and its BatchNorm stays in eval
mode, so its weights and statistics end exactly as they started (``eoforge.backbone_sha256_*``
tags on the run let a user check it). Probes of whole-chip tasks do not come here: they run
on features computed once, in the job's own process (:mod:`eoforge.finetune.probe_job`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eoforge.config.finetune import FinetuneConfig
from eoforge.finetune.policy import (
    augment_batch,
    batch_rng,
    head_only_epochs,
    param_groups,
    set_backbone_trainable,
)
from eoforge.progress import say
from eoforge.tracking.runs import MetricLogger
from eoforge.train.worker_kit import (
    WorkerSeat,
    adamw,
    gather_lists,
    lr_factor,
    report,
    restore_checkpoint,
    save_state,
    sum_across_workers,
    take_seat,
)

FINETUNE_STATE_FILE = "finetune_state.pt"


def _targets(task: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack(
        [task.target(batch["label"][i], str(batch["item_labels"][i])) for i in range(len(batch["chip_id"]))]
    )


def _loss(task: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target.long(), ignore_index=task.ignore_index)


def model_inputs(batch: dict[str, np.ndarray], device: torch.device, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(s1, s2) float32 on ``device`` from a cached batch in storage units, normalised there."""
    from eoforge.data.normalize import normalize_batch

    s2, s1 = normalize_batch(*(torch.from_numpy(np.asarray(batch[k])).to(device) for k in ("s2", "s1", "valid")), mode)
    return s1, s2


def evaluate(
    model: torch.nn.Module, shard: Any, task: Any, batch_size: int, device: torch.device, mode: str = "ssl4eo"
) -> dict[str, Any]:
    """Evaluate a split shard: headline metrics plus ``per_class`` ([K] lists), summed over workers."""
    from eoforge.finetune.metrics import (
        confusion,
        multilabel_metrics,
        multilabel_per_class,
        per_class_from_confusion,
        single_label_metrics,
    )

    model.eval()
    k = task.num_classes
    cm = np.zeros((k, k), np.float64)
    scores: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    n = 0
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            target = _targets(task, batch)
            logits = model(*model_inputs(batch, device, mode))
            n += len(target)
            if task.kind == "multilabel":
                scores.append(torch.sigmoid(logits).cpu().numpy())
                targets.append(target)
            else:
                cm += confusion(target, logits.argmax(dim=1).cpu().numpy(), k, task.ignore_index)
    n = int(sum_across_workers(np.array([n]))[0])
    if task.kind == "multilabel":
        all_scores = gather_lists([s for s in scores])
        all_targets = gather_lists([t for t in targets])
        s = np.concatenate(all_scores) if all_scores else np.zeros((0, k))
        t = np.concatenate(all_targets) if all_targets else np.zeros((0, k))
        metrics: dict[str, Any] = multilabel_metrics(s, t)
        per_class = multilabel_per_class(s, t) if len(t) else {}
    else:
        cm = sum_across_workers(cm)
        metrics = single_label_metrics(cm, segmentation=task.kind == "segmentation")
        per_class = per_class_from_confusion(cm)
    metrics["n"] = n
    metrics["per_class"] = {key: [float(v) for v in vals] for key, vals in per_class.items()}
    return metrics


def per_class_csv(classes: tuple[str, ...], per_class: dict[str, list[float]]) -> str:
    """The per-class table as CSV text (one row per class)."""
    out = io.StringIO()
    cols = list(per_class)
    writer = csv.writer(out)
    writer.writerow(["class", *cols])
    for i, name in enumerate(classes):
        writer.writerow([name, *(round(per_class[c][i], 6) for c in cols)])
    return out.getvalue()


SPLITS = ("train", "val", "test")


class InMemorySplit:
    """A labelled split in this worker's memory (``materialize: true``), with Ray Data's ``iter_batches`` call.

    Labelled subsets are small (tens to thousands of chips) and trained for many epochs: one read
    of the chip cache replaces a Ray Data pipeline per epoch. ``train``: every worker holds the
    whole split and takes its share of a global per-epoch permutation, the same number of rows on
    each worker (the last ``n % world`` rows of the permutation sit the epoch out), so DDP steps
    stay in lockstep. Evaluation splits: each worker holds ``ids[rank::world]``.
    """

    def __init__(self, chips: dict[str, np.ndarray], rank: int, world: int, train: bool) -> None:
        self.chips, self.rank, self.world, self.train = chips, rank, world, train

    def iter_batches(
        self,
        batch_size: int,
        batch_format: str = "numpy",
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ) -> Any:
        """Batches of dicts of numpy arrays (``batch_format`` must be ``numpy``)."""
        n = len(self.chips.get("chip_id", ()))
        order = np.arange(n)
        if self.train:
            if local_shuffle_seed is not None:
                order = np.random.default_rng(local_shuffle_seed).permutation(n)
            order = order[: n - n % self.world][self.rank :: self.world]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield {k: v[idx] for k, v in self.chips.items()}


def split_source(config: dict[str, Any], name: str, rank: int, world: int) -> Any:
    """A split's batches on this worker: in memory (``config["chips"]``) or the Ray Data shard."""
    import ray.train

    chips = config.get("chips")
    if chips is None:
        return ray.train.get_dataset_shard(name)
    from eoforge.finetune.labelled import load_cached_chips

    ids = chips[name] if name == "train" else chips[name][rank::world]
    return InMemorySplit(load_cached_chips(chips["cache"], ids), rank, world, train=name == "train")


def _flat(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items() if k != "per_class"}


@dataclass
class FinetuneWorker(WorkerSeat):
    """One worker's part of a fine-tuning run: its seat (``core``: the FinetuneModel), its splits, the best epoch.

    ``best_state`` is the state dict of the best epoch on ``val`` (by ``metric_key``), None
    before the first evaluation.
    """

    cfg: FinetuneConfig
    task: Any
    shards: dict[str, Any]  # train / val / test: this worker's batches of each split
    metric_key: str
    start_epoch: int = 0
    best_value: float = -np.inf
    best_epoch: int = 0
    best_state: dict[str, Any] | None = None
    head_only_epochs: int = 0  # lp_ft: the first epochs train the head alone (eoforge.finetune.policy)
    base_lrs: tuple[float, ...] = ()  # each parameter group's lr before the schedule (optim.schedule)
    steps_per_epoch: int = 1  # optimiser steps of one epoch on this worker (the schedule's clock)


def setup_worker(config: dict[str, Any]) -> FinetuneWorker:
    """The model (backbone from its spec, seeded head) and optimiser, the checkpoint restored, the splits.

    A linear probe freezes the backbone; otherwise a pretrained backbone's parameters train at
    ``optim.lr * optim.backbone_lr_scale`` and a scratch one's at ``optim.lr``
    (:mod:`eoforge.finetune.policy`). Rank 0 tags a fresh run with the backbone's sha256 and the
    number of head-only epochs (``lp_ft``).
    """
    from eoforge.finetune.backbone_source import load_backbone, state_sha256
    from eoforge.finetune.probe import PROBE_MODES
    from eoforge.finetune.task_heads import FinetuneModel
    from eoforge.finetune.tasks import Task

    cfg = FinetuneConfig.model_validate(config["cfg"])
    task = Task(**config["task"])
    torch.manual_seed(cfg.train.seed)
    backbone = load_backbone(config["backbone"], config["mlflow"]["uri"])
    sha_start = state_sha256(backbone)
    probe = cfg.mode in PROBE_MODES
    model = FinetuneModel(backbone, task.kind, task.num_classes, int(config["chip_size"]), probe=probe)
    pretrained = cfg.backbone.source != "scratch"
    groups = param_groups(model, cfg.optim.lr, cfg.optim.backbone_lr_scale, pretrained, cfg.mode == "linear_probe")
    if cfg.mode == "linear_probe":
        model.freeze_backbone()
    head_only = head_only_epochs(cfg.mode, cfg.optim.lp_fraction, cfg.train.epochs)
    opt = adamw(groups, weight_decay=cfg.optim.weight_decay)
    base_lrs = tuple(float(g["lr"]) for g in opt.param_groups)  # before a restored state's decayed lrs
    state = restore_checkpoint(FINETUNE_STATE_FILE)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    seat = take_seat(model, opt, config["mlflow"], some_parameters_idle=head_only > 0)
    if seat.logger is not None and state is None:
        seat.logger.client.set_tag(seat.logger.run_id, "eoforge.backbone_sha256_start", sha_start)
        seat.logger.client.set_tag(seat.logger.run_id, "eoforge.head_only_epochs", str(head_only))
    w = FinetuneWorker(
        **vars(seat),
        cfg=cfg,
        task=task,
        shards={name: split_source(config, name, seat.rank, seat.world) for name in SPLITS},
        metric_key=cfg.metric.split("/", 1)[1],
        head_only_epochs=head_only,
        base_lrs=base_lrs,
        steps_per_epoch=max(1, int(config.get("steps_per_epoch", 1))),
    )
    if state is not None:
        w.start_epoch, w.best_value, w.best_epoch = state["epoch"], state["best_value"], state["best_epoch"]
        w.best_state = state["best_state"]
        if w.logger is not None:
            say(f"resumed from checkpoint at epoch {w.start_epoch}")
            w.logger.log({"resumed_from_epoch": w.start_epoch}, w.start_epoch)
    return w


def train_epoch(w: FinetuneWorker, epoch: int) -> tuple[float, int]:
    """One pass over this worker's train shard; (mean loss over every worker's batches, chips seen here).

    ``lp_ft``: the backbone is frozen in the first ``head_only_epochs`` epochs. With ``train.augment``
    each batch's chips are flipped and rotated (a draw per seed, rank, epoch and step).
    """
    cfg, bs = w.cfg, w.cfg.train.batch_size
    if w.head_only_epochs:
        set_backbone_trainable(w.core, epoch >= w.head_only_epochs)
    w.model.train()
    losses, seen = [], 0
    batches = w.shards["train"].iter_batches(
        batch_size=bs,
        batch_format="numpy",
        local_shuffle_buffer_size=4 * bs,
        local_shuffle_seed=cfg.train.seed + epoch,
    )
    for step, batch in enumerate(batches):
        if cfg.train.augment:
            batch = augment_batch(batch, batch_rng(cfg.train.seed + 1000 * w.rank, epoch, step))
        target = torch.from_numpy(_targets(w.task, batch)).to(w.device)
        logits = w.model(*model_inputs(batch, w.device, cfg.data.normalize))
        loss = _loss(w.task, logits, target)
        w.opt.zero_grad(set_to_none=True)
        loss.backward()
        set_scheduled_lr(w, epoch * w.steps_per_epoch + step)
        w.opt.step()
        losses.append(float(loss.detach()))
        seen += len(target)
    loss_sum, n_batches = sum_across_workers(np.array([sum(losses), len(losses)]))
    return float(loss_sum / max(n_batches, 1.0)), seen


def set_scheduled_lr(w: FinetuneWorker, global_step: int) -> float:
    """Each parameter group's lr at optimiser step ``global_step`` (0-based) of ``epochs * steps_per_epoch``.

    A pure function of the step, so a resumed run continues the schedule where it stopped. Returns the factor.
    """
    o = w.cfg.optim
    factor = lr_factor(global_step, o.warmup_steps, w.cfg.train.epochs * w.steps_per_epoch, o.schedule, 0.0)
    for group, base in zip(w.opt.param_groups, w.base_lrs, strict=True):
        group["lr"] = base * factor
    return factor


def validate(w: FinetuneWorker, epoch: int, train_loss: float) -> dict[str, float]:
    """Evaluate ``val`` after ``epoch``; keep the weights when they are the best so far; the epoch's metrics."""
    val = evaluate(w.core, w.shards["val"], w.task, w.cfg.train.batch_size, w.device, w.cfg.data.normalize)
    if val[w.metric_key] > w.best_value:
        w.best_value, w.best_epoch = float(val[w.metric_key]), epoch + 1
        w.best_state = copy.deepcopy(w.core.state_dict())
    lr = float(w.opt.param_groups[0]["lr"])  # the head's, as the epoch's last step set it
    return {
        "epoch": epoch + 1,
        "train/loss": train_loss,
        "train/lr": lr,
        **_flat("val", val),
        "best/" + w.metric_key: w.best_value,
    }


def save_checkpoint(w: FinetuneWorker, epoch: int, final: dict[str, Any] | None = None) -> str | None:
    """Rank 0's checkpoint folder (weights, optimiser, best epoch and its weights; ``final_metrics.json``)."""
    if w.rank != 0:
        return None
    state = {
        "model": w.core.state_dict(),
        "optimizer": w.opt.state_dict(),
        "epoch": epoch,
        "best_value": w.best_value,
        "best_epoch": w.best_epoch,
        "best_state": w.best_state,
    }
    state_dir = save_state(state, FINETUNE_STATE_FILE)
    if final is not None:
        (Path(state_dir) / "final_metrics.json").write_text(json.dumps(final))
    return state_dir


def log_per_class(logger: MetricLogger, classes: tuple[str, ...], split_name: str, res: dict[str, Any]) -> None:
    """A split's per-class table as ``metrics/per_class_<split>.csv`` and ``.json`` artifacts (rank 0)."""
    if not res["per_class"]:
        return
    client, run_id = logger.client, logger.run_id
    client.log_text(run_id, per_class_csv(classes, res["per_class"]), f"metrics/per_class_{split_name}.csv")
    rows = [{"class": c, **{k: v[i] for k, v in res["per_class"].items()}} for i, c in enumerate(classes)]
    client.log_table(
        run_id, data={k: [r[k] for r in rows] for k in rows[0]}, artifact_file=f"metrics/per_class_{split_name}.json"
    )


def final_report(w: FinetuneWorker) -> None:
    """The best-on-val weights evaluated on ``val`` and ``test``; logged, checkpointed and reported."""
    from eoforge.finetune.backbone_source import state_sha256

    cfg, bs = w.cfg, w.cfg.train.batch_size
    if w.best_state is not None:
        w.core.load_state_dict(w.best_state)
    val = evaluate(w.core, w.shards["val"], w.task, bs, w.device, cfg.data.normalize)
    test = evaluate(w.core, w.shards["test"], w.task, bs, w.device, cfg.data.normalize)
    final = {
        "epoch": cfg.train.epochs,
        "best_epoch": w.best_epoch,
        **_flat("val", val),
        **_flat("test", test),
        "best/" + w.metric_key: float(val[w.metric_key]),
    }
    if w.logger is not None:
        w.logger.log(final, cfg.train.epochs + 1)
        w.logger.close()  # sent (the driver reads the final metrics from the run), or counted as lost
        w.logger.client.set_tag(w.logger.run_id, "eoforge.backbone_sha256_end", state_sha256(w.core.backbone))
        for split_name, res in (("val", val), ("test", test)):
            log_per_class(w.logger, w.task.classes, split_name, res)
    report(final, save_checkpoint(w, cfg.train.epochs, final))


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entrypoint. ``config``: ``cfg`` (FinetuneConfig dict), ``task``, ``backbone`` (spec), ``mlflow``."""
    w = setup_worker(config)
    epochs = w.cfg.train.epochs
    for epoch in range(w.start_epoch, epochs):
        t0 = time.perf_counter()
        train_loss, seen = train_epoch(w, epoch)
        if (epoch + 1) % w.cfg.train.eval_every_epochs and epoch + 1 != epochs:
            continue
        metrics = validate(w, epoch, train_loss)
        if w.logger is not None:
            w.logger.log(metrics, epoch + 1)
            say(
                f"epoch {epoch + 1}/{epochs} loss {train_loss:.4f} {w.cfg.metric} {metrics['val/' + w.metric_key]:.4f} "
                f"({seen} chips on rank 0 in {time.perf_counter() - t0:.1f}s)"
            )
        if epoch + 1 != epochs:
            evals_done = (epoch + 1) // w.cfg.train.eval_every_epochs
            keep = evals_done % w.cfg.train.checkpoint_every_evals == 0
            report(metrics, save_checkpoint(w, epoch + 1) if keep else None)
    final_report(w)
