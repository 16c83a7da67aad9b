"""Checkpoints load with weights_only (a pickled object is refused, its payload never runs), and
every registrable module kind is rebuilt from its card's architecture with identical outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eoforge.config.pretrain import ModelConfig
from eoforge.errors import UnsafeArtifactError
from eoforge.finetune.backbone_source import BackboneSpec, load_backbone
from eoforge.finetune.registered import build_model, module_from_card
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.models.band_stats import BandStats
from eoforge.models.dual import DualBackbone, build_dual_backbone, create_backbone
from eoforge.models.pixel_linear import PixelLinear
from eoforge.models.weights import load_checkpoint
from torch import nn

from tests.support.pickle_payload import Payload


def test_a_checkpoint_with_a_pickled_object_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "state.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 3, "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeArtifactError, match=rf"checkpoint {path}: refused.*weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(UnsafeArtifactError, match="refused"):
        load_backbone(BackboneSpec("checkpoint", "resnet18", path=str(path), source=str(path)))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.read_text() == "code ran"


def test_eoforge_checkpoints_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = FinetuneModel(BandStats(), "classification", 4, 16, probe=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 2, 8, 8), torch.randn(3, 12, 8, 8)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "best_value": -float("inf")}
    state |= {"best_epoch": 0, "best_state": None}
    torch.save(state, tmp_path / "finetune_state.pt")
    back = load_checkpoint(tmp_path / "finetune_state.pt")
    assert back["epoch"] == 2 and back["best_state"] is None and back["best_value"] == -float("inf")
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())
    opt.load_state_dict(back["optimizer"])


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.pt").write_text("not a checkpoint")
    with pytest.raises(UnsafeArtifactError, match=r"state\.pt"):
        load_checkpoint(tmp_path / "state.pt")


def _resnet() -> DualBackbone:
    return DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")


MODULES = {
    "dual_backbone": lambda: _resnet(),
    "adapter_vit": lambda: build_dual_backbone(
        ModelConfig(backbone="vit_s16", img_size=32, patch_size=8, spectral_adapter=4)
    ),
    "classifier": lambda: FinetuneModel(_resnet(), "classification", 5, 32),
    "segmenter": lambda: FinetuneModel(_resnet(), "segmentation", 3, 32),
    "band_stats_probe": lambda: FinetuneModel(BandStats(), "multilabel", 6, 32, probe=True),
    "pixel_linear": lambda: PixelLinear(4),
}


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_every_module_is_rebuilt_from_its_architecture_with_the_same_outputs(kind: str) -> None:
    torch.manual_seed(0)
    model = MODULES[kind]().eval()
    for buffer in model.buffers():  # BatchNorm statistics that differ from a fresh module's
        if buffer.is_floating_point():
            buffer.add_(torch.rand_like(buffer))
    arch = model.architecture()
    torch.manual_seed(1)  # other random weights, then the registered ones
    rebuilt = module_from_card("models:/m/1", dict(model.state_dict()), {"architecture": arch}).eval()
    s1, s2 = torch.randn(2, 2, 32, 32), torch.randn(2, 12, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(s1, s2), rebuilt(s1, s2))


def test_a_card_without_architecture_or_with_unfitting_weights_is_refused() -> None:
    with pytest.raises(UnsafeArtifactError, match="models:/m/2: its model card has no 'architecture'"):
        module_from_card("models:/m/2", {}, {"task": "segmentation"})
    with pytest.raises(UnsafeArtifactError, match="models:/m/3: the weights do not fit"):
        module_from_card("models:/m/3", PixelLinear(4).state_dict(), {"architecture": PixelLinear(5).architecture()})
    with pytest.raises(UnsafeArtifactError, match=r"kind 'os\.system'"):
        build_model({"kind": "os.system"})
    assert isinstance(build_model({"kind": "band_stats"}), nn.Module)
