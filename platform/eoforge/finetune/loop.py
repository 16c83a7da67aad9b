"""The per-worker fine-tuning loop (Ray Train; one process per GPU or CPU slot).

Each worker builds the same model (the backbone from its :class:`BackboneSpec`, a seeded
head), trains on its shard of the label subset, and every ``eval_every_epochs`` evaluates
its shard of ``val`` with the unwrapped model. Confusion matrices (or multi-label scores) are
summed across workers, so the metrics are exact for the whole split. Every evaluation is a
``ray.train.report`` (a barrier; Tune sees it through ``TuneReportCallback``, which is what
ASHA acts on). The best weights on ``val`` are kept; at the end they are evaluated on
``test`` and rank 0 writes the final metrics, the per-class table and the checkpoint.

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
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eoforge.train.worker_kit import gather_lists, load_state, save_state, sum_across_workers, unwrap

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
    from eoforge.finetune.chip_cache import load_cached_chips

    ids = chips[name] if name == "train" else chips[name][rank::world]
    return InMemorySplit(load_cached_chips(chips["cache"], ids), rank, world, train=name == "train")


def _flat(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items() if k != "per_class"}


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entrypoint. ``config``: ``cfg`` (FinetuneConfig dict), ``task``, ``backbone`` (spec), ``mlflow``."""
    import ray.train
    import ray.train.torch

    from eoforge.config.finetune import FinetuneConfig
    from eoforge.finetune.backbone_source import load_backbone, state_sha256
    from eoforge.finetune.probe import PROBE_MODES
    from eoforge.finetune.task_heads import FinetuneModel
    from eoforge.finetune.tasks import Task
    from eoforge.progress import say
    from eoforge.tracking.runs import MetricLogger

    cfg = FinetuneConfig.model_validate(config["cfg"])
    task = Task(**config["task"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.train.seed)
    backbone = load_backbone(config["backbone"], config["mlflow"]["uri"])
    sha_start = state_sha256(backbone)
    probe = cfg.mode in PROBE_MODES
    model = FinetuneModel(backbone, task.kind, task.num_classes, int(config["chip_size"]), probe=probe)
    head_params = list(model.head.parameters())
    groups = [{"params": head_params, "lr": cfg.optim.lr}]
    if cfg.mode == "linear_probe":
        model.freeze_backbone()
    else:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.optim.lr * cfg.optim.backbone_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
    start_epoch, best_value, best_epoch, best_state = 0, -np.inf, 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d, FINETUNE_STATE_FILE)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best_value, best_epoch = state["epoch"], state["best_value"], state["best_epoch"]
        best_state = state["best_state"]
        if rank == 0:
            say(f"resumed from checkpoint at epoch {start_epoch}")
    model = ray.train.torch.prepare_model(model)
    core = unwrap(model)
    device = ray.train.torch.get_device()
    logger = MetricLogger(config["mlflow"]["uri"], config["mlflow"]["run_id"]) if rank == 0 else None
    if logger is not None and checkpoint is None:
        logger.client.set_tag(logger.run_id, "eoforge.backbone_sha256_start", sha_start)
    if logger is not None and checkpoint is not None:
        logger.log({"resumed_from_epoch": start_epoch}, start_epoch)
    metric_key = cfg.metric.split("/", 1)[1]
    train_shard, val_shard, test_shard = (split_source(config, name, rank, ctx.get_world_size()) for name in SPLITS)
    bs = cfg.train.batch_size

    def save(epoch: int, final: dict[str, Any] | None = None) -> ray.train.Checkpoint | None:
        if rank != 0:
            return None
        state = {
            "model": core.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch,
            "best_value": best_value,
            "best_epoch": best_epoch,
            "best_state": best_state,
        }
        d = save_state(state, FINETUNE_STATE_FILE)
        if final is not None:
            (Path(d) / "final_metrics.json").write_text(json.dumps(final))
        return ray.train.Checkpoint.from_directory(d)

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        t0, losses, seen = time.perf_counter(), [], 0
        for batch in train_shard.iter_batches(
            batch_size=bs,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * bs,
            local_shuffle_seed=cfg.train.seed + epoch,
        ):
            target = torch.from_numpy(_targets(task, batch)).to(device)
            logits = model(*model_inputs(batch, device, cfg.data.normalize))
            loss = _loss(task, logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            seen += len(target)
        loss_sum, n_batches = sum_across_workers(np.array([sum(losses), len(losses)]))
        train_loss = float(loss_sum / max(n_batches, 1.0))
        if (epoch + 1) % cfg.train.eval_every_epochs and epoch + 1 != cfg.train.epochs:
            continue
        val = evaluate(core, val_shard, task, bs, device, cfg.data.normalize)
        if val[metric_key] > best_value:
            best_value, best_epoch = float(val[metric_key]), epoch + 1
            best_state = copy.deepcopy(core.state_dict())
        metrics = {"epoch": epoch + 1, "train/loss": train_loss, **_flat("val", val), "best/" + metric_key: best_value}
        if logger is not None:
            logger.log(metrics, epoch + 1)
            say(
                f"epoch {epoch + 1}/{cfg.train.epochs} loss {train_loss:.4f} "
                f"{cfg.metric} {val[metric_key]:.4f} ({seen} chips on rank 0 in {time.perf_counter() - t0:.1f}s)"
            )
        last = epoch + 1 == cfg.train.epochs
        if not last:
            ray.train.report(metrics, checkpoint=None)

    # final: best-on-val weights, evaluated on val and test
    if best_state is not None:
        core.load_state_dict(best_state)
    val = evaluate(core, val_shard, task, bs, device, cfg.data.normalize)
    test = evaluate(core, test_shard, task, bs, device, cfg.data.normalize)
    final = {
        "epoch": cfg.train.epochs,
        "best_epoch": best_epoch,
        **_flat("val", val),
        **_flat("test", test),
        "best/" + metric_key: float(val[metric_key]),
    }
    if logger is not None:
        logger.log(final, cfg.train.epochs + 1)
        logger.close()  # sent (the driver reads the final metrics from the run), or counted as lost
        client, run_id = logger.client, logger.run_id
        client.set_tag(run_id, "eoforge.backbone_sha256_end", state_sha256(core.backbone))
        for split_name, res in (("val", val), ("test", test)):
            if res["per_class"]:
                client.log_text(
                    run_id, per_class_csv(task.classes, res["per_class"]), f"metrics/per_class_{split_name}.csv"
                )
                rows = [
                    {"class": c, **{k: v[i] for k, v in res["per_class"].items()}} for i, c in enumerate(task.classes)
                ]
                client.log_table(
                    run_id,
                    data={k: [r[k] for r in rows] for k in rows[0]},
                    artifact_file=f"metrics/per_class_{split_name}.json",
                )
    ckpt = save(cfg.train.epochs, final)
    try:
        ray.train.report(final, checkpoint=ckpt)  # persists the checkpoint to storage before returning
    finally:
        if ckpt is not None:
            shutil.rmtree(ckpt.path, ignore_errors=True)  # the local copy only (hundreds of MB each)
