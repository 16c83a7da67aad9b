"""Registered models are weights + card in a real MLflow registry: nothing on the load path unpickles.

- a version round-trips (register -> load by alias) with identical outputs, and holds only
  ``weights.safetensors`` and ``card.json``;
- a pickled version, as an earlier eoforge (or an attacker with write access to the artifact
  store) left it, is refused by every loader, and the code in its pickle never runs;
- ``eoforge models migrate`` (a real CLI process) refuses without ``--trust-pickle`` and with it
  re-registers an earlier eoforge's pickled backbone as weights + card, moving its alias.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eoforge.errors import UnsafeArtifactError
from eoforge.finetune.backbone_source import resolve_backbone
from eoforge.finetune.registered import load_registered_model
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.models.dual import DualBackbone, create_backbone
from eoforge.predict.model import resolve_models
from eoforge.tracking.registry import model_card, register_backbone
from torch import nn

from tests.support.pickle_payload import Payload
from tests.support.predict_models import card

pytestmark = pytest.mark.integration
EOFORGE = Path(sys.executable).with_name("eoforge")
CLASSES = ["a", "b", "c"]


class Trojan(nn.Module):
    """A module that looks like a model and carries a payload."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.payload = Payload(marker)


def _run(url: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("it-weights")
    return client.create_run(exp.experiment_id if exp else client.create_experiment("it-weights")).info.run_id


def log_pickled(url: str, model: nn.Module, name: str, metadata: dict, alias: str) -> str:
    """Register ``model`` as eoforge did before weights + card (MLflow's pytorch flavour, a pickle)."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(url)
    with mlflow.start_run(run_id=_run(url)):
        info = mlflow.pytorch.log_model(
            model,
            name="backbone",
            registered_model_name=name,
            metadata=metadata,
            pip_requirements=[],
            serialization_format="pickle",
        )
    MlflowClient(url).set_registered_model_alias(name, alias, str(info.registered_model_version))
    return f"models:/{name}@{alias}"


def migrate(uri: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EOFORGE), "models", "migrate", uri, *flags], capture_output=True, text=True, timeout=300, check=False
    )


def test_a_version_is_weights_and_card_and_loads_with_the_same_outputs(stack) -> None:
    import mlflow

    torch.manual_seed(0)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")
    model = FinetuneModel(backbone, "segmentation", len(CLASSES), 32).eval()
    model.head.lateral[0].bias.data.add_(1.0)  # weights that a fresh module would not have
    run_id = _run(stack.mlflow_url)
    _, uri = register_backbone(
        model, "it-weights-seg", "champion", run_id, stack.mlflow_url, card("segmentation", CLASSES, 32), "model"
    )
    mlflow.set_tracking_uri(stack.mlflow_url)
    files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri="models:/it-weights-seg/1")}
    assert files == {"card.json", "weights.safetensors"}
    assert model_card(stack.mlflow_url, "it-weights-seg", "1")["architecture"]["kind"] == "finetune"
    loaded = load_registered_model(uri, "cpu", stack.mlflow_url).eval()
    s1, s2 = torch.randn(2, 2, 32, 32), torch.randn(2, 12, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(s1, s2), loaded(s1, s2))


def test_a_pickled_version_is_refused_and_its_payload_never_runs(stack, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    meta = card("classification", CLASSES, 32)
    uri = log_pickled(stack.mlflow_url, Trojan(marker), "it-weights-trojan", meta, "champion")
    migrate_hint = "eoforge models migrate models:/it-weights-trojan/1 --trust-pickle"
    with pytest.raises(UnsafeArtifactError, match=r"models:/it-weights-trojan@champion: refused: .*pickle"):
        load_registered_model(uri, "cpu", stack.mlflow_url)
    with pytest.raises(UnsafeArtifactError, match=migrate_hint):
        model_card(stack.mlflow_url, "it-weights-trojan", "1")
    with pytest.raises(UnsafeArtifactError, match=migrate_hint):
        resolve_models(stack.mlflow_url, uri, None, ["classes"], None)
    with pytest.raises(UnsafeArtifactError, match=migrate_hint):
        resolve_backbone(uri, "resnet18", stack.mlflow_url, "ssl4eo")
    done = migrate(uri)
    assert done.returncode == 2, done.stderr
    assert "--trust-pickle only if you trust everyone who can write it" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_migrate_re_registers_a_pickled_backbone_as_weights_and_moves_its_alias(stack) -> None:
    from mlflow import MlflowClient

    torch.manual_seed(2)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18").eval()
    meta = {"backbone": "resnet18", "s1_bands": backbone.s1_bands, "s2_bands": backbone.s2_bands}
    uri = log_pickled(stack.mlflow_url, backbone, "it-weights-legacy", meta | {"normalize": "ssl4eo"}, "candidate")
    done = migrate(uri, "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert "models:/it-weights-legacy/1 -> models:/it-weights-legacy/2" in done.stdout
    assert "aliases moved: @candidate" in done.stdout
    mv = MlflowClient(stack.mlflow_url).get_model_version_by_alias("it-weights-legacy", "candidate")
    assert str(mv.version) == "2" and mv.tags["eoforge.migrated_from"] == "1"
    loaded = load_registered_model(uri, "cpu", stack.mlflow_url).eval()
    s1, s2 = torch.randn(2, 2, 32, 32), torch.randn(2, 12, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(s1, s2), loaded(s1, s2))
    assert resolve_backbone(uri, "resnet18", stack.mlflow_url, "ssl4eo").uri == "models:/it-weights-legacy/2"
