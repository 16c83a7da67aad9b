"""The label-efficiency controls and probes: band statistics, kNN, the linear probe and the step budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eoforge.config import FinetuneConfig, parse_config
from eoforge.finetune.probe import ABSENT_CLASS_LOGIT, fit_linear_probe, knn_scores, run_knn, score
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


def _probe_head(width: int, classes: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.BatchNorm1d(width, affine=False), torch.nn.Linear(width, classes))


def _blobs(n: int, width: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, width, generator=g) * 3
    y = torch.arange(n) % 8
    return centres[y] * torch.linspace(0.1, 50, width) + torch.randn(n, width, generator=g) * noise, y


def test_linear_probe_is_the_solved_logistic_regression_and_c_is_chosen_on_val() -> None:
    """The probe equals scikit-learn's logistic regression on the standardised features, for the C val picks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    task = _task()
    x, y = _blobs(400, 16, noise=6.0)  # overlapping classes on features of very different scales
    head, seen = _probe_head(16, 8), []
    cs = [0.001, 0.1, 10.0]
    state, best_c, best, _ = fit_linear_probe(
        head, (x[:240], y[:240].numpy()), (x[240:], y[240:].numpy()), task, cs, "aa",
        lambda i, loss, m: seen.append((cs[i], m["aa"])),
    )  # fmt: skip
    assert (
        [c for c, _ in seen] == cs
        and best == max(v for _, v in seen)
        and best_c == cs[[v for _, v in seen].index(best)]
    )
    head.load_state_dict(state)
    scaler = StandardScaler().fit(x[:240].numpy())
    reference = LogisticRegression(C=best_c, max_iter=5000, tol=1e-8).fit(scaler.transform(x[:240].numpy()), y[:240])
    ours = head.eval()(x[240:]).argmax(dim=1).numpy()
    theirs = reference.predict(scaler.transform(x[240:].numpy()))
    assert (ours == theirs).mean() >= 0.99
    assert score(task, head(x[240:]), y[240:].numpy())["aa"] == best


def test_linear_probe_never_predicts_a_class_its_subset_lacks() -> None:
    task = _task()
    x, y = _blobs(200, 8, noise=0.5)
    keep = (y == 2) | (y == 5)  # a small label subset with two of the eight classes
    head = _probe_head(8, 8)
    state, *_ = fit_linear_probe(head, (x[keep], y[keep].numpy()), (x, y.numpy()), task, [1.0], "aa", lambda *a: None)
    head.load_state_dict(state)
    assert set(head.eval()(x).argmax(dim=1).tolist()) <= {2, 5}
    assert float(head[1].bias.detach()[0]) == ABSENT_CLASS_LOGIT


def test_multilabel_probe_gives_constant_classes_their_smoothed_log_odds() -> None:
    task = _task("multilabel")
    x, y = _blobs(160, 8, noise=0.5)
    multi = torch.nn.functional.one_hot(y % 2, 8).float().numpy()  # classes 0 and 1 vary, 2-7 never occur
    head = _probe_head(8, 8)
    state, *_ = fit_linear_probe(head, (x, multi), (x, multi), task, [1.0], "map", lambda *a: None)
    head.load_state_dict(state)
    probs = torch.sigmoid(head.eval()(x))
    assert torch.allclose(probs[:, 2:], torch.full_like(probs[:, 2:], 0.5 / 161), rtol=1e-4)
    assert ((probs[:, :2] > 0.5).float().numpy() == multi[:, :2]).mean() > 0.9


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
