"""Registered models rebuilt from their card, and the one-time migration of pickled versions.

A registered version is ``weights.safetensors`` + ``card.json`` (:mod:`eoforge.tracking.registry`).
The card's ``architecture`` names one of eoforge's own module kinds and the arguments it was
built with; :func:`build_model` builds that module with eoforge's code (timm backbones, eoforge's
heads) and :func:`load_registered_model` loads the weights into it (``strict``: every tensor must
fit). Nothing from the registry is ever imported or unpickled.

Versions an earlier eoforge registered as pickles are refused on load. :func:`migrate_legacy`
(``eoforge models migrate URI --trust-pickle``) unpickles one once, on the user's explicit word,
checks that the rebuilt module gives the same outputs, registers it as weights + card and moves
its aliases to the new version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eoforge.errors import UnsafeArtifactError

#: Architecture kinds :func:`build_model` knows.
KINDS = ("dual_backbone", "band_stats", "pixel_linear", "finetune")


def build_model(arch: dict[str, Any]) -> nn.Module:
    """An eoforge module with random weights, built from an ``architecture`` recipe of a model card.

    Raises:
        UnsafeArtifactError: the recipe names no kind eoforge builds.
    """
    from eoforge.finetune.task_heads import FinetuneModel
    from eoforge.models.band_stats import BandStats
    from eoforge.models.dual import dual_backbone_from_architecture
    from eoforge.models.pixel_linear import PixelLinear

    kind = arch.get("kind")
    if kind == "dual_backbone":
        return dual_backbone_from_architecture(arch)
    if kind == "band_stats":
        return BandStats()
    if kind == "pixel_linear":
        return PixelLinear(int(arch["num_classes"]), arch["s1_bands"], arch["s2_bands"])
    if kind == "finetune":
        backbone = build_model(arch["backbone"])
        chip = int(arch.get("chip_size") or 64)
        return FinetuneModel(backbone, arch["task"], int(arch["num_classes"]), chip, probe=bool(arch.get("probe")))
    raise UnsafeArtifactError(f"model card architecture kind {kind!r}: eoforge builds only {list(KINDS)}")


def module_from_card(uri: str, state: dict[str, torch.Tensor], card: dict[str, Any]) -> nn.Module:
    """The module ``card['architecture']`` describes, holding ``state`` (every tensor must fit).

    Raises:
        UnsafeArtifactError: the card has no architecture, or the weights do not fit it; naming ``uri``.
    """
    arch = card.get("architecture")
    if not isinstance(arch, dict):
        raise UnsafeArtifactError(f"{uri}: its model card has no 'architecture': eoforge cannot rebuild it")
    model = build_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsafeArtifactError(f"{uri}: the weights do not fit the card's architecture {arch}: {exc}") from None
    return model


def load_registered_model(uri: str, map_location: Any = "cpu", tracking_uri: str | None = None) -> nn.Module:
    """The module of a registered version (``models:/NAME/VERSION`` or ``@ALIAS``), on ``map_location``.

    Raises:
        UnsafeArtifactError: the version is a pickle, not eoforge's weights + card, or does not rebuild.
    """
    from eoforge.tracking.registry import download_weights

    state, card = download_weights(uri, tracking_uri)
    return module_from_card(uri, state, card).to(map_location)


@dataclass(frozen=True)
class Migration:
    """What ``eoforge models migrate`` did: the legacy version, the new one and the aliases moved."""

    source: str
    uri: str
    version: str
    aliases: list[str]
    max_abs_diff: float


def _legacy_architecture(model: nn.Module, card: dict[str, Any]) -> dict[str, Any]:
    """``model.architecture()``, completed from the legacy card where the old pickle lacked a field."""
    if not callable(getattr(model, "architecture", None)):
        raise UnsafeArtifactError(f"a {type(model).__name__} is not an eoforge model kind ({list(KINDS)})")
    arch = model.architecture()
    inner = arch["backbone"] if arch["kind"] == "finetune" else arch
    if inner.get("kind") == "dual_backbone":
        for key in ("img_size", "patch_size"):
            if inner.get(key) is None:
                inner[key] = (card.get("model") or {}).get(key)
    if arch["kind"] == "finetune" and arch.get("chip_size") is None:
        arch["chip_size"] = card.get("chip_px")
    return arch


def _same_outputs(old: nn.Module, new: nn.Module, arch: dict[str, Any]) -> float:
    """Largest absolute difference of the two modules' outputs on one seeded random input."""
    inner = arch["backbone"] if arch["kind"] == "finetune" else arch
    side = int(arch.get("chip_size") or inner.get("img_size") or 64)
    g = torch.Generator().manual_seed(0)
    n1, n2 = len(inner.get("s1_bands") or [0] * 2), len(inner.get("s2_bands") or [0] * 12)
    s1, s2 = torch.randn(2, n1, side, side, generator=g), torch.randn(2, n2, side, side, generator=g)
    with torch.inference_mode():
        return float((old.eval()(s1, s2).float() - new.eval()(s1, s2).float()).abs().max())


def migrate_legacy(tracking_uri: str, uri: str, *, trust_pickle: bool) -> Migration:
    """Re-register a pickled version of an earlier eoforge as weights + card; move its aliases.

    The new version is logged into the legacy version's run (artifact folder ``weights-v<VERSION>/<hash>``),
    tagged ``eoforge.migrated_from``, and carries the legacy version's tags.

    Raises:
        UnsafeArtifactError: ``trust_pickle`` is False; the version is not a legacy pickle; the
            unpickled object is not an eoforge model; or the rebuilt module's outputs differ.
    """
    from mlflow import MlflowClient

    from eoforge.tracking.registry import load_legacy_pickled_model, register_backbone, resolve_model_version

    mv = resolve_model_version(tracking_uri, uri)
    pinned = f"models:/{mv.name}/{mv.version}"
    old, card = load_legacy_pickled_model(pinned, tracking_uri, trust_pickle=trust_pickle)
    arch = _legacy_architecture(old, card)
    new = module_from_card(pinned, {k: v.detach().cpu() for k, v in old.state_dict().items()}, {"architecture": arch})
    diff = _same_outputs(old, new, arch)
    if diff > 1e-5:
        raise UnsafeArtifactError(f"{pinned}: the module rebuilt from its card differs from the pickle by {diff}")
    version, _ = register_backbone(
        new, mv.name, None, mv.run_id, tracking_uri, {**card, "architecture": arch}, f"weights-v{mv.version}"
    )
    client = MlflowClient(tracking_uri)
    for key, value in (mv.tags or {}).items():
        if key != "eoforge.format":
            client.set_model_version_tag(mv.name, version, key, value)
    client.set_model_version_tag(mv.name, version, "eoforge.migrated_from", str(mv.version))
    aliases = sorted(mv.aliases or [])
    for alias in aliases:
        client.set_registered_model_alias(mv.name, alias, version)
    return Migration(pinned, f"models:/{mv.name}/{version}", version, aliases, diff)
