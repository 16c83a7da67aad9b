"""Where fine-tuning starts from: a registered model, a pretraining checkpoint, or random init.

The driver resolves ``backbone.source`` once into a :class:`BackboneSpec` (a registry alias
becomes a pinned ``models:/NAME/VERSION``, so every worker and every trial loads the same
weights even if the alias moves meanwhile) and checks the model card against the fine-tuning
input (bands, normalisation). Workers then call :func:`load_backbone`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.errors import ConfigError
from eoforge.models.weights import load_checkpoint
from eoforge.train.loop import STATE_FILE  # the pretraining checkpoint's state file


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone source.

    Attributes:
        kind: ``registry``, ``checkpoint``, ``scratch`` or ``band_stats`` (no weights).
        name: timm model name.
        uri: pinned ``models:/NAME/VERSION`` (registry only).
        path: ``state.pt`` of a pretraining checkpoint (checkpoint only).
        source: what the config said (for the run's params).
        card: the registered model card (registry only).
    """

    kind: str
    name: str
    uri: str | None = None
    path: str | None = None
    source: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (crosses into Ray workers)."""
        return asdict(self)


def state_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _checkpoint_file(source: str) -> Path | None:
    p = Path(source.removeprefix("file://"))
    if p.is_dir() and (p / STATE_FILE).is_file():
        return p / STATE_FILE
    if p.is_file():
        return p
    return None


def resolve_backbone(source: str, name: str, tracking_uri: str, normalize: str) -> BackboneSpec:
    """Turn ``backbone.source`` into a :class:`BackboneSpec` and check it fits the input.

    Raises:
        ServiceError: the registry has no such model, alias or version (the message lists what exists).
        ConfigError: the source is neither a registry URI, a checkpoint nor ``scratch``; or the
            registered model was trained on other bands or another normalisation.
    """
    from eoforge.tracking.registry import model_card, resolve_model_version

    if source == "scratch":
        return BackboneSpec("scratch", name, source=source)
    if source == "band_stats":
        return BackboneSpec("band_stats", "band_stats", source=source)
    if source.startswith("models:/"):
        mv = resolve_model_version(tracking_uri, source)
        card = model_card(tracking_uri, mv.name, mv.version)
        check_card(card, source, normalize)
        return BackboneSpec(
            "registry",
            str(card.get("backbone") or name),
            uri=f"models:/{mv.name}/{mv.version}",
            source=source,
            card=card,
        )
    ckpt = _checkpoint_file(source)
    if ckpt is None:
        raise ConfigError(
            f"backbone.source: {source!r} is not 'scratch', 'band_stats', a models:/ URI, or an existing checkpoint "
            f"(a directory holding {STATE_FILE}, or the file itself)"
        )
    return BackboneSpec("checkpoint", name, path=str(ckpt), source=source)


def check_card(card: dict[str, Any], source: str, normalize: str) -> None:
    """Refuse a registered backbone whose bands or normalisation differ from the fine-tuning input."""
    problems = []
    if card.get("s1_bands") not in (None, list(S1_BAND_NAMES)):
        problems.append(f"S1 bands {card['s1_bands']} != {list(S1_BAND_NAMES)}")
    if card.get("s2_bands") not in (None, list(S2_BAND_NAMES)):
        problems.append(f"S2 bands {card['s2_bands']} != {list(S2_BAND_NAMES)}")
    if card.get("normalize") not in (None, normalize):
        problems.append(f"normalisation {card['normalize']!r} != data.normalize {normalize!r}")
    if problems:
        raise ConfigError(
            f"backbone.source {source}: the registered model does not fit this input: {'; '.join(problems)}"
        )


def load_backbone(spec: BackboneSpec | dict[str, Any], tracking_uri: str | None = None) -> nn.Module:
    """Build the :class:`~eoforge.models.dual.DualBackbone` a spec names (CPU, train mode)."""
    from eoforge.models.dual import DualBackbone, create_backbone

    if isinstance(spec, dict):
        spec = BackboneSpec(**spec)
    if spec.kind == "band_stats":
        from eoforge.models.band_stats import BandStats

        return BandStats()
    if spec.kind == "registry":
        from eoforge.finetune.registered import load_registered_model

        model = load_registered_model(spec.uri, "cpu", tracking_uri)
        return model.train()
    backbone = DualBackbone(
        create_backbone(spec.name, len(S1_BAND_NAMES)), create_backbone(spec.name, len(S2_BAND_NAMES)), spec.name
    )
    if spec.kind == "checkpoint":
        assert spec.path is not None
        state = load_checkpoint(spec.path)
        weights = state.get("model", state)
        prefix = "backbones."
        sub = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            backbone.load_state_dict(sub or weights)
        except RuntimeError as exc:
            raise ConfigError(f"backbone.source {spec.source}: weights do not fit {spec.name!r}: {exc}") from None
    return backbone
