"""Pretraining as a user runs it: `ray job submit` of jobs/pretrain.py on the local stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from eoforge.finetune.registered import load_registered_model
from eoforge.plan.build import plan_rows
from eoforge.plan.io import read_plan, write_plan

from tests.integration.test_catalog_and_chips import data_cfg
from tests.support.jobs import run_job
from tests.support.leaks import files_containing, ray_logs_containing, serve_folder
from tests.support.provider_items import PLANTED_SECRET

REPO = Path(__file__).resolve().parents[2]


def submit(stack, config: Path, *overrides: str, timeout_s: float = 900) -> str:
    sets = " ".join(f"--set {o}" for o in overrides)
    return run_job(stack, f"{sys.executable} jobs/pretrain.py --config {config} {sets}", timeout_s)


@pytest.fixture(scope="module")
def trained(stack, demo_catalog, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg_data = data_cfg(str(demo_catalog.catalog_json))
    rows = plan_rows(cfg_data)
    # corrupt one chip's S2 B03: a truncated COG must be skipped and counted, not fail the job
    victim = rows[0]
    assets = json.loads(victim["s2_assets"])
    good = Path(assets["B03"].removeprefix("file://"))
    bad = tmp / "corrupt_B03.tif"
    bad.write_bytes(good.read_bytes()[:700])
    assets["B03"] = f"file://{bad}"
    victim["s2_assets"] = json.dumps(assets, sort_keys=True)
    # every href is signed with a planted secret (a registered test hook) just before it is read; a
    # second chip's B04 is served over HTTP and is no TIFF, so GDAL's error quotes the signed URL
    served = tmp_path_factory.mktemp("served")
    (served / "not_a_tiff_B04.tif").write_bytes(b"not a TIFF " * 100)
    with serve_folder(served) as url:
        victim2 = rows[1]
        assets = json.loads(victim2["s2_assets"])
        assets["B04"] = f"{url}/not_a_tiff_B04.tif"
        victim2["s2_assets"] = json.dumps(assets, sort_keys=True)
        for row in rows:
            access = {k: {**v, "signing": "test_planted"} for k, v in json.loads(row["access"]).items()}
            row["access"] = json.dumps(access, sort_keys=True)
        write_plan(rows, tmp / "plan.parquet", cfg_data)
        config = yaml.safe_load((REPO / "configs/pretrain/dual_simclr.yaml").read_text())
        config["data"].update({"plan": str(tmp / "plan.parquet"), "split": "all", "config": None, "materialize": False})
        config["model"]["proj_dim"] = 32
        config["optim"]["lr"] = 0.001
        config["train"].update({"epochs": 4, "batch_size": 4, "checkpoint_every_steps": 3})
        config["scaling"].update({"num_workers": 2, "cpus_per_worker": 1})  # DDP: two workers, sharded epochs
        config["run"].update({"name": "it-pretrain", "storage_path": str(tmp / "ray_results")})
        config["mlflow"].update({"experiment": "it", "registered_model": "it-dual-simclr"})
        (tmp / "pretrain.yaml").write_text(yaml.safe_dump(config))
        logs = submit(stack, tmp / "pretrain.yaml")
        yield {
            "tmp": tmp,
            "logs": logs,
            "config": tmp / "pretrain.yaml",
            "victim": victim["chip_id"],
            "victim2": victim2["chip_id"],
        }


def _run(stack, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("it")
    return client, client.search_runs([exp.experiment_id], f"tags.`eoforge.run_name` = '{name}'")[0]


def test_pretrain_lowers_loss_and_logs_lineage(stack, trained) -> None:
    client, run = _run(stack, "it-pretrain")
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(losses) >= 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    _, plan_hash = read_plan(trained["tmp"] / "plan.parquet")
    assert run.data.params["plan.hash"] == plan_hash
    assert run.info.status == "FINISHED"
    assert "models:/it-dual-simclr@candidate" in trained["logs"]
    tag = "[eoforge] step "
    steps = [line[line.index(tag) :] for line in trained["logs"].splitlines() if tag in line]
    assert steps and len(steps) == len(set(steps)), "progress lines printed more than once"


def test_corrupt_cog_is_skipped_and_counted(stack, trained) -> None:
    import mlflow

    client, run = _run(stack, "it-pretrain")
    assert run.data.metrics["data/skipped_chips"] >= 1
    path = client.download_artifacts(run.info.run_id, "data/skipped_chips.json", str(trained["tmp"]))
    skipped = json.loads(Path(path).read_text())
    assert trained["victim"] in skipped
    assert "corrupt_B03.tif" in skipped[trained["victim"]]
    assert mlflow  # imported for the artifact client


def test_a_planted_secret_is_written_nowhere(stack, trained) -> None:
    """Signed hrefs live only inside the reading processes: no error, log line or artifact keeps one."""
    client, run = _run(stack, "it-pretrain")
    path = client.download_artifacts(run.info.run_id, "data/skipped_chips.json", str(trained["tmp"]))
    error = json.loads(Path(path).read_text())[trained["victim2"]]
    assert "not_a_tiff_B04.tif?…' not recognized" in error, error  # GDAL quoted the signed URL: redacted
    assert PLANTED_SECRET not in trained["logs"]
    # everything the stack and the run wrote: MLflow's database and artifacts, stack logs, the plan,
    # checkpoints; and every Ray log (job drivers, raylet, each worker's .out / .err)
    found, n_files = files_containing([Path(stack.home), trained["tmp"]], PLANTED_SECRET)
    assert n_files > 20 and not found, found
    found, n_logs = ray_logs_containing(stack.ray_address, PLANTED_SECRET)
    assert n_logs > 5 and not found, found


def test_registered_model_loads_by_alias_and_runs_forward(stack, trained) -> None:
    import mlflow
    import torch

    mlflow.set_tracking_uri(stack.mlflow_url)
    model = load_registered_model("models:/it-dual-simclr@candidate")
    out = model(torch.zeros(3, 2, 64, 64), torch.zeros(3, 12, 64, 64))
    assert out.shape == (3, 1024)  # pooled features of both sensors (resnet10t / resnet18: 512 each)
    from eoforge.tracking.registry import show_model

    shown = show_model(stack.mlflow_url, "it-dual-simclr@candidate")
    demo_backbone = yaml.safe_load((REPO / "configs/pretrain/dual_simclr.yaml").read_text())["model"]["backbone"]
    assert shown["aliases"] == ["candidate"] and shown["tags"]["eoforge.backbone"] == demo_backbone


def test_rerun_with_same_name_resumes_from_checkpoint(stack, trained) -> None:
    client, run = _run(stack, "it-pretrain")
    steps_before = int(run.data.metrics["train/steps"])
    logs = submit(stack, trained["config"], "train.epochs=6")
    assert f"resumed from checkpoint at step {steps_before}" in logs
    client, run = _run(stack, "it-pretrain")
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    assert steps_before in resumed
    assert int(run.data.metrics["train/steps"]) > steps_before


def test_a_run_resumed_with_another_recipe_is_refused_and_left_as_it_was(stack, trained) -> None:
    """Same run name, another temperature: the job stops before training and the earlier run is untouched."""
    _, before = _run(stack, "it-pretrain")
    sets = "--set objective.temperature=0.2 --set train.epochs=9"  # a longer run alone would be a resume
    logs = run_job(stack, f"{sys.executable} jobs/pretrain.py --config {trained['config']} {sets}", expect_ok=False)
    assert "run.name 'it-pretrain'" in logs and "objective.temperature: 0.1 -> 0.2" in logs, logs[-3000:]
    assert "resumed from checkpoint" not in logs and "Traceback" not in logs
    _, after = _run(stack, "it-pretrain")
    assert after.info.status == before.info.status == "FINISHED"
    assert after.data.metrics["train/steps"] == before.data.metrics["train/steps"]


def test_materialized_epochs_train_from_the_materialized_plan(stack, trained) -> None:
    # data.materialize: the plan is decoded once into Parquet files, every epoch reads them
    logs = submit(
        stack,
        trained["config"],
        "run.name=it-pretrain-mat",
        "data.materialize=true",
        "train.epochs=3",
        "mlflow.registered_model=it-dual-simclr-mat",
    )
    assert "epochs read the materialised chips in" in logs
    client, run = _run(stack, "it-pretrain-mat")
    assert run.info.status == "FINISHED"
    cache = Path(run.data.tags["eoforge.materialized"])
    assert (cache / "_MANIFEST.json").is_file() and list(cache.glob("build-*/*.parquet"))
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses and np.isfinite(losses).all()
    assert int(run.data.metrics["train/steps"]) >= 6  # 2 workers x 3 epochs of batches from the cache
    path = client.download_artifacts(run.info.run_id, "data/skipped_chips.json", str(trained["tmp"]))
    assert trained["victim"] in json.loads(Path(path).read_text())  # the corrupt COG, counted from the files


def test_a_finished_pretraining_is_reused_not_rerun(stack, trained) -> None:
    """Same config on the same plan (another run name): the registered version is reused, nothing trains."""
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    versions_before = {v.version for v in client.search_model_versions("name = 'it-dual-simclr'")}
    config = yaml.safe_load(trained["config"].read_text())
    config["run"]["name"] = "it-pretrain-again"
    (trained["tmp"] / "again.yaml").write_text(yaml.safe_dump(config))
    logs = submit(stack, trained["tmp"] / "again.yaml")
    assert "pretraining reused" in logs and "[eoforge] step " not in logs
    assert {v.version for v in client.search_model_versions("name = 'it-dual-simclr'")} == versions_before
    exp = client.get_experiment_by_name("it")
    assert not client.search_runs([exp.experiment_id], "tags.`eoforge.run_name` = 'it-pretrain-again'")
    # a change that alters what is learnt trains again
    config["optim"]["lr"] = 0.002
    config["train"]["epochs"] = 1
    config["run"]["name"] = "it-pretrain-other-lr"
    (trained["tmp"] / "other.yaml").write_text(yaml.safe_dump(config))
    assert "pretraining reused" not in submit(stack, trained["tmp"] / "other.yaml")
