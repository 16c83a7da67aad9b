"""The label-efficiency protocol as a sweep runs it: every arm, two objectives, one parent table.

One `ray job submit` of jobs/sweep.py on the local stack with the arms of issue 21 (scratch,
random_probe, band_stats_probe, an SSL probe per objective, a kNN probe) x one label fraction
x one seed x two learning rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from eoforge.config import SplitConfig
from eoforge.finetune.backbone_source import state_sha256
from eoforge.models.dual import DualBackbone, create_backbone
from eoforge.plan.io import build_plan
from eoforge.tracking.registry import register_backbone

from tests.integration.test_catalog_and_chips import data_cfg
from tests.support.jobs import run_job

REPO = Path(__file__).resolve().parents[2]
LRS = [0.001, 0.01]


def _register(stack, name: str, objective: str, seed: int, plan: Path, plan_split: str) -> str:
    import mlflow

    torch.manual_seed(seed)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")
    client = mlflow.MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("it-le") or client.get_experiment(client.create_experiment("it-le"))
    run = client.create_run(exp.experiment_id)
    card = {"backbone": "resnet18", "s1_bands": ["vv", "vh"], "s2_bands": list(backbone.s2_bands)}
    card.update({"normalize": "ssl4eo", "objective": objective, "plan": str(plan), "plan_split": plan_split})
    register_backbone(backbone, name, "candidate", run.info.run_id, stack.mlflow_url, card)
    return state_sha256(backbone)


@pytest.fixture(scope="module")
def protocol(stack, demo_catalog, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    cfg = data_cfg(str(demo_catalog.catalog_json), size_px=32)
    cfg = cfg.model_copy(update={"splits": SplitConfig(train=0.6, val=0.2, test=0.2)})
    build_plan(cfg, tmp / "plan.parquet")
    # the "dual" backbone claims it was pretrained on every chip of the plan (test places included),
    # the "mae" one on its train split only (by place: no test place)
    shas = {
        "dual_simclr": _register(stack, "it-le-dual", "dual_simclr", 1, tmp / "plan.parquet", "all"),
        "mae": _register(stack, "it-le-mae", "mae", 2, tmp / "plan.parquet", "train"),
    }
    base = yaml.safe_load((REPO / "configs/finetune/demo.yaml").read_text())
    base["data"].update({"plan": str(tmp / "plan.parquet"), "config": None})
    base["train"] = {
        "steps": 4,
        "evals": 2,
        "batch_size": 16,
        "knn_k": [1, 3],
        "probe_c": [0.01, 1.0],
    }  # >= 2 epochs: LP-FT's two phases
    base["run"].update({"storage_path": str(tmp / "ft")})
    base["mlflow"].update({"experiment": "it-le", "registered_model": None})
    sweep = {
        "kind": "sweep",
        "base": base,
        "search": {
            "methods": {
                "scratch": {"source": "scratch", "mode": "finetune"},
                "random_probe": {"source": "scratch", "mode": "linear_probe"},
                "band_stats_probe": {"source": "band_stats", "mode": "linear_probe"},
                "dual_probe": {
                    "source": "models:/it-le-dual@candidate",
                    "mode": "linear_probe",
                    "objective": "dual_simclr",
                },
                "mae_probe": {"source": "models:/it-le-mae@candidate", "mode": "linear_probe", "objective": "mae"},
                "mae_lpft": {"source": "models:/it-le-mae@candidate", "mode": "lp_ft", "objective": "mae"},
                "dual_knn": {"source": "models:/it-le-dual@candidate", "mode": "knn", "objective": "dual_simclr"},
            },
            "label_fractions": [0.5],
            "seeds": [0],
            "lr": LRS,
        },
        # two one-core trials at once, as the demo runs them (a small step gains nothing from a 2nd core)
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2},
        "run": {"name": "it-le-sweep", "storage_path": str(tmp / "sweeps")},
        "mlflow": {"experiment": "it-le-sweeps", "registered_model": "it-le-cls"},
    }
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    logs = run_job(stack, f"{sys.executable} jobs/sweep.py --config {tmp / 'sweep.yaml'}", 1500, True)
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("it-le-sweeps")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parent = next(r for r in runs if r.data.tags.get("eoforge.run_name") == "it-le-sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"client": client, "parent": parent, "children": children, "logs": logs, "shas": shas, "tmp": tmp}


def _by_source_mode(children, source: str, mode: str):
    return [c for c in children if c.data.params["backbone.source"] == source and c.data.params["mode"] == mode]


def test_every_arm_draws_the_same_labels_and_the_same_lr_grid(protocol) -> None:
    children = protocol["children"]
    # two trained arms (scratch, mae_lpft) x lr grid; four linear probes and one kNN once each (they have no lr)
    assert len(children) == 2 * len(LRS) + 4 + 1
    assert all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.params["labels.subset_sha256"] for c in children}) == 1  # identical label subsets
    grids = {}
    for c in children:
        if c.data.params["mode"] in ("finetune", "lp_ft"):
            key = (c.data.params["backbone.source"], c.data.params["mode"])
            grids.setdefault(key, set()).add(float(c.data.params["optim.lr"]))
    assert len(grids) == 2 and all(g == set(LRS) for g in grids.values()), grids
    # one step budget for every trained arm: the same number of optimiser steps
    assert len({c.data.params["train.steps"] for c in children}) == 1
    # every linear probe is solved for the same C grid and reports the C val chose
    probes = [c for c in children if c.data.params["mode"] == "linear_probe"]
    assert len(probes) == 4 and len({c.data.params["train.probe_c"] for c in probes}) == 1
    assert all(c.data.metrics["probe/C"] in (0.01, 1.0) for c in probes)


def test_random_probe_leaves_its_backbone_unchanged_and_ssl_probes_keep_theirs(protocol) -> None:
    for c in _by_source_mode(protocol["children"], "scratch", "linear_probe"):
        assert c.data.tags["eoforge.backbone_sha256_start"] == c.data.tags["eoforge.backbone_sha256_end"]
    for c in _by_source_mode(protocol["children"], "scratch", "finetune"):
        assert c.data.tags["eoforge.backbone_sha256_start"] != c.data.tags["eoforge.backbone_sha256_end"]
    for c in _by_source_mode(protocol["children"], "models:/it-le-mae@candidate", "linear_probe"):
        assert c.data.tags["eoforge.backbone_sha256_end"] == protocol["shas"]["mae"]
    # LP-FT: the head first on the frozen backbone, then everything. The run reports the val-chosen epoch's
    # weights: the pretrained backbone as it was if that epoch is in the head-only phase, a trained one after
    lpft = _by_source_mode(protocol["children"], "models:/it-le-mae@candidate", "lp_ft")
    assert len(lpft) == len(LRS)
    for c in lpft:
        head_only = int(c.data.tags["eoforge.head_only_epochs"])
        assert head_only >= 1
        kept = c.data.tags["eoforge.backbone_sha256_end"] == protocol["shas"]["mae"]
        assert kept == (c.data.metrics["best_epoch"] <= head_only), (head_only, c.data.metrics["best_epoch"])


def test_knn_picks_k_on_val_and_band_stats_probe_reports_test(protocol) -> None:
    (knn,) = _by_source_mode(protocol["children"], "models:/it-le-dual@candidate", "knn")
    assert knn.data.metrics["knn/k"] in (1.0, 3.0)
    assert 0.0 <= knn.data.metrics["test/aa"] <= 1.0
    for c in _by_source_mode(protocol["children"], "band_stats", "linear_probe"):
        assert 0.0 <= c.data.metrics["test/aa"] <= 1.0 and c.data.metrics["test/n"] > 0


def test_one_parent_table_holds_both_objectives_and_every_arm(protocol, tmp_path: Path) -> None:
    client, parent = protocol["client"], protocol["parent"]
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "results/label_fractions.csv", str(tmp_path)))
    assert set(table["method"]) == {
        "scratch",
        "random_probe",
        "band_stats_probe",
        "dual_probe",
        "mae_probe",
        "mae_lpft",
        "dual_knn",
    }
    assert {"dual_simclr", "mae"} <= set(table["objective"].dropna())
    assert "label fraction" in protocol["logs"]


def test_overlap_of_pretraining_and_test_places_is_recorded_and_the_bench_refuses_it(stack, protocol) -> None:
    from bench.label_efficiency import refuse_overlap

    children = protocol["children"]
    leaky = [c for c in children if c.data.params["backbone.source"] == "models:/it-le-dual@candidate"]
    clean = [c for c in children if c.data.params["backbone.source"] == "models:/it-le-mae@candidate"]
    for c in leaky:
        assert int(c.data.tags["eoforge.pretrain_test_overlap_chips"]) == int(c.data.params["eval.test_chips"]) > 0
    assert all(c.data.tags["eoforge.pretrain_test_overlap_chips"] == "0" for c in clean)
    scratch = _by_source_mode(children, "scratch", "finetune")
    assert not any("eoforge.pretrain_test_overlap_chips" in c.data.tags for c in scratch)
    plan = protocol["tmp"] / "plan.parquet"
    with pytest.raises(SystemExit, match="refusing a comparison on seen land"):
        refuse_overlap(stack.mlflow_url, "models:/it-le-dual@candidate", plan)
    refuse_overlap(stack.mlflow_url, "models:/it-le-mae@candidate", plan)  # no overlap: accepted
