"""Label-fraction / hyperparameter sweeps: one Ray Tune experiment over fine-tuning jobs.

The grid is method (backbone source + mode) x label fraction x seed, times a grid or
log-uniform search over lr. Each trial is a Tune function trainable that runs one
fine-tuning job on Ray Train (:func:`eoforge.finetune.run.run_finetune`, with
``TuneReportCallback``): the Train V2 pattern, not the deprecated ``Tuner(trainer)``.
ASHA, when enabled, stops trials on the validation metric reported every evaluation.

MLflow: the sweep is one parent run; each trial is a child run (``mlflow.parentRunId``).
The parent gets the trials table, the results table (CSV + Markdown), the label-fraction
plot, and the champion decision. Rerunning the same config (same ``run.name`` and
``run.storage_path``) restores the Tune experiment: finished trials are not run again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from eoforge.config import FinetuneConfig, SweepConfig, apply_overrides, load_raw, parse_config
from eoforge.errors import ConfigError
from eoforge.progress import say
from eoforge.ray_node import init_ray
from eoforge.tracking.job_run import job_run
from eoforge.tracking.runs import run_url

log = logging.getLogger(__name__)


def base_finetune_raw(cfg: SweepConfig, source: str) -> dict[str, Any]:
    """The base fine-tune config of a sweep as a raw dict, with ``set`` applied and validated once."""
    raw = load_raw(cfg.base) if isinstance(cfg.base, str) else copy.deepcopy(cfg.base)
    raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in cfg.set.items()])
    parse_config(raw, f"{source}: base", FinetuneConfig)  # fail before any work
    return raw


def trial_config(base: dict[str, Any], sweep: dict[str, Any], point: dict[str, Any], trial_name: str) -> FinetuneConfig:
    """The fine-tune config of one trial: base + the grid point + the sweep's resources and storage."""
    cfg = SweepConfig.model_validate(sweep)
    raw = copy.deepcopy(base)
    method = cfg.search.methods[point["method"]]
    raw.setdefault("backbone", {})["source"] = method.source
    if method.mode:
        raw["mode"] = method.mode
    raw.setdefault("labels", {}).update({"fraction": point["label_fraction"], "seed": point["seed"]})
    raw.setdefault("train", {})["seed"] = point["seed"]
    if point.get("lr") is not None:
        raw.setdefault("optim", {})["lr"] = point["lr"]
    raw["scaling"] = {
        "num_workers": cfg.resources.num_workers,
        "cpus_per_worker": cfg.resources.cpus_per_worker,
        "use_gpu": cfg.resources.use_gpu,
        "resources_per_worker": cfg.resources.resources_per_worker,
    }
    root = f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}"
    raw["run"] = {"name": trial_name, "storage_path": f"{root}/trials"}
    raw.setdefault("cache_dir", f"{cfg.run.storage_path.rstrip('/')}/chip-cache")
    raw["mlflow"] = {
        "tracking_uri": cfg.mlflow.tracking_uri,
        "experiment": cfg.mlflow.experiment,
        "registered_model": None,
    }
    return FinetuneConfig.model_validate(raw)


def grid_point(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's grid point: method, lr, label_fraction, seed (the ``arm`` pair unpacked)."""
    point = {k: v for k, v in config.items() if k != "arm"}
    point.update(config.get("arm") or {})
    return point


def _trial(config: dict[str, Any], base: dict[str, Any], sweep: dict[str, Any], parent_run_id: str) -> None:
    """Tune function trainable: one fine-tuning job on Ray Train."""
    import ray.tune

    from eoforge.finetune.run import run_finetune

    ctx = ray.tune.get_context()
    name = f"{sweep['run']['name']}-{ctx.get_trial_id()}"
    cfg = trial_config(base, sweep, grid_point(config), name)
    result = run_finetune(cfg, parent_run_id=parent_run_id, tune_trial=True)
    final = {k: v for k, v in result.metrics.items() if k.startswith(("val/", "test/", "best/"))}
    ray.tune.report(
        {**final, "mlflow_run_id": result.run_id, "checkpoint_path": result.checkpoint_path or "", "done_trial": 1}
    )


@dataclass(frozen=True)
class SweepResult:
    """What a sweep leaves behind."""

    parent_run_id: str
    trials: pd.DataFrame
    summary: pd.DataFrame
    table_markdown: str
    champion_uri: str | None
    champion: dict[str, Any] | None


def _param_space(cfg: SweepConfig, base_lr: float, base_mode: str, task_kind: str) -> dict[str, Any]:
    """Grid: (method, lr) arms x label fraction x seed.

    Arms without a learning rate run once, not per lr: knn, and the linear probe of a whole-chip task
    (a logistic regression solved for each of its own ``train.probe_c``, chosen on val).
    """
    from ray import tune

    from eoforge.finetune.probe import solved_in_process

    lrs = cfg.search.lr if cfg.search.lr is not None else [base_lr]
    arms = []
    for name, method in cfg.search.methods.items():
        no_lr = solved_in_process(method.mode or base_mode, task_kind)
        if cfg.search.lr_loguniform is not None:
            arms.append({"method": name})
        else:
            arms += [{"method": name, "lr": lr} for lr in (lrs[:1] if no_lr else lrs)]
    space: dict[str, Any] = {
        "arm": tune.grid_search(arms),
        "label_fraction": tune.grid_search(cfg.search.label_fractions),
        "seed": tune.grid_search(cfg.search.seeds),
    }
    if cfg.search.lr_loguniform is not None:
        space["lr"] = tune.loguniform(*cfg.search.lr_loguniform)
    return space


def trials_frame(
    results: Any, val_metric: str, test_metric: str, objectives: dict[str, str | None] | None = None
) -> pd.DataFrame:
    """One row per trial: its grid point, status, metrics, child run and checkpoint.

    ``objectives``: method -> the SSL objective its backbone was pretrained with; the frame has an
    ``objective`` column only when some method names one.
    """
    objectives = objectives or {}
    rows = []
    for r in results:
        m = r.metrics or {}
        c = grid_point(r.config or {})
        rows.append(
            {
                "trial_id": m.get("trial_id") or getattr(r, "path", "").rsplit("/", 1)[-1],
                "objective": objectives.get(str(c.get("method"))),
                "method": c.get("method"),
                "label_fraction": c.get("label_fraction"),
                "seed": c.get("seed"),
                "lr": c.get("lr"),
                "status": "error" if r.error else ("finished" if m.get("done_trial") else "stopped"),
                val_metric: m.get(val_metric) if m.get("done_trial") else None,
                test_metric: m.get(test_metric) if m.get("done_trial") else None,
                "mlflow_run_id": m.get("mlflow_run_id"),
                "checkpoint_path": m.get("checkpoint_path"),
            }
        )
    frame = pd.DataFrame(rows)
    if not any(objectives.values()):
        frame = frame.drop(columns=["objective"], errors="ignore")
    if not frame.empty:
        frame[[val_metric, test_metric]] = frame[[val_metric, test_metric]].astype(float)
    return frame.sort_values(["method", "label_fraction", "seed", "lr"]).reset_index(drop=True) if rows else frame


def run_sweep(cfg: SweepConfig, source: str = "sweep config") -> SweepResult:
    """Run (or resume) the sweep, write its report into the parent run, apply the champion rule."""
    import ray

    from eoforge.finetune.run import prepare_chips
    from eoforge.finetune.tasks import Task
    from eoforge.plan.io import plan_stats
    from eoforge.tracking.runs import resolve_tracking_uri

    base = base_finetune_raw(cfg, source)
    first_point = {"method": next(iter(cfg.search.methods)), "label_fraction": 1.0, "seed": 0, "lr": None}
    probe = trial_config(base, cfg.model_dump(mode="json"), first_point, f"{cfg.run.name}-probe")
    task = Task.from_config(probe.task)
    val_metric, test_metric = probe.metric, "test/" + probe.metric.split("/", 1)[1]
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    # check every method's backbone before any trial starts (a wrong alias fails here, once)
    from eoforge.finetune.backbone_source import resolve_backbone

    for name, method in cfg.search.methods.items():
        try:
            resolve_backbone(method.source, probe.backbone.name, uri, probe.data.normalize)
        except Exception as exc:
            raise type(exc)(f"search.methods.{name}: {exc}") from None

    if not ray.is_initialized():
        init_ray(log_to_driver=True)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # experiment state saved after every event
    plan_hash, cache = prepare_chips(probe)  # decode chips once, before trials race for it
    tags = {"eoforge.task": task.kind, "eoforge.val_metric": val_metric, "eoforge.test_metric": test_metric}
    with job_run(
        uri,
        cfg.mlflow.experiment,
        cfg.run.name,
        "sweep",
        cfg.model_dump(mode="json"),
        plan_hash,
        plan_stats(probe.data.plan),
        tags=tags,
        label="sweep",
        artifact="config/sweep.yaml",
        not_params=frozenset({"base"}),
    ) as run:
        return _tune(cfg, base, probe, task, uri, run.run_id, plan_hash, cache)


def _tune(
    cfg: SweepConfig,
    base: dict[str, Any],
    probe: FinetuneConfig,
    task: Any,
    uri: str,
    run_id: str,
    plan_hash: str,
    cache: str,
) -> SweepResult:
    """Run the Tune experiment in the open sweep run; table, plot and champion (see :func:`run_sweep`)."""
    import mlflow
    from ray import tune

    from eoforge.finetune.run import register_finetuned
    from eoforge.tune.report import markdown_table, plot_label_fractions, summarise

    client = mlflow.MlflowClient(uri)
    val_metric, test_metric = probe.metric, "test/" + probe.metric.split("/", 1)[1]
    trainable = tune.with_parameters(_trial, base=base, sweep=cfg.model_dump(mode="json"), parent_run_id=run_id)
    trainable = tune.with_resources(trainable, {"cpu": 0.25})
    exp_path = f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}/tune"
    from eoforge.storage import resolve_storage

    storage_path, storage_fs = resolve_storage(f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}")
    scheduler = None
    if cfg.asha.enabled:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=probe.train.epochs // probe.train.eval_every_epochs + 2,
            grace_period=cfg.asha.grace_period,
            reduction_factor=cfg.asha.reduction_factor,
        )
    if tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs):
        say(f"restoring the Tune experiment at {exp_path}: finished trials are kept")
        tuner = tune.Tuner.restore(
            exp_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=storage_fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(cfg, probe.optim.lr, probe.mode, probe.task.kind),
            tune_config=tune.TuneConfig(
                metric=val_metric,
                mode="max",
                scheduler=scheduler,
                num_samples=cfg.search.num_samples,
                max_concurrent_trials=cfg.resources.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures),
                verbose=0,
            ),
        )
    results = tuner.fit()
    trials = trials_frame(
        results, val_metric, test_metric, {name: m.objective for name, m in cfg.search.methods.items()}
    )
    summary = summarise(trials, val_metric, test_metric)
    table = markdown_table(summary, test_metric)
    say(f"results ({test_metric}; best lr per seed on {val_metric}):\n{table}")

    with tempfile.TemporaryDirectory() as tmp:
        trials.to_csv(Path(tmp) / "trials.csv", index=False)
        summary.to_csv(Path(tmp) / "label_fractions.csv", index=False)
        (Path(tmp) / "label_fractions.md").write_text(table + "\n")
        plot_label_fractions(
            summary,
            test_metric,
            Path(tmp) / "label_fractions.png",
            cfg.run.name,
            task=task.kind,
            plan=Path(probe.data.plan).stem,
            plan_hash=plan_hash,
        )
        client.log_artifacts(run_id, tmp, "results")
        results_dir = _keep_results(tmp, cfg)
    say(f"results table and label-fraction plot: {results_dir}/label_fractions.md, {results_dir}/label_fractions.png")
    n_done = int((trials["status"] == "finished").sum()) if not trials.empty else 0
    client.log_metric(run_id, "sweep/trials_finished", n_done)
    client.log_metric(run_id, "sweep/trials", len(trials))

    champion_uri, decision = None, None
    finished = trials.dropna(subset=[val_metric])
    # a kNN arm keeps no classifier that could be registered and run: the champion comes from the others
    keeps_model = finished["method"].map(lambda m: (cfg.search.methods[m].mode or base.get("mode")) != "knn")
    finished = finished[keeps_model.astype(bool)] if not finished.empty else finished
    if not finished.empty:
        best = finished.loc[finished[val_metric].idxmax()]
        name = cfg.mlflow.registered_model or f"{cfg.run.name}-{task.kind}"
        point = {k: best[k] for k in ("method", "label_fraction", "seed", "lr")}
        best_cfg = trial_config(base, cfg.model_dump(mode="json"), point, f"{cfg.run.name}-{best['trial_id']}")
        best_cfg.mlflow.registered_model = name
        from eoforge.finetune.backbone_source import resolve_backbone

        spec = resolve_backbone(best_cfg.backbone.source, best_cfg.backbone.name, uri, best_cfg.data.normalize)
        best_metrics = {val_metric: float(best[val_metric]), test_metric: float(best[test_metric])}
        from ray.train import Checkpoint

        ckpt = (
            Checkpoint(best["checkpoint_path"], filesystem=storage_fs)
            if storage_fs
            else Checkpoint(best["checkpoint_path"])
        )
        with ckpt.as_directory() as d:
            chip = int(read_chip_size(cache))
            _, _, decision = register_finetuned(
                d,
                best_cfg,
                task,
                spec,
                plan_hash,
                best_metrics,
                str(best["mlflow_run_id"]),
                uri,
                name,
                cfg.mlflow.champion_alias,
                chip,
            )
        client.set_tag(run_id, "eoforge.champion_decision", "promoted" if decision["promoted"] else "kept")
        client.set_tag(run_id, "eoforge.champion_reason", decision["reason"])
        client.set_tag(
            run_id, "eoforge.best_trial", f"{best['trial_id']} ({best['method']}, fraction {best['label_fraction']})"
        )
        champion_uri = f"models:/{name}@{cfg.mlflow.champion_alias}"
    say(f"sweep run: {run_url(uri, run_id)}")
    if champion_uri:
        say(f"champion: {champion_uri}")
    return SweepResult(run_id, trials, summary, table, champion_uri, decision)


def _keep_results(local: str, cfg: SweepConfig) -> str:
    """Copy the sweep's results (tables, plot) to ``<run.storage_path>/<run.name>/results``; that URI."""
    import pyarrow.fs as pafs

    from eoforge.storage import resolve_storage

    root, fs = resolve_storage(cfg.run.storage_path)
    dest = f"{root.rstrip('/')}/{cfg.run.name}/results"
    target = fs or pafs.LocalFileSystem()
    target.create_dir(dest, recursive=True)
    pafs.copy_files(local, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target)
    return dest if fs is None else f"{cfg.run.storage_path.split('://', 1)[0]}://{dest}"


def read_chip_size(cache: str) -> int:
    """Chip side in pixels of a chip cache (from its first label)."""
    from eoforge.finetune.labelled import read_index

    return int(read_index(cache).label.shape[-1])


def load_sweep_config(path: str, overrides: list[str] | None = None) -> SweepConfig:
    """Load and validate a ``kind: sweep`` file, and its base fine-tune config."""
    from eoforge.config import load_config

    cfg = load_config(path, SweepConfig, overrides)
    if isinstance(cfg.base, str) and not Path(cfg.base).is_file():
        raise ConfigError(f"{path}: base: {cfg.base} does not exist")
    base_finetune_raw(cfg, path)
    return cfg
