"""The label-efficiency controls and probes: band statistics, kNN, the linear probe and the step budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eoforge.config import FinetuneConfig, parse_config
from eoforge.finetune.probe import knn_scores, probe_schedule, run_knn, score, train_linear_probe
from eoforge.finetune.run import with_step_budget
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.finetune.tasks import Task
from eoforge.models.band_stats import BandStats


def _task(kind: str = "classification") -> Task:
    from eoforge.config.finetune import TaskConfig

    return Task.from_config(TaskConfig(kind=kind, classes="dfc8"))


def test_band_stats_are_each_bands_mean_and_std_over_valid_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    s2 = torch.randn(3, 12, 16, 16, generator=g)
    s1 = torch.randn(3, 2, 16, 16, generator=g)
    s2[0, :, :8] = 0  # half of chip 0's S2 is masked (a cloud); its S1 is not
    f = BandStats()(s1, s2)
    assert f.shape == (3, 2 * 2 + 2 * 12)
    s2_mean, s2_std = f[0, 4:16], f[0, 16:28]
    torch.testing.assert_close(s2_mean, s2[0, :, 8:].mean(dim=(1, 2)))
    torch.testing.assert_close(s2_std, s2[0, :, 8:].std(dim=(1, 2), unbiased=False))
    torch.testing.assert_close(f[0, :2], s1[0].mean(dim=(1, 2)))  # S1 over every pixel


def test_knn_votes_by_similarity_and_picks_k_on_val() -> None:
    task = _task()
    train_f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_t = np.array([0, 0, 3, 3])
    q = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_scores(train_f, train_t, q, 1, task).argmax(dim=1).tolist() == [0, 3]
    best_k, val_m, test_m, curve = run_knn(
        (train_f, train_t), (q, np.array([0, 3])), (q, np.array([0, 3])), [1, 3], task, "aa"
    )
    assert set(curve) == {1, 3} and best_k in curve and val_m["oa"] == 1.0 and test_m["n"] == 2


def test_linear_probe_learns_a_separable_problem_and_keeps_the_best_on_val() -> None:
    task = _task()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g) * 3
    y = torch.arange(200) % 8
    x = centres[y] + torch.randn(200, 16, generator=g) * 0.5
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(16, affine=False), torch.nn.Linear(16, 8))
    seen = []
    schedule = probe_schedule(160, 32, 10, 200, 4, 1)
    assert schedule[-1] == 200 and len(schedule) == 4
    state, _, best = train_linear_probe(
        head, (x[:160], y[:160].numpy()), (x[160:], y[160:].numpy()), task, 1e-2, 1e-4, 32, schedule, 0, "aa",
        lambda step, loss, m: seen.append((step, m["aa"])),
    )  # fmt: skip
    assert [s for s, _ in seen] == schedule and best == max(v for _, v in seen) and best > 0.95
    head.load_state_dict(state)
    assert score(task, head.eval()(x[160:]), y[160:].numpy())["aa"] == best


def test_probe_head_standardises_features_and_only_probes_get_it() -> None:
    probe = FinetuneModel(BandStats(), "classification", 8, 16, probe=True)
    assert isinstance(probe.head[0], torch.nn.BatchNorm1d) and not probe.head[0].affine
    plain = FinetuneModel(BandStats(), "classification", 8, 16, probe=False)
    assert isinstance(plain.head, torch.nn.Linear)


@pytest.mark.parametrize("chips", [6, 60, 600])
def test_step_budget_is_the_same_for_every_subset_size(chips: int) -> None:
    raw = {
        "kind": "finetune",
        "data": {"plan": "/tmp/p.parquet"},
        "task": {"kind": "classification"},
        "train": {"steps": 120, "evals": 6, "batch_size": 32},
        "run": {"name": "x", "storage_path": "/tmp/x"},
    }
    cfg = with_step_budget(parse_config(raw, "test", FinetuneConfig), chips)
    per_epoch = -(-chips // 32)
    assert 120 <= cfg.train.epochs * per_epoch < 120 + per_epoch
    assert cfg.train.epochs // cfg.train.eval_every_epochs <= 6


def test_arms_that_cannot_serve_a_task_are_refused() -> None:
    from eoforge.errors import ConfigError

    base = {"kind": "finetune", "data": {"plan": "/tmp/p.parquet"}, "run": {"name": "x", "storage_path": "/tmp/x"}}
    with pytest.raises(ConfigError, match="knn"):
        parse_config({**base, "task": {"kind": "segmentation"}, "mode": "knn"}, "test", FinetuneConfig)
    with pytest.raises(ConfigError, match="band_stats"):
        parse_config(
            {**base, "task": {"kind": "classification"}, "mode": "finetune", "backbone": {"source": "band_stats"}},
            "test",
            FinetuneConfig,
        )
