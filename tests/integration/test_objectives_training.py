"""Every objective trains a few steps on the demo catalog inside one Ray Train job, and its loss falls.

One ``ray job submit`` runs this file as a script (by its path: .rayignore keeps tests/ out of the upload):
a single TorchTrainer worker reads chips of the demo plan through Ray Data, then trains each
objective of configs/pretrain/<kind>.yaml (their ``model`` and ``objective`` sections as they
are) for a few optimiser steps on the same chips, one after the other, and writes the losses.
One job for all objectives keeps the test to about a minute of training on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KINDS = ["dual_simclr", "simclr", "mma", "moco_v2", "moco_v3", "byol", "barlow_twins", "vicreg", "decur", "mae"]
STEPS = 5
CHIPS = 8


def _config_file(kind: str) -> Path:
    return REPO / "configs/pretrain" / f"{kind}.yaml"


def _loop(config: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import torch
    from eoforge.config.pretrain import ModelConfig, ObjectiveConfig
    from eoforge.data.dataset import split_ok
    from eoforge.data.normalize import normalize_batch
    from eoforge.ssl.objectives import build_objective

    chips: dict[str, list[np.ndarray]] = {"s1": [], "s2": [], "valid": []}
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=4, batch_format="numpy"):
        good, _ = split_ok(batch)
        for k in chips:
            chips[k] += list(good[k])
    s2, s1 = normalize_batch(*(torch.from_numpy(np.stack(chips[k][:CHIPS])) for k in ("s2", "s1", "valid")), "ssl4eo")
    results: dict[str, Any] = {"chips": int(s1.shape[0])}
    for kind, sections in config["objectives"].items():
        torch.manual_seed(0)
        objective = build_objective(
            ObjectiveConfig.model_validate(sections["objective"]), ModelConfig.model_validate(sections["model"])
        )
        objective.train()
        params = [p for p in objective.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=sections["lr"], weight_decay=1e-4)
        losses, t0 = [], time.perf_counter()
        for step in range(STEPS):
            loss = objective(s1, s2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            objective.after_step((step + 1) / STEPS)
            losses.append(float(loss.detach()))
        results[kind] = {"losses": losses, "seconds": time.perf_counter() - t0}
        print(f"[objectives] {kind}: {[round(v, 4) for v in losses]}", flush=True)
    Path(config["out"]).write_text(json.dumps(results))
    ray.train.report({"done": 1})


def main(plan: str, out: str, storage: str) -> None:
    """Job body: Ray Data over the plan, one TorchTrainer worker, every objective in turn."""
    import ray
    import ray.train
    from eoforge.data.dataset import build_chip_dataset
    from ray.train.torch import TorchTrainer

    ray.init()
    objectives = {}
    for kind in KINDS:
        raw = yaml.safe_load(_config_file(kind).read_text())
        objectives[kind] = {"model": raw["model"], "objective": raw["objective"], "lr": 1e-3}
    dataset = build_chip_dataset(plan, split="all", normalize="ssl4eo", min_valid_fraction=0.5, read_tasks=2)
    TorchTrainer(
        _loop,
        train_loop_config={"objectives": objectives, "out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="it-objectives", storage_path=storage),
        datasets={"train": dataset},
    ).fit()


@pytest.fixture(scope="module")
def trained(stack, demo_catalog, tmp_path_factory) -> dict[str, Any]:
    from eoforge.plan.io import build_plan

    from tests.integration.test_catalog_and_chips import data_cfg
    from tests.support.jobs import run_job

    tmp = tmp_path_factory.mktemp("objectives")
    build_plan(data_cfg(str(demo_catalog.catalog_json)), tmp / "plan.parquet")
    out = tmp / "losses.json"
    # run as a script by path: .rayignore keeps tests/ out of the uploaded working dir
    run_job(stack, f"{sys.executable} {Path(__file__).resolve()} {tmp / 'plan.parquet'} {out} {tmp / 'ray'}", 600)
    return json.loads(out.read_text())


def test_job_read_demo_chips(trained: dict[str, Any]) -> None:
    assert trained["chips"] >= 4


@pytest.mark.parametrize("kind", KINDS)
def test_objective_loss_decreases_on_the_demo_catalog(trained: dict[str, Any], kind: str) -> None:
    losses = trained[kind]["losses"]
    assert len(losses) == STEPS and all(v == v for v in losses), losses  # no NaN
    assert min(losses[-2:]) < losses[0], f"{kind}: {losses}"


if __name__ == "__main__":
    main(*sys.argv[1:4])
