"""The fine-tuning policy every trained arm shares: lr per part, chip augmentation, LP-FT's phases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eoforge.config import FinetuneConfig, parse_config
from eoforge.errors import ConfigError
from eoforge.finetune.backbone_source import state_sha256
from eoforge.finetune.policy import augment_batch, batch_rng, head_only_epochs, param_groups, set_backbone_trainable
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.models.dual import DualBackbone, create_backbone


def _model() -> FinetuneModel:
    torch.manual_seed(0)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")
    return FinetuneModel(backbone, "classification", 8, 32)


def _batch(n: int = 16, px: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 8, size=(n, px, px)).astype(np.uint8)
    return {
        "chip_id": np.array([f"c{i}" for i in range(n)]),
        "label": label,
        # every band carries the label (plus a band offset): a transform that moved one array and not another shows
        "s2": np.stack([label.astype(np.uint16) * 100 + b for b in range(12)], axis=1),
        "s1": np.stack([label.astype(np.float16) - 20, label.astype(np.float16) - 25], axis=1),
        "valid": np.stack([label > 2, label > 5], axis=1),
        "item_labels": np.array(["[]"] * n),
    }


def test_augmentation_moves_sensors_validity_and_labels_together() -> None:
    batch = _batch()
    out = augment_batch(batch, batch_rng(0, 0, 0))
    assert all(
        out[k].shape == batch[k].shape and out[k].dtype == batch[k].dtype for k in ("s1", "s2", "valid", "label")
    )
    label = out["label"]
    for b in range(12):
        np.testing.assert_array_equal(out["s2"][:, b], label.astype(np.uint16) * 100 + b)
    np.testing.assert_array_equal(out["s1"][:, 1], label.astype(np.float16) - 25)
    np.testing.assert_array_equal(out["valid"][:, 0], label > 2)
    np.testing.assert_array_equal(out["valid"][:, 1], label > 5)
    # each chip keeps its pixels (class histogram, so its majority class), and some chips did move
    for i in range(len(label)):
        assert np.array_equal(
            np.bincount(label[i].ravel(), minlength=8), np.bincount(batch["label"][i].ravel(), minlength=8)
        )
    moved = [not np.array_equal(label[i], batch["label"][i]) for i in range(len(label))]
    assert sum(moved) >= len(label) // 2
    assert out["item_labels"] is batch["item_labels"]
    # the same seed, epoch and step: the same draw; another step: another
    np.testing.assert_array_equal(augment_batch(batch, batch_rng(0, 0, 0))["label"], label)
    assert not np.array_equal(augment_batch(batch, batch_rng(0, 0, 1))["label"], label)


def test_augmentation_refuses_non_square_chips() -> None:
    batch = _batch()
    batch["label"] = batch["label"][:, :, :6]
    with pytest.raises(ValueError, match="'label' is not square"):
        augment_batch(batch, batch_rng(0, 0, 0))


def test_scratch_backbone_trains_at_the_full_lr_and_a_pretrained_one_at_the_scaled_lr() -> None:
    model = _model()
    scratch = param_groups(model, 3e-3, 0.1, pretrained=False, probe=False)
    pretrained = param_groups(model, 3e-3, 0.1, pretrained=True, probe=False)
    probe = param_groups(model, 3e-3, 0.1, pretrained=True, probe=True)
    assert [g["lr"] for g in scratch] == [3e-3, 3e-3]
    assert [g["lr"] for g in pretrained] == pytest.approx([3e-3, 3e-4])
    assert len(probe) == 1 and probe[0]["lr"] == 3e-3
    n_backbone = len(list(model.backbone.parameters()))
    assert len(scratch[1]["params"]) == n_backbone


@pytest.mark.parametrize(
    ("mode", "fraction", "epochs", "expected"),
    [("lp_ft", 0.5, 10, 5), ("lp_ft", 0.5, 2, 1), ("lp_ft", 0.01, 10, 1), ("lp_ft", 0.99, 10, 9),
     ("lp_ft", 0.5, 1, 0), ("finetune", 0.5, 10, 0), ("linear_probe", 0.5, 10, 0)],
)  # fmt: skip
def test_head_only_phase_of_lp_ft(mode: str, fraction: float, epochs: int, expected: int) -> None:
    assert head_only_epochs(mode, fraction, epochs) == expected


def _step(model: FinetuneModel, opt: torch.optim.Optimizer) -> None:
    model.train()
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(4, 2, 32, 32), torch.randn(4, 12, 32, 32)), torch.arange(4)
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def test_lp_ft_keeps_the_backbone_during_the_head_phase_then_trains_it() -> None:
    model = _model()
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 0.1, pretrained=True, probe=False))
    set_backbone_trainable(model, False)
    backbone, head = state_sha256(model.backbone), state_sha256(model.head)
    _step(model, opt)
    assert state_sha256(model.backbone) == backbone  # weights and BatchNorm statistics kept
    assert state_sha256(model.head) != head
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.backbone.parameters())
    _step(model, opt)
    assert state_sha256(model.backbone) != backbone


def test_lp_ft_is_a_mode_and_band_stats_cannot_use_it(tmp_path) -> None:
    base: dict = {
        "kind": "finetune",
        "data": {"plan": str(tmp_path / "plan.parquet")},
        "task": {"kind": "classification"},
        "run": {"name": "x", "storage_path": str(tmp_path)},
        "mode": "lp_ft",
    }
    cfg = parse_config(base, "ft.yaml", FinetuneConfig)
    assert cfg.mode == "lp_ft" and cfg.optim.lp_fraction == 0.5 and cfg.train.augment
    with pytest.raises(ConfigError, match="band_stats"):
        parse_config({**base, "backbone": {"source": "band_stats"}}, "ft.yaml", FinetuneConfig)


def test_the_cosine_schedule_decays_every_group_to_zero_and_resumes_where_it_stopped() -> None:
    from types import SimpleNamespace

    from eoforge.finetune.loop import set_scheduled_lr
    from eoforge.train.worker_kit import adamw

    model = _model()
    cfg = FinetuneConfig.model_validate(
        {
            "kind": "finetune",
            "data": {"plan": "p.parquet"},
            "task": {"kind": "classification"},
            "backbone": {"source": "scratch"},
            "mode": "finetune",
            "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 2},
            "train": {"epochs": 4},
            "run": {"name": "schedule", "storage_path": "/tmp/unused"},
        }
    )
    opt = adamw(param_groups(model, 0.01, 0.1, pretrained=True, probe=False))
    w = SimpleNamespace(cfg=cfg, opt=opt, base_lrs=(0.01, 0.001), steps_per_epoch=5)  # 20 steps in all
    lrs = []
    for step in range(20):
        set_scheduled_lr(w, step)
        lrs.append([g["lr"] for g in opt.param_groups])
    head, backbone = np.array(lrs).T
    assert head[0] == pytest.approx(0.005) and head[1] == pytest.approx(0.01)  # warm-up, then the peak
    assert np.all(np.diff(head[2:]) < 0) and head[-1] < 0.01 * 0.01  # then strictly down to about 0 at the end
    np.testing.assert_allclose(backbone, head * 0.1)  # every group on the same curve, at its own scale
    # a resumed run (an optimiser restored with decayed lrs) continues from the step, not from its state
    set_scheduled_lr(w, 12)
    assert opt.param_groups[0]["lr"] == pytest.approx(head[12])
    constant = cfg.model_copy(
        update={"optim": cfg.optim.model_copy(update={"schedule": "constant", "warmup_steps": 0})}
    )
    w.cfg = constant
    assert set_scheduled_lr(w, 19) == 1.0 and opt.param_groups[1]["lr"] == pytest.approx(0.001)
