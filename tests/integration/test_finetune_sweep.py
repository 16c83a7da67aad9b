"""Fine-tuning and sweeps as users run them: `ray job submit` of jobs/sweep.py on the local stack."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from eoforge.config import SplitConfig
from eoforge.errors import ServiceError
from eoforge.finetune.backbone_source import load_backbone, resolve_backbone, state_sha256
from eoforge.models.dual import DualBackbone, create_backbone
from eoforge.plan.io import build_plan
from eoforge.tracking.champion import decide_champion
from eoforge.tracking.registry import register_backbone, resolve_model_version

from tests.integration.test_catalog_and_chips import data_cfg
from tests.support.jobs import run_job, start_job, wait_job

REPO = Path(__file__).resolve().parents[2]


def submit(stack, script: str, config: Path, timeout_s: float = 900, expect_ok: bool = True) -> str:
    return run_job(stack, f"{sys.executable} {script} --config {config}", timeout_s, expect_ok)


@pytest.fixture(scope="module")
def ssl_model(stack):
    """A registered DualBackbone with a card, standing in for a pretraining result."""
    import mlflow

    torch.manual_seed(1)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")
    client = mlflow.MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("it-ft") or client.get_experiment(client.create_experiment("it-ft"))
    run = client.create_run(exp.experiment_id)
    card = {"backbone": "resnet18", "s1_bands": ["vv", "vh"], "normalize": "ssl4eo", "objective": "dual_simclr"}
    card["s2_bands"] = list(backbone.s2_bands)
    register_backbone(backbone, "it-ssl", "candidate", run.info.run_id, stack.mlflow_url, card)
    return state_sha256(backbone)


@pytest.fixture(scope="module")
def sweep(stack, demo_catalog, ssl_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = data_cfg(str(demo_catalog.catalog_json), size_px=32)
    cfg = cfg.model_copy(update={"splits": SplitConfig(train=0.6, val=0.2, test=0.2)})
    build_plan(cfg, tmp / "plan.parquet")
    base = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
    base["data"].update({"plan": str(tmp / "plan.parquet"), "config": None})
    base["train"] = {"epochs": 2, "batch_size": 16, "eval_every_epochs": 1}
    base["run"].update({"storage_path": str(tmp / "ft")})
    base["mlflow"].update({"experiment": "it-ft", "registered_model": None})
    sweep = yaml.safe_load((REPO / "configs/sweep/demo.yaml").read_text())
    sweep["base"] = base
    sweep["set"] = {}
    sweep["search"]["methods"] = {
        "ssl": {"source": "models:/it-ssl@candidate", "mode": "linear_probe"},
        "scratch": {"source": "scratch", "mode": "finetune"},
    }
    sweep["search"].pop("lr", None)
    sweep["search"]["label_fractions"] = [0.5, 1.0]
    sweep["run"].update({"name": "it-sweep", "storage_path": str(tmp / "sweeps")})
    sweep["mlflow"].update({"experiment": "it-sweeps", "registered_model": "it-cls"})
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    # Interrupt the sweep mid-way, as a preempted head or a Ctrl-C would: once the first trial has
    # finished and the second has started, stop the job; then submit the same config again.
    from ray.job_submission import JobSubmissionClient

    job = start_job(stack, f"{sys.executable} jobs/sweep.py --config {tmp / 'sweep.yaml'}")
    finished_before = _wait_for_children(stack, "it-sweeps", finished=1, started=2, job=job)
    JobSubmissionClient(stack.ray_dashboard_url).stop_job(job)
    assert wait_job(stack, job) == "STOPPED"
    logs = submit(stack, "jobs/sweep.py", tmp / "sweep.yaml")
    return {"tmp": tmp, "logs": logs, "config": tmp / "sweep.yaml", "finished_before": finished_before}


def _wait_for_children(stack, experiment: str, finished: int, started: int, job: str, timeout_s: float = 900):
    """Poll MLflow until the sweep has `finished` FINISHED child runs and `started` in all.

    Returns {run_id: end_time} of the finished ones.
    """
    from mlflow import MlflowClient
    from ray.job_submission import JobSubmissionClient

    client, jobs = MlflowClient(stack.mlflow_url), JobSubmissionClient(stack.ray_dashboard_url)
    deadline = time.monotonic() + timeout_s
    while True:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''") if exp else []
        done = {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}
        if len(done) >= finished and len(runs) >= started:
            return done
        assert str(jobs.get_job_status(job)) in {"PENDING", "RUNNING"}, jobs.get_job_logs(job)[-4000:]
        assert time.monotonic() < deadline, f"sweep did not reach {finished} finished / {started} started trials"
        time.sleep(2)


def _runs(stack, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=100)


def test_sweep_leaves_child_runs_table_plot_and_champion(stack, sweep) -> None:
    client, runs = _runs(stack, "it-sweeps")
    parent = next(r for r in runs if r.data.tags.get("eoforge.run_name") == "it-sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4  # {ssl, scratch} x {50 %, 100 %}
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0.0 <= child.data.metrics["test/aa"] <= 1.0
        assert "labels.subset_sha256" in child.data.params
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/label_fractions.csv", "results/label_fractions.md", "results/label_fractions.png"} <= artifacts
    # what planning kept and skipped travels with the sweep and with each trial
    assert "data/plan_stats.json" in {a.path for a in client.list_artifacts(parent.info.run_id, "data")}
    assert parent.data.metrics["plan/skipped_items"] >= 0 and parent.data.metrics["plan/chips_in_s1"] > 0
    assert all(c.data.metrics["plan/chips_in_s1"] == parent.data.metrics["plan/chips_in_s1"] for c in children)
    assert "label fraction" in sweep["logs"]
    assert "models:/it-cls@champion" in sweep["logs"]
    assert parent.data.tags["eoforge.champion_decision"] == "promoted"
    # the same fraction and seed draw the same chips for both methods
    by_fraction: dict[str, set[str]] = {}
    for child in children:
        by_fraction.setdefault(child.data.params["labels.fraction"], set()).add(
            child.data.params["labels.subset_sha256"]
        )
    assert all(len(digests) == 1 for digests in by_fraction.values()), by_fraction
    # the trained arm's lr follows the cosine schedule: down at every evaluation, well under its start at the end
    trained = [c for c in children if "train/lr" in c.data.metrics]
    assert len(trained) == 2, [c.data.params.get("backbone.source") for c in children]  # scratch at 50 % and 100 %
    for child in trained:
        lrs = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "train/lr"), key=lambda m: m.step)]
        assert len(lrs) == 2 and lrs[0] > lrs[1] and lrs[1] <= 0.003 * 0.5 + 1e-9, lrs


def test_ssl_trials_start_from_the_registered_weights_and_probe_keeps_them(stack, sweep, ssl_model) -> None:
    _, runs = _runs(stack, "it-sweeps")
    ssl = [r for r in runs if r.data.params.get("backbone.source") == "models:/it-ssl@candidate"]
    assert len(ssl) == 2
    for run in ssl:
        assert run.data.params["backbone.resolved"] == "models:/it-ssl/1"
        assert run.data.tags["eoforge.backbone_sha256_start"] == ssl_model
        assert run.data.tags["eoforge.backbone_sha256_end"] == ssl_model  # linear probe: unchanged
    spec = resolve_backbone("models:/it-ssl@candidate", "resnet18", stack.mlflow_url, "ssl4eo")
    assert state_sha256(load_backbone(spec, stack.mlflow_url)) == ssl_model


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(stack, sweep) -> None:
    _, runs = _runs(stack, "it-sweeps")
    children = {r.info.run_id: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert "restoring the Tune experiment" in sweep["logs"]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children.values())
    assert sweep["finished_before"]  # at least one trial had finished when the job was stopped
    for run_id, end_time in sweep["finished_before"].items():
        assert children[run_id].info.end_time == end_time, f"finished trial {run_id} ran again after the restore"
        # the resumed job never opened the finished trial's run ("MLflow run resumed: .../runs/<id>")
        assert not [line for line in sweep["logs"].splitlines() if "MLflow run " in line and run_id in line]
    # and the trial that was running when the job stopped went on in its own run
    resumed = [line for line in sweep["logs"].splitlines() if "MLflow run resumed" in line]
    assert resumed and any(run_id in resumed[0] for run_id in children), resumed


def test_rerun_restores_the_experiment_without_rerunning_trials(stack, sweep) -> None:
    logs = submit(stack, "jobs/sweep.py", sweep["config"])
    assert "restoring the Tune experiment" in logs
    _, runs = _runs(stack, "it-sweeps")
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 4


def test_registry_lookups_fail_cleanly(stack, ssl_model) -> None:
    assert resolve_model_version(stack.mlflow_url, "models:/it-ssl@candidate").version == "1"
    with pytest.raises(ServiceError, match=r"no registered model 'nope'.*it-ssl"):
        resolve_model_version(stack.mlflow_url, "models:/nope@candidate")
    with pytest.raises(ServiceError, match=r"no alias 'gold'; aliases: \['candidate'\]"):
        resolve_model_version(stack.mlflow_url, "models:/it-ssl@gold")
    with pytest.raises(ServiceError, match=r"no version '9'.*versions: \[1\]"):
        resolve_model_version(stack.mlflow_url, "models:/it-ssl/9")


def test_champion_moves_only_on_a_better_validation_metric(stack) -> None:
    import mlflow

    client = mlflow.MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("it-ft") or client.get_experiment(client.create_experiment("it-ft"))
    versions = []
    for _ in range(3):
        run = client.create_run(exp.experiment_id)
        versions.append(
            register_backbone(torch.nn.Linear(2, 2), "it-champ", None, run.info.run_id, stack.mlflow_url, {})[0]
        )
    first = decide_champion(stack.mlflow_url, "it-champ", versions[0], "val/aa", 0.60)
    worse = decide_champion(stack.mlflow_url, "it-champ", versions[1], "val/aa", 0.55)
    better = decide_champion(stack.mlflow_url, "it-champ", versions[2], "val/aa", 0.70)
    assert first.promoted and not worse.promoted and better.promoted
    assert "0.6000 >= 0.5500" in worse.reason
    assert client.get_model_version_by_alias("it-champ", "champion").version == versions[2]
