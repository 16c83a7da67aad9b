"""Loop pieces that need no Ray: LR schedule, device switches on CPU, config kinds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from eoforge.config import PretrainConfig, load_config
from eoforge.errors import ConfigError
from eoforge.train.loop import device_plan
from eoforge.train.worker_kit import lr_factor

from tests.unit.test_config import REPO


def test_warmup_then_cosine_schedule() -> None:
    f = [lr_factor(s, 4, 20, "cosine", 0.1) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))
    assert lr_factor(100, 0, None, "cosine", 0.0) == 1.0  # unknown length: constant after warm-up


def test_gpu_switches_are_ignored_on_cpu_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOFORGE_HOME", "/tmp/eoforge-test-home")
    cfg = load_config(
        REPO / "configs/pretrain/dual_simclr.yaml",
        PretrainConfig,
        ["train.precision=bf16", "train.channels_last=true", "train.compile=true", "scaling.num_workers=2"],
    )  # two workers: SyncBatchNorm is on where there is more than one
    active, notes = device_plan(cfg, torch.device("cpu"))
    assert not any(active.values())
    assert len(notes) == 1 and "bf16" in notes[0] and "compile" in notes[0] and "CUDA only" in notes[0]
    active, _ = device_plan(cfg, torch.device("cuda"))
    assert active["bf16"] and active["channels_last"] and active["compile"] and active["sync_batchnorm"]


@pytest.mark.parametrize(
    "kind", ["dual_simclr", "simclr", "mma", "moco_v2", "moco_v3", "byol", "barlow_twins", "vicreg", "decur", "mae"]
)
def test_one_ready_config_per_objective(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOFORGE_HOME", "/tmp/eoforge-test-home")
    cfg = load_config(REPO / f"configs/pretrain/{kind}.yaml", PretrainConfig)
    assert cfg.objective.kind == kind and kind.replace("_", "-") in cfg.mlflow.registered_model


def test_a_parameter_of_another_objective_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOFORGE_HOME", "/tmp/eoforge-test-home")
    text = (REPO / "configs/pretrain/dual_simclr.yaml").read_text().replace("temperature: 0.1", "queue_size: 10")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"objective\.queue_size: unknown key"):
        load_config(tmp_path / "bad.yaml", PretrainConfig)
