"""Pretraining driver: plan -> Ray Data -> Ray Train TorchTrainer -> MLflow run + registry.

Runs on the Ray driver (``jobs/pretrain.py``): checks the services, makes sure the chip plan
exists, opens (or resumes, by run name) the MLflow run, fits the TorchTrainer, then logs the
trained backbones as a model version registered under ``mlflow.registered_model`` with the
configured alias. Rerunning the same config (same ``run.storage_path`` and ``run.name``)
resumes from the last checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from eoforge.config import PretrainConfig, check_inputs
from eoforge.data.plan_check import check_plan_items
from eoforge.plan.io import ensure_plan, plan_stats
from eoforge.progress import say
from eoforge.ray_node import init_ray
from eoforge.tracking.job_run import JobRun, job_run
from eoforge.tracking.runs import resolve_tracking_uri, run_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining job leaves behind."""

    run_id: str
    run_url: str
    model_uri: str
    model_version: str
    plan_hash: str
    final_loss: float
    steps: int
    skipped_chips: int
    reused: bool = False


#: Config sections that do not change what pretraining learns (identity, tracking, read speed).
_NOT_IN_KEY = {"run": True, "mlflow": True, "data": {"plan", "config", "read_tasks", "read_cpus", "read_cpu_set"}}
KEY_TAG = "eoforge.pretrain_key"


def pretrain_key(cfg: PretrainConfig, plan_hash: str) -> str:
    """SHA-256 of what a pretraining learns from: the config (less identity and speed knobs) + the plan hash."""
    body = cfg.model_dump(mode="json", exclude=_NOT_IN_KEY)
    return hashlib.sha256(json.dumps({"cfg": body, "plan": plan_hash}, sort_keys=True).encode()).hexdigest()


#: What a run may change when it resumes by name (``run.name`` + ``run.storage_path``): how long it trains,
#: how often it checkpoints and logs, device switches and the workers (a cluster that lost a node resumes on
#: fewer). Anything else would continue the run's weights under another recipe.
_RESUMABLE_PREFIXES = (
    *(f"{section}." if fields is True else f"{section}.{f}" for section, fields in _NOT_IN_KEY.items()
      for f in ([""] if fields is True else sorted(fields))),
    "scaling.", "train.epochs", "train.max_steps", "train.checkpoint_every_steps", "train.log_every_steps",
    "train.precision", "train.channels_last", "train.compile", "train.non_blocking",
)  # fmt: skip


def check_resumable(cfg: PretrainConfig, uri: str, plan_hash: str) -> None:
    """Refuse to resume a run of the same name that started with another recipe or on another plan.

    The run's parameters are the config it started with (``job_run``); a resume may change only
    :data:`_RESUMABLE_PREFIXES`. Read only: the earlier run and its checkpoints are left as they are.

    Raises:
        ConfigError: naming the run and up to five settings that differ (then, now).
    """
    from eoforge.errors import ConfigError
    from eoforge.redact import redact_tree
    from eoforge.tracking.runs import find_named_run, flatten

    run = find_named_run(uri, cfg.mlflow.experiment, cfg.run.name)
    if run is None:
        return
    before = run.data.params
    now = flatten(redact_tree(cfg.model_dump(mode="json")))
    now["plan.hash"] = plan_hash
    changed = sorted(
        k for k, v in now.items() if k in before and before[k] != v[:6000] and not k.startswith(_RESUMABLE_PREFIXES)
    )
    if changed:
        shown = "; ".join(f"{k}: {before[k]} -> {now[k][:80]}" for k in changed[:5])
        raise ConfigError(
            f"run.name {cfg.run.name!r} (experiment {cfg.mlflow.experiment!r}, run {run.info.run_id}) started with "
            f"other settings ({shown}{'; ...' if len(changed) > 5 else ''}). Resuming it would continue its weights "
            "under this config: give this config another run.name, or set those back to resume it."
        )


def find_pretrained(uri: str, name: str, key: str) -> tuple[str, str] | None:
    """(version, run id) of a registered version of ``name`` tagged with ``key`` whose run finished; else None.

    Only versions stored as weights + card count: a pickled one of an earlier eoforge would be refused on load.
    """
    import mlflow

    from eoforge.tracking.registry import WEIGHTS_FORMAT

    client = mlflow.MlflowClient(uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: -int(v.version)):
        stored_as_weights = mv.tags.get("eoforge.format") == WEIGHTS_FORMAT
        if (
            mv.tags.get(KEY_TAG) == key
            and stored_as_weights
            and mv.run_id
            and client.get_run(mv.run_id).info.status == "FINISHED"
        ):
            return str(mv.version), str(mv.run_id)
    return None


def _reuse(cfg: PretrainConfig, uri: str, plan_hash: str, found: tuple[str, str]) -> PretrainResult:
    import mlflow

    version, run_id = found
    client = mlflow.MlflowClient(uri)
    client.set_registered_model_alias(cfg.mlflow.registered_model, cfg.mlflow.alias, version)
    run = client.get_run(run_id)
    model_uri = f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias}"
    url = run_url(uri, run_id)
    say(f"pretraining reused: {model_uri} -> version {version} (same config and plan {plan_hash[:12]}; run {url})")
    return PretrainResult(
        run_id,
        url,
        model_uri,
        version,
        plan_hash,
        float(run.data.metrics.get("train/loss", float("nan"))),
        int(run.data.metrics.get("train/steps", 0)),
        int(run.data.metrics.get("data/skipped_chips", 0)),
        reused=True,
    )


def run_pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run one pretraining job end to end (see module docstring)."""
    check_inputs(cfg)
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    plan_hash, counts = ensure_plan(cfg.data.plan, cfg.data.config)
    n_chips = sum(counts.values()) if cfg.data.split == "all" else counts.get(cfg.data.split, 0)
    key = pretrain_key(cfg, plan_hash)
    found = find_pretrained(uri, cfg.mlflow.registered_model, key) if cfg.mlflow.reuse else None
    if found is not None:
        return _reuse(cfg, uri, plan_hash, found)
    # a plan read through the wrong provider profile stops here, with the cause, not after training on nothing
    check_plan_items(cfg.data.plan, cfg.data.split)
    check_resumable(cfg, uri, plan_hash)  # before the run is opened: a refused resume leaves it as it was
    with job_run(
        uri,
        cfg.mlflow.experiment,
        cfg.run.name,
        "pretrain",
        cfg.model_dump(mode="json"),
        plan_hash,
        plan_stats(cfg.data.plan),
        params={"plan.chips": str(n_chips)},
    ) as run:
        say(f"plan {cfg.data.plan} ({plan_hash[:12]}), {n_chips} chips in split {cfg.data.split!r}")
        return _train_and_register(cfg, uri, run, plan_hash, key)


def _train_and_register(cfg: PretrainConfig, uri: str, run: JobRun, plan_hash: str, key: str) -> PretrainResult:
    """Fit the TorchTrainer in the open run, register the backbone (see module docstring)."""
    import ray
    import ray.data

    from eoforge.data.dataset import build_plan_stream
    from eoforge.ssl.objectives import build_objective
    from eoforge.tracking.registry import register_backbone
    from eoforge.train.loop import load_state, train_loop_per_worker
    from eoforge.train.trainer import torch_trainer

    client, run_id = run.client, run.run_id
    if not ray.is_initialized():
        init_ray(log_to_driver=True)
    # our own per-step lines are the progress report; Ray Data's bars flood job logs
    ray.data.DataContext.get_current().enable_progress_bars = False
    # each worker streams its own seeded shard of cfg.data per epoch (fast resume); checked here once
    build_plan_stream(cfg.data)
    materialized = None
    if cfg.data.materialize:  # decoded once into the chip cache, then every epoch reads its files
        from eoforge.data.chip_cache import ensure_chip_cache

        materialized = ensure_chip_cache(cfg.data, plan_hash, f"{cfg.run.storage_path.rstrip('/')}/materialized")
        client.set_tag(run_id, "eoforge.materialized", materialized)
        say(f"epochs read the materialised chips in {materialized}")
    trainer = torch_trainer(
        train_loop_per_worker,
        {"cfg": cfg.model_dump(mode="json"), "mlflow": {"uri": uri, "run_id": run_id}, "materialized": materialized},
        cfg.scaling,
        cfg.run,
        keep_checkpoints=2,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.run.name}: training finished without a checkpoint")

    with result.checkpoint.as_directory() as ckpt_dir:
        state = load_state(ckpt_dir)
    model = build_objective(cfg.objective, cfg.model)
    model.load_state_dict(state["model"])
    backbone = model.backbones.eval()
    mlflow_run = client.get_run(run_id)
    skipped = int(mlflow_run.data.metrics.get("data/skipped_chips", 0))
    final_loss = float(mlflow_run.data.metrics.get("train/loss", float("nan")))
    card = {
        "backbone": cfg.model.backbone,
        "objective": cfg.objective.kind,
        "objective_params": cfg.objective.model_dump(mode="json"),
        **({"temperature": cfg.objective.temperature} if hasattr(cfg.objective, "temperature") else {}),
        "model": cfg.model.model_dump(mode="json"),
        "s1_bands": backbone.s1_bands,
        "s2_bands": backbone.s2_bands,
        "normalize": cfg.data.normalize,
        "plan_hash": plan_hash,
        "plan": cfg.data.plan,  # which places pretraining saw: fine-tuning checks its test split against it
        "plan_split": cfg.data.split,
        "steps": int(state["step"]),
    }
    version, model_uri = register_backbone(backbone, cfg.mlflow.registered_model, cfg.mlflow.alias, run_id, uri, card)
    client.set_model_version_tag(cfg.mlflow.registered_model, version, KEY_TAG, key)
    client.log_metric(run_id, "train/steps", int(state["step"]))
    say(f"MLflow run: {run.url}")
    say(f"registered model: {model_uri} (version {version})")
    return PretrainResult(run_id, run.url, model_uri, version, plan_hash, final_loss, int(state["step"]), skipped)
