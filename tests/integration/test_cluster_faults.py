"""Faults at cluster scale, on a real two-node Ray cluster on 127.0.0.1 (tests/support/cluster.py).

Each test breaks something the way a cluster breaks, and checks what a user gets:

- the second node (its raylet, agents and workers) is killed mid-pretraining: the job resumes
  from its last checkpoint once a replacement node joins, and finishes;
- a reading worker is killed mid-epoch: the epoch still yields every chip exactly once;
- the MLflow server restarts mid-run: training goes on, and the metrics logged meanwhile arrive
  afterwards (or are counted as lost in the run);
- the second node is killed mid-sweep: finished trials stay finished, the interrupted one resumes.

The times each recovery took are printed (``pytest -s``) as ``[eoforge] fault ...`` lines;
docs/reliability.md keeps a table of them.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from eoforge.plan.build import plan_rows
from eoforge.plan.io import write_plan
from eoforge.progress import say

from tests.integration.test_catalog_and_chips import data_cfg
from tests.support.cluster import NODE_RESOURCE, LocalCluster, wait_for
from tests.support.jobs import start_job, wait_job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head (+ MLflow) and a second node; this process is their client while the module runs."""
    import os

    c = LocalCluster(head_cpus=2, node_cpus=2)
    try:
        c.start()
        env = c.client_env()
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield c
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        c.close()


@pytest.fixture(scope="module")
def plan(demo_catalog, tmp_path_factory) -> Path:
    """The demo catalog's chip plan (every split)."""
    cfg = data_cfg(str(demo_catalog.catalog_json))
    path = tmp_path_factory.mktemp("faults-plan") / "plan.parquet"
    write_plan(plan_rows(cfg), path, cfg)
    return path


def pretrain_config(folder: Path, plan: Path, name: str, **train: Any) -> Path:
    """A tiny pretraining config whose 2 workers run on the second node; checkpoints every 3 steps."""
    config = yaml.safe_load((REPO / "configs/pretrain/dual_simclr.yaml").read_text())
    config["data"].update({"plan": str(plan), "split": "all", "config": None, "materialize": False, "read_tasks": 1})
    config["model"].update({"backbone": "resnet10t", "proj_dim": 32})
    config["train"].update({"epochs": 100, "batch_size": 4, "checkpoint_every_steps": 3, "max_steps": 12, **train})
    config["scaling"] = {"num_workers": 2, "cpus_per_worker": 0.5, "resources_per_worker": {NODE_RESOURCE: 1}}
    # what configs/pretrain/cluster-*.yaml set: a lost worker or node is survived
    config["run"] = {"name": name, "storage_path": str(folder / "ray_results"), "max_failures": 2}
    config["mlflow"].update({"experiment": "it-faults", "registered_model": f"{name}-ssl", "reuse": False})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def job_logs(cluster: LocalCluster, job: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.state.ray_dashboard_url).get_job_logs(job)


def running(cluster: LocalCluster, job: str) -> bool:
    """True while the job runs; fails the test with its logs once it has ended."""
    from ray.job_submission import JobSubmissionClient

    status = str(JobSubmissionClient(cluster.state.ray_dashboard_url).get_job_status(job))
    assert status in {"PENDING", "RUNNING"}, f"job {job} ended early ({status}):\n{job_logs(cluster, job)[-4000:]}"
    return True


def mlflow_run(cluster: LocalCluster, name: str) -> Any:
    """The run tagged ``eoforge.run_name = name`` in experiment it-faults, or None."""
    from mlflow import MlflowClient

    client = MlflowClient(cluster.state.mlflow_url)
    exp = client.get_experiment_by_name("it-faults")
    runs = client.search_runs([exp.experiment_id], f"tags.`eoforge.run_name` = '{name}'") if exp else []
    return runs[0] if runs else None


def history(cluster: LocalCluster, run_id: str, key: str) -> list[Any]:
    from mlflow import MlflowClient

    return sorted(MlflowClient(cluster.state.mlflow_url).get_metric_history(run_id, key), key=lambda m: m.timestamp)


def registered_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The latest checkpoint Ray Train's controller has registered in ``run_dir`` (its manager's snapshot), or None.

    A checkpoint's files exist before the controller registers it: a node killed in between
    leaves the retry nothing to resume from (seen once the tracking server stopped slowing the
    test's own polling down), so the fault is injected only after registration.
    """
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def checkpoints(folder: Path, name: str) -> list[Path]:
    """The run's checkpoints in its storage path (``checkpoint_*/state.pt``), oldest first."""
    return sorted((folder / "ray_results" / name).glob("checkpoint_*/state.pt"), key=lambda p: p.stat().st_mtime)


def test_a_lost_node_mid_pretraining_resumes_from_the_last_checkpoint(cluster, plan, tmp_path) -> None:
    name = "it-node-loss"
    config = pretrain_config(tmp_path, plan, name)
    job = start_job(cluster.state, f"{sys.executable} jobs/pretrain.py --config {config}")
    # both workers need the second node's resource: killing the node kills the whole worker group
    wait_for(
        "a first registered checkpoint",
        lambda: running(cluster, job) and registered_checkpoint(tmp_path / "ray_results" / name),
        600,
    )
    run = mlflow_run(cluster, name)
    trained_before = max(m.step for m in history(cluster, run.info.run_id, "train/loss"))
    t_kill = time.time()
    cluster.kill_node()
    cluster.wait_node_dead()
    t_dead = time.time()
    cluster.start_node()  # a replacement node joins (as a spot pool's autoscaler brings one)
    t_back = time.time()
    status = wait_job(cluster.state, job, timeout_s=600)
    logs = job_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    resumed = [int(s) for s in re.findall(r"resumed from checkpoint at step (\d+)", logs)]
    assert resumed and resumed[-1] > 0 and resumed[-1] % 3 == 0, logs[-4000:]
    losses = history(cluster, run.info.run_id, "train/loss")
    assert {m.step for m in losses} == set(range(1, 13))  # every step trained, the lost ones again
    after = [m for m in losses if m.timestamp > t_kill * 1000]
    assert after and min(m.step for m in after) == resumed[-1] + 1  # continued from the checkpoint, not step 0
    next_step = min(m.timestamp for m in after) / 1000
    resumed_at = next(m.timestamp for m in history(cluster, run.info.run_id, "resumed_from_step") if m.value > 0)
    lost = trained_before - resumed[-1]
    say(
        f"fault node-loss (pretraining): steps lost {lost} (trained to {trained_before}, resumed at {resumed[-1]}); "
        f"kill -> node seen dead {t_dead - t_kill:.1f}s, replacement node alive {t_back - t_kill:.1f}s, "
        f"workers restored {resumed_at / 1000 - t_kill:.1f}s, next step {next_step - t_kill:.1f}s"
    )


def test_an_mlflow_restart_mid_pretraining_stalls_nothing_and_loses_no_metric(cluster, plan, tmp_path) -> None:
    name = "it-mlflow-restart"
    # long enough to still train while the server is away (it is killed, then started again)
    config = pretrain_config(tmp_path, plan, name, max_steps=45)
    job = start_job(cluster.state, f"{sys.executable} jobs/pretrain.py --config {config}")
    wait_for("a first checkpoint", lambda: running(cluster, job) and checkpoints(tmp_path, name), 600)
    run_id = mlflow_run(cluster, name).info.run_id
    t_stop = time.time()
    cluster.stop_mlflow()
    try:
        # training goes on while the tracking server is away: a new checkpoint is written meanwhile
        # (with MLflow's client in the loop, rank 0 would wait on its retries and every worker with it);
        # the run keeps 2 checkpoints, so a new one is a name not seen before, not a larger count
        before = {p.parent.name for p in checkpoints(tmp_path, name)}

        def new_checkpoint() -> bool:
            return running(cluster, job) and bool({p.parent.name for p in checkpoints(tmp_path, name)} - before)

        wait_for("a checkpoint during the outage", new_checkpoint, 300)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; job logs:\n{job_logs(cluster, job)[-4000:]}") from None
    finally:
        t_start = time.time()
        cluster.start_mlflow()  # also when the test failed: the next tests need it
    t_back = time.time()
    logged_meanwhile = wait_for(
        "the metrics logged during the outage",
        lambda: [m for m in history(cluster, run_id, "train/loss") if t_stop * 1000 < m.timestamp < t_start * 1000],
        300,
    )
    t_arrived = time.time()
    status = wait_job(cluster.state, job, timeout_s=600)
    logs = job_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "tracking server unreachable" in logs and "buffered metrics sent" in logs
    losses = history(cluster, run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 46))  # every step once, the outage's included
    from mlflow import MlflowClient

    assert MlflowClient(cluster.state.mlflow_url).get_run(run_id).data.metrics["tracking/lost_metrics"] == 0
    say(
        f"fault mlflow-restart (pretraining): metrics lost 0, steps logged during the outage "
        f"{len(logged_meanwhile)}; server down {t_back - t_stop:.1f}s, training never waited; "
        f"buffered metrics in the run {t_arrived - t_back:.1f}s after it answered again"
    )


def test_a_reading_worker_killed_mid_epoch_loses_no_chip_and_repeats_none(cluster, demo_catalog, tmp_path) -> None:
    import json
    import os
    import signal
    import threading

    import ray
    from eoforge.data.dataset import build_chip_dataset

    cfg = data_cfg(str(demo_catalog.catalog_json))
    rows = plan_rows(cfg)
    # every chip opens its own files (a query the reader ignores) through the gate hook, which holds
    # the first reader of the chip named in <gate>/victim
    for i, row in enumerate(rows):
        for key in ("s2_assets", "s1_assets"):
            row[key] = json.dumps({b: f"{h}?gate={i}-" for b, h in json.loads(row[key]).items()}, sort_keys=True)
        row["access"] = json.dumps({k: {**v, "signing": "test_gate"} for k, v in json.loads(row["access"]).items()})
    write_plan(rows, tmp_path / "plan.parquet", cfg)
    gate = tmp_path / "gate"
    gate.mkdir()

    ray.init(address=cluster.state.ray_address, runtime_env={"env_vars": {"EOFORGE_TEST_GATE": str(gate)}})
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False

        def epoch(seen: list[str], failed: list[BaseException]) -> None:
            # small windows and chunks: several reading tasks, each yielding several blocks
            ds = build_chip_dataset(
                str(tmp_path / "plan.parquet"), "all", window_rows=4, shuffle_rows=2, mix_windows=1, read_tasks=2
            )
            try:
                for batch in ds.iter_batches(batch_size=2, batch_format="numpy"):
                    seen.extend(str(c) for c in batch["chip_id"])
            except BaseException as exc:  # reported by the test below
                failed.append(exc)

        order: list[str] = []
        epoch(order, [])  # the epoch's order (fixed by the seed before reading): the victim is 3/4 through
        index = {str(r["chip_id"]): i for i, r in enumerate(rows)}
        (gate / "victim").write_text(f"gate={index[order[3 * len(order) // 4]]}-")
        seen: list[str] = []
        failed: list[BaseException] = []
        consumer = threading.Thread(target=epoch, args=(seen, failed), daemon=True)
        consumer.start()
        held = gate / "held"
        pid = int(wait_for("a reading task to reach the held chip", lambda: held.exists() and held.read_text(), 300))
        before = len(seen)
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)  # the reading worker process, mid-task
        (gate / "release").touch()
        consumer.join(300)
        t_done = time.time()
        assert not consumer.is_alive(), "the epoch did not end after the reading worker was killed"
    finally:
        ray.shutdown()
    assert not failed, failed
    expected = sorted(str(r["chip_id"]) for r in rows)
    assert sorted(order) == expected
    assert sorted(seen) == expected, (len(seen), len(set(seen)), len(expected))  # every chip, exactly once
    assert seen == order  # and in the epoch's order
    say(
        f"fault reading-worker kill: chips lost 0, repeated 0 ({before} of {len(expected)} yielded before the kill); "
        f"kill -> epoch complete {t_done - t_kill:.1f}s"
    )


def test_a_lost_node_mid_sweep_keeps_finished_trials_and_resumes_the_interrupted_one(
    cluster, demo_catalog, tmp_path
) -> None:
    epochs = 12  # a checkpoint every 2nd: the node is lost after the first and at least 5 remain
    from eoforge.config import SplitConfig
    from eoforge.plan.io import build_plan
    from mlflow import MlflowClient

    cfg = data_cfg(str(demo_catalog.catalog_json), size_px=32)
    build_plan(cfg.model_copy(update={"splits": SplitConfig(train=0.6, val=0.2, test=0.2)}), tmp_path / "plan.parquet")
    base = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
    base["data"].update({"plan": str(tmp_path / "plan.parquet"), "config": None})
    base["train"] = {"epochs": epochs, "batch_size": 8, "eval_every_epochs": 1, "checkpoint_every_evals": 2}
    base["run"].update({"storage_path": str(tmp_path / "ft")})
    base["mlflow"].update({"experiment": "it-faults-sweep", "registered_model": None})
    sweep = yaml.safe_load((REPO / "configs/sweep/demo.yaml").read_text())
    sweep.update({"base": base, "set": {}})
    sweep["search"] = {"methods": {"scratch": {"source": "scratch", "mode": "finetune"}}, "label_fractions": [0.5, 1.0]}
    sweep["search"]["seeds"] = [0]
    # one trial at a time, its Train worker on the second node
    sweep["resources"] = {"num_workers": 1, "cpus_per_worker": 0.5, "max_concurrent_trials": 1}
    sweep["resources"]["resources_per_worker"] = {NODE_RESOURCE: 1}
    sweep["run"] = {"name": "it-sweep-node", "storage_path": str(tmp_path / "sweeps"), "max_failures": 2}
    sweep["mlflow"].update({"experiment": "it-faults-sweep", "registered_model": "it-faults-cls"})
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    job = start_job(cluster.state, f"{sys.executable} jobs/sweep.py --config {tmp_path / 'sweep.yaml'}")
    client = MlflowClient(cluster.state.mlflow_url)
    trials_dir = tmp_path / "sweeps" / "it-sweep-node" / "trials"

    def children() -> list[Any]:
        exp = client.get_experiment_by_name("it-faults-sweep")
        return client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''") if exp else []

    def second_trial_checkpointed() -> Any:
        """A finished trial, and a running one whose checkpoint the Train controller has registered."""
        runs = children()
        done = [r for r in runs if r.info.status == "FINISHED"]
        live = [r for r in runs if r.info.status == "RUNNING"]
        if running(cluster, job) and done and live:
            if registered_checkpoint(trials_dir / live[0].data.tags["eoforge.run_name"]):
                return done, live[0]
        return None

    done, interrupted = wait_for(
        "a finished trial and a registered checkpoint of the next", second_trial_checkpointed, 600
    )
    finished_before = {r.info.run_id: r.info.end_time for r in done}
    t_kill = time.time()
    cluster.kill_node()
    cluster.wait_node_dead()
    t_dead = time.time()
    cluster.start_node()
    t_back = time.time()
    status = wait_job(cluster.state, job, timeout_s=600)
    logs = job_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    runs = {r.info.run_id: r for r in children()}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values()), logs[-4000:]  # none ran twice
    for run_id, end_time in finished_before.items():
        assert runs[run_id].info.end_time == end_time  # finished trials stay finished, not run again
    resumed = history(cluster, interrupted.info.run_id, "resumed_from_epoch")
    assert resumed, logs[-4000:]  # the interrupted trial went on from a checkpoint
    at = int(resumed[-1].value)
    assert 2 <= at < epochs, logs[-4000:]  # a mid-run one (every 2nd epoch): not from the start, nor after the end
    epochs_done = max(
        m.step for m in history(cluster, interrupted.info.run_id, "train/loss") if m.timestamp < t_kill * 1000
    )
    say(
        f"fault node-loss (sweep): finished trials rerun 0; interrupted trial lost {epochs_done - at} "
        f"epoch(s) (trained {epochs_done}, resumed at {at}); kill -> node seen dead "
        f"{t_dead - t_kill:.1f}s, replacement node alive {t_back - t_kill:.1f}s, trial restored "
        f"{resumed[-1].timestamp / 1000 - t_kill:.1f}s"
    )
