"""Fine-tuning driver: labelled plan -> chip cache -> label subset -> Ray Train -> MLflow (+ registry).

Runs on the Ray driver (``jobs/finetune.py``) or inside a Ray Tune trial (``jobs/sweep.py``).
It checks the services, makes sure the plan and its decoded chip cache exist, picks the
label subset (:mod:`eoforge.finetune.fractions`), resolves the backbone, opens the MLflow run
(a child of the sweep's run inside a sweep), fits a TorchTrainer and, when
``mlflow.registered_model`` is set, registers the result and applies the champion rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eoforge.config.finetune import FinetuneConfig
from eoforge.config.jobs import check_inputs
from eoforge.data.chip_cache import ensure_chip_cache
from eoforge.data.plan_check import check_plan_items
from eoforge.errors import CatalogError
from eoforge.finetune.backbone_source import BackboneSpec, resolve_backbone
from eoforge.finetune.fractions import label_subset
from eoforge.finetune.labelled import ChipIndex, labelled_dataset, read_index
from eoforge.finetune.overlap import Overlap, pretraining_overlap
from eoforge.finetune.probe_job import run_probe, runs_in_process
from eoforge.finetune.tasks import Task
from eoforge.plan.io import ensure_plan, plan_stats
from eoforge.progress import say
from eoforge.ray_node import init_ray
from eoforge.tracking.job_run import job_run
from eoforge.tracking.runs import resolve_tracking_uri, run_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSplits:
    """Chip ids a job trains, selects and reports on.

    Attributes:
        train_all: every usable train chip; train: the label subset of it;
        val, test: every usable chip of those splits; strata: stratum per train_all chip;
        skipped: {chip_id: reason} of chips that could not be read.
    """

    train_all: list[str]
    train: list[str]
    val: list[str]
    test: list[str]
    strata: list[int]
    skipped: dict[str, str] = field(default_factory=dict)


def labelled_splits(index: ChipIndex, task: Task, fraction: float, seed: int) -> LabelledSplits:
    """Usable chips per split and the train label subset (see :mod:`eoforge.finetune.fractions`)."""
    usable = np.array(
        [
            bool(ok) and task.usable(lab, str(il))
            for ok, lab, il in zip(index.ok, index.label, index.item_labels, strict=True)
        ]
    )
    by_split = {s: [i for i in np.flatnonzero(usable & (index.split == s))] for s in ("train", "val", "test")}
    train_idx = by_split["train"]
    freq = None
    if task.kind == "multilabel":
        freq = sum(
            (task.target(index.label[i], str(index.item_labels[i])) for i in train_idx), np.zeros(task.num_classes)
        )
    strata = [task.stratum(index.label[i], str(index.item_labels[i]), freq) for i in train_idx]
    train_ids = [str(index.chip_id[i]) for i in train_idx]
    return LabelledSplits(
        train_all=train_ids,
        train=label_subset(train_ids, strata, fraction, seed),
        val=[str(index.chip_id[i]) for i in by_split["val"]],
        test=[str(index.chip_id[i]) for i in by_split["test"]],
        strata=strata,
        skipped=index.skipped(),
    )


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning job leaves behind."""

    run_id: str
    run_url: str
    metrics: dict[str, float]
    checkpoint_path: str | None
    train_chips: int
    model_uri: str | None = None
    champion: dict[str, Any] | None = None


def cache_dir_of(cfg: FinetuneConfig) -> str:
    """Where the decoded chips live (``cache_dir`` or ``<run.storage_path>/chip-cache``)."""
    return cfg.cache_dir or f"{cfg.run.storage_path.rstrip('/')}/chip-cache"


def prepare_chips(cfg: FinetuneConfig) -> tuple[str, str]:
    """(plan hash, chip cache URI): plan built if missing, chips decoded once (needs Ray).

    Raises:
        ImplausibleDataError: every checked item of the plan has values no sensor measures in its
            declared units (:func:`eoforge.data.plan_check.check_plan_items`; before Ray starts).
    """
    import ray

    plan_hash = ensure_plan(cfg.data.plan, cfg.data.config)[0]
    check_plan_items(cfg.data.plan)  # implausible values in every item: stop with the cause, not "no chips"
    if not ray.is_initialized():
        init_ray(log_to_driver=True)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return plan_hash, ensure_chip_cache(cfg.data, plan_hash, cache_dir_of(cfg))


def _model_card(
    cfg: FinetuneConfig, task: Task, spec: BackboneSpec, plan_hash: str, metrics: dict[str, float]
) -> dict[str, Any]:
    from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES

    return {
        "task": task.kind,
        "classes": list(task.classes),
        "s1_bands": list(S1_BAND_NAMES),
        "s2_bands": list(S2_BAND_NAMES),
        "normalize": cfg.data.normalize,
        "backbone": spec.name,
        "backbone_source": spec.uri or spec.path or spec.source,
        "mode": cfg.mode,
        "label_fraction": cfg.labels.fraction,
        "label_seed": cfg.labels.seed,
        "plan_hash": plan_hash,
        "metrics": {k: round(v, 6) for k, v in metrics.items() if k.startswith(("val/", "test/"))},
    }


def register_finetuned(
    checkpoint_dir: str,
    cfg: FinetuneConfig,
    task: Task,
    spec: BackboneSpec,
    plan_hash: str,
    metrics: dict[str, float],
    run_id: str,
    tracking_uri: str,
    name: str,
    alias: str,
    chip_size: int,
) -> tuple[str, str, dict[str, Any]]:
    """Log the best-on-val model of a checkpoint, register it under ``name``, apply the champion rule.

    Returns:
        (version, ``models:/NAME@ALIAS`` if promoted else ``models:/NAME/VERSION``, decision as a dict).
    """
    import dataclasses

    from mlflow import MlflowClient

    from eoforge.finetune.backbone_source import load_backbone
    from eoforge.finetune.loop import FINETUNE_STATE_FILE
    from eoforge.finetune.probe import PROBE_MODES
    from eoforge.finetune.task_heads import FinetuneModel
    from eoforge.tracking.champion import decide_champion
    from eoforge.tracking.registry import register_backbone
    from eoforge.train.worker_kit import load_state

    state = load_state(checkpoint_dir, FINETUNE_STATE_FILE)
    probe = cfg.mode in PROBE_MODES
    model = FinetuneModel(load_backbone(spec, tracking_uri), task.kind, task.num_classes, chip_size, probe=probe)
    model.load_state_dict(state["best_state"] or state["model"])
    card = _model_card(cfg, task, spec, plan_hash, metrics)
    card["chip_px"] = int(chip_size)  # the window side a predict job feeds it by default
    version, _ = register_backbone(model.eval(), name, None, run_id, tracking_uri, card, artifact_name="model")
    decision = decide_champion(tracking_uri, name, version, cfg.metric, float(metrics[cfg.metric]), alias)
    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, "eoforge.champion_decision", "promoted" if decision.promoted else "kept")
    client.set_tag(run_id, "eoforge.champion_reason", decision.reason)
    say(f"champion rule: {decision.reason}")
    uri = f"models:/{name}@{alias}" if decision.promoted else f"models:/{name}/{version}"
    return version, uri, dataclasses.asdict(decision)


def record_pretraining_overlap(client: Any, run_id: str, spec: BackboneSpec, plan: str) -> Overlap | None:
    """Warn and record when the backbone's pretraining plan covers test places of ``plan``.

    Tags ``eoforge.pretrain_test_overlap_chips`` and logs ``data/pretrain_overlap.json`` when the
    model card names its pretraining plan (None otherwise, or when that plan is gone).
    """
    from eoforge.plan.io import plan_exists

    pre_plan, pre_split = spec.card.get("plan"), spec.card.get("plan_split", "all")
    if not pre_plan or not plan_exists(pre_plan):
        return None
    overlap = pretraining_overlap(str(pre_plan), str(pre_split), plan)
    client.set_tag(run_id, "eoforge.pretrain_test_overlap_chips", str(overlap.chips))
    client.log_dict(run_id, {"pretrain_plan": pre_plan, "pretrain_split": pre_split, **overlap.to_dict()},
                    "data/pretrain_overlap.json")  # fmt: skip
    if overlap.chips:
        log.warning(
            "backbone %s was pretrained on %s, which covers %d of the %d test chips (e.g. at %s): "
            "test scores are not on unseen land",
            spec.source, pre_plan, overlap.chips, overlap.test_chips, "; ".join(overlap.places[:3]),
        )  # fmt: skip
        say(f"warning: pretraining plan overlaps {overlap.chips}/{overlap.test_chips} test chips (see the run)")
    return overlap


def steps_per_epoch(cfg: FinetuneConfig, train_chips: int) -> int:
    """Optimiser steps in one epoch over ``train_chips`` (each worker takes ``batch_size`` chips a step)."""
    return max(1, math.ceil(train_chips / (cfg.train.batch_size * cfg.scaling.num_workers)))


def with_step_budget(cfg: FinetuneConfig, train_chips: int) -> FinetuneConfig:
    """``cfg`` with ``train.epochs`` and ``eval_every_epochs`` set from ``train.steps`` (unchanged without).

    Every arm and label fraction then trains at least ``steps`` optimiser steps, evaluated on val
    about ``train.evals`` times.
    """
    steps = cfg.train.steps
    if steps is None:
        return cfg
    per_epoch = steps_per_epoch(cfg, train_chips)
    epochs = math.ceil(steps / per_epoch)
    every = max(1, math.ceil(epochs / cfg.train.evals))
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs, "eval_every_epochs": every})})


def run_finetune(cfg: FinetuneConfig, parent_run_id: str | None = None, tune_trial: bool = False) -> FinetuneResult:
    """Run one fine-tuning job end to end (see module docstring)."""
    check_inputs(cfg)
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    task = Task.from_config(cfg.task)
    spec = resolve_backbone(cfg.backbone.source, cfg.backbone.name, uri, cfg.data.normalize)
    plan_hash, cache = prepare_chips(cfg)
    index = read_index(cache)
    splits = labelled_splits(index, task, cfg.labels.fraction, cfg.labels.seed)
    for name, ids in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if not ids:
            raise CatalogError(
                f"chip plan {cfg.data.plan}: no usable labelled chips in split {name!r} for task {task.kind} "
                f"(label_source {task.label_source}); {len(splits.skipped)} chips unreadable. "
                "Check the plan's label collection and splits."
            )
    chip_size = int(index.label.shape[-1])
    cfg = with_step_budget(cfg, len(splits.train))

    tags = {"eoforge.task": task.kind, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    params = {
        "backbone.resolved": spec.uri or spec.path or "scratch",
        "labels.train_chips": str(len(splits.train)),
        "labels.train_chips_all": str(len(splits.train_all)),
        "labels.realised_fraction": f"{len(splits.train) / max(len(splits.train_all), 1):.4f}",
        "labels.subset_sha256": hashlib.sha256("\n".join(splits.train).encode()).hexdigest(),
        "eval.val_chips": str(len(splits.val)),
        "eval.test_chips": str(len(splits.test)),
    }
    config = cfg.model_dump(mode="json")
    with job_run(
        uri, cfg.mlflow.experiment, cfg.run.name, "finetune", config, plan_hash, plan_stats(cfg.data.plan), params, tags
    ) as run:
        if not run.resumed:
            subset = {"fraction": cfg.labels.fraction, "seed": cfg.labels.seed, "chip_ids": splits.train}
            run.client.log_dict(run.run_id, subset, "labels/subset.json")
            run.client.log_metric(run.run_id, "data/skipped_chips", len(splits.skipped))
            record_pretraining_overlap(run.client, run.run_id, spec, cfg.data.plan)
            if splits.skipped:
                run.client.log_dict(run.run_id, dict(sorted(splits.skipped.items())), "data/skipped_chips.json")
        say(
            f"{task.kind} on {len(splits.train)}/{len(splits.train_all)} train chips "
            f"(fraction {cfg.labels.fraction:g}, seed {cfg.labels.seed}), "
            f"{len(splits.val)} val, {len(splits.test)} test; "
            f"backbone {spec.uri or spec.path or spec.source} ({cfg.mode})"
        )
        return _train(cfg, task, spec, plan_hash, splits, cache, chip_size, uri, run.run_id, tune_trial)


def _train(
    cfg: FinetuneConfig,
    task: Task,
    spec: BackboneSpec,
    plan_hash: str,
    splits: LabelledSplits,
    cache: str,
    chip_size: int,
    uri: str,
    run_id: str,
    tune_trial: bool,
) -> FinetuneResult:
    """Train the arm in the open run (a probe in this process, else Ray Train), then :func:`_finish`."""
    from eoforge.finetune.loop import finetune_loop_per_worker
    from eoforge.train.trainer import torch_trainer

    if runs_in_process(cfg):  # a probe on features computed once: no Ray Train worker group to start
        ids = {"train": splits.train, "val": splits.val, "test": splits.test}
        metrics, ckpt_path = run_probe(cfg, task, spec, cache, ids, chip_size, uri, run_id)
        return _finish(cfg, task, spec, plan_hash, metrics, run_id, uri, ckpt_path, chip_size, len(splits.train))

    callbacks = []
    if tune_trial:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    chips, datasets = None, None
    if cfg.materialize:  # each worker reads its chips from the cache once and holds them for every epoch
        chips = {"cache": cache, "train": splits.train, "val": splits.val, "test": splits.test}
    else:  # streamed from the cache by Ray Data every epoch (sets larger than worker memory)
        datasets = {
            "train": labelled_dataset(cache, "train", splits.train),
            "val": labelled_dataset(cache, "val", splits.val),
            "test": labelled_dataset(cache, "test", splits.test),
        }
    trainer = torch_trainer(
        finetune_loop_per_worker,
        {
            "cfg": cfg.model_dump(mode="json"),
            "task": task.__dict__,
            "backbone": spec.to_dict(),
            "mlflow": {"uri": uri, "run_id": run_id},
            "chip_size": chip_size,
            "chips": chips,
            "steps_per_epoch": steps_per_epoch(cfg, len(splits.train)),
        },
        cfg.scaling,
        cfg.run,
        keep_checkpoints=1,
        callbacks=callbacks,
        datasets=datasets,
    )
    result = trainer.fit()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    ckpt_path = result.checkpoint.path if result.checkpoint else None
    return _finish(cfg, task, spec, plan_hash, metrics, run_id, uri, ckpt_path, chip_size, len(splits.train))


def _finish(
    cfg: FinetuneConfig,
    task: Task,
    spec: BackboneSpec,
    plan_hash: str,
    metrics: dict[str, float],
    run_id: str,
    uri: str,
    ckpt_path: str | None,
    chip_size: int,
    train_chips: int,
) -> FinetuneResult:
    """Register the model when asked (champion rule), print the outcome (the run closes with its context)."""
    from ray.train import Checkpoint

    from eoforge.storage import resolve_storage

    model_uri, decision = None, None
    if cfg.mlflow.registered_model and ckpt_path is not None:
        fs = resolve_storage(cfg.run.storage_path)[1]
        with Checkpoint(ckpt_path, filesystem=fs).as_directory() as d:
            _, model_uri, decision = register_finetuned(
                d,
                cfg,
                task,
                spec,
                plan_hash,
                metrics,
                run_id,
                uri,
                cfg.mlflow.registered_model,
                cfg.mlflow.champion_alias,
                chip_size,
            )
    url = run_url(uri, run_id)
    shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("val/", "test/")) and k.count("/") == 1}
    say(f"finished {cfg.run.name}: {json.dumps(shown)}")
    say(f"MLflow run: {url}")
    if model_uri:
        say(f"registered model: {model_uri}")
    return FinetuneResult(run_id, url, metrics, ckpt_path, train_chips, model_uri, decision)
