"""Label fractions, task targets, metrics and heads: pure functions on real numpy / torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eoforge.config import TaskConfig
from eoforge.finetune.backbone_source import state_sha256
from eoforge.finetune.fractions import label_subset, label_subsets
from eoforge.finetune.loop import _loss
from eoforge.finetune.metrics import confusion, single_label_metrics
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.finetune.tasks import Task
from eoforge.models.dual import DualBackbone, create_backbone

IDS = [f"S2:{i // 40}:{i}" for i in range(400)]
# unbalanced strata: class 7 has 3 chips, class 0 has 200
STRATA = [0] * 200 + [1] * 100 + [2] * 50 + [3] * 30 + [4] * 10 + [5] * 4 + [6] * 3 + [7] * 3


def test_fractions_are_nested_stratified_and_seeded() -> None:
    subsets = label_subsets(IDS, STRATA, [0.01, 0.1, 0.5, 1.0], seed=3)
    strata_of = dict(zip(IDS, STRATA, strict=True))
    for small, large in [(0.01, 0.1), (0.1, 0.5), (0.5, 1.0)]:
        assert set(subsets[small]) < set(subsets[large]), (small, large)
    for f, ids in subsets.items():
        assert {strata_of[c] for c in ids} == set(range(8)), f  # every class present at every fraction
    assert len(subsets[1.0]) == 400
    assert 8 <= len(subsets[0.01]) <= 4 + 8  # ceil per stratum: about 1 % plus at most one per class
    # same seed -> same chips, whatever else happens (another method, another order of the input)
    order = np.random.default_rng(0).permutation(400)
    shuffled = label_subset([IDS[i] for i in order], [STRATA[i] for i in order], 0.1, seed=3)
    assert shuffled == subsets[0.1]
    assert label_subset(IDS, STRATA, 0.1, seed=4) != subsets[0.1]


def test_fraction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        label_subset(IDS, STRATA, 0.0, seed=0)


def _task(kind: str, **kw: object) -> Task:
    return Task.from_config(TaskConfig(kind=kind, **kw))


def test_targets_of_the_three_tasks() -> None:
    label = np.full((10, 10), 255, np.uint8)
    label[:6] = 2  # 60 px class 2
    label[6:9] = 5  # 30 px class 5
    label[9, :5] = 1  # 5 px class 1 (5 % of the labelled 95)
    assert int(_task("classification").target(label, "[]")) == 2
    multi = _task("multilabel").target(label, "[]")
    assert multi.tolist() == [0, 0, 1, 0, 0, 1, 0, 0]  # class 1 is under 10 %
    seg = _task("segmentation").target(label, "[]")
    assert (seg[9, 5:] == 255).all() and seg[0, 0] == 2
    item = _task("multilabel", classes="bigearthnet19", label_source="item")
    hot = item.target(None, '["Coniferous forest", "Mixed forest", "Peatbogs", "Bare rock"]')
    names = [item.classes[k] for k in np.flatnonzero(hot)]
    assert names == ["Coniferous forest", "Mixed forest", "Inland wetlands"]  # bare rock has no 19-class label


#: DFC2020 rasters hold 1..10 (3 Savanna, 8 Snow/Ice dropped); the 8-class set the seeds use.
DFC10_TO_DFC8 = [255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7]


def test_label_map_turns_raster_values_into_class_ids() -> None:
    label = np.full((10, 10), 10, np.uint8)  # DFC 10 = Water
    label[:3] = 3  # Savanna: no class in dfc8 -> ignored
    label[3:5] = 1  # Forest
    label[9, 9] = 0  # unlabelled
    task = _task("segmentation", label_map=DFC10_TO_DFC8)
    seg = task.target(label, "[]")
    assert (seg[:3] == 255).all() and (seg[3:5] == 0).all() and seg[9, 9] == 255 and seg[5, 0] == 7
    cls = _task("classification", label_map=DFC10_TO_DFC8)
    assert int(cls.target(label, "[]")) == 7  # water is the majority of the labelled pixels
    assert cls.usable(label, "[]")  # 69 of 100 px labelled
    with pytest.raises(Exception, match="class ids \\[9\\]"):
        _task("classification", label_map=[0, 9])


def test_segmentation_loss_and_metrics_skip_the_ignore_index() -> None:
    task = _task("segmentation")
    logits = torch.randn(2, 8, 6, 6)
    target = torch.randint(0, 8, (2, 6, 6))
    masked = target.clone()
    masked[:, :3] = 255
    changed = logits.clone()
    changed[:, :, :3] = torch.randn(2, 8, 3, 6) * 100  # predictions under the ignored pixels
    assert torch.allclose(_loss(task, logits, masked), _loss(task, changed, masked))
    assert not torch.allclose(_loss(task, logits, target), _loss(task, changed, target))
    cm = confusion(masked.numpy(), logits.argmax(1).numpy(), 8)
    assert cm.sum() == 2 * 3 * 6


def test_average_accuracy_is_the_class_mean() -> None:
    true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    m = single_label_metrics(confusion(true, pred, 4))
    assert m["oa"] == pytest.approx(5 / 8)
    assert m["aa"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)  # class 3 has no sample: left out


def _backbone() -> DualBackbone:
    torch.manual_seed(0)
    return DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")


def test_linear_probe_leaves_the_backbone_unchanged() -> None:
    model = FinetuneModel(_backbone(), "classification", 8, 32)
    model.freeze_backbone()
    before_backbone, before_head = state_sha256(model.backbone), state_sha256(model.head)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(4, 2, 32, 32), torch.randn(4, 12, 32, 32)), torch.arange(4)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert state_sha256(model.backbone) == before_backbone  # weights and BatchNorm statistics
    assert state_sha256(model.head) != before_head


def test_segmentation_head_gives_per_pixel_logits() -> None:
    model = FinetuneModel(_backbone(), "segmentation", 8, 64)
    out = model(torch.randn(2, 2, 64, 64), torch.randn(2, 12, 64, 64))
    assert out.shape == (2, 8, 64, 64)
