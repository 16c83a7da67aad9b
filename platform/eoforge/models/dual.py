"""Two backbones (one per sensor): the artifact every objective trains and registers.

The S1 backbone takes 2 channels (VV, VH), the S2 backbone 12 (S2_BAND_NAMES order) by
default; other band lists (13-band L1C, 202-band hyperspectral) are passed explicitly.
Weights start random: nothing is downloaded at run time unless ``model.pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.models.backbones import create_backbone
from eoforge.models.projection_heads import projection_head
from eoforge.models.spectral import SpectralAdapter

if TYPE_CHECKING:
    from eoforge.config.pretrain import ModelConfig

__all__ = [
    "DualBackbone",
    "DualEncoder",
    "build_dual_backbone",
    "create_backbone",
    "dual_backbone_from_architecture",
    "projection_head",
]


class DualBackbone(nn.Module):
    """The artifact that is registered: both backbones (and their spectral adapters), no heads.

    ``forward(s1, s2)`` takes s1 (B, 2, H, W) and s2 (B, 12, H, W), normalised as in
    :mod:`eoforge.data.normalize`, and returns the concatenated pooled features (B, d1 + d2).
    ``.s1`` and ``.s2`` are the timm models themselves (``forward_intermediates`` works on
    them); when a spectral adapter is configured it lives in ``.s1_adapter`` / ``.s2_adapter``
    and :meth:`adapt` applies it (Identity otherwise).
    """

    def __init__(
        self,
        s1: nn.Module,
        s2: nn.Module,
        backbone: str = "",
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s1_adapter: nn.Module | None = None,
        s2_adapter: nn.Module | None = None,
        img_size: int | None = None,
        patch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size  # as create_backbone was given them
        self.s1 = s1
        self.s2 = s2
        self.backbone_name = backbone
        self.s1_bands = list(s1_bands or S1_BAND_NAMES)
        self.s2_bands = list(s2_bands or S2_BAND_NAMES)
        self.s1_adapter = s1_adapter or nn.Identity()
        self.s2_adapter = s2_adapter or nn.Identity()

    def architecture(self) -> dict[str, Any]:
        """What :func:`dual_backbone_from_architecture` needs to build this module again (JSON-able).

        The registry stores it in the model card beside the weights: no code is stored.
        """
        adapters = {m: getattr(self, f"{m}_adapter", None) for m in ("s1", "s2")}
        adapted = isinstance(adapters["s1"], SpectralAdapter)
        return {
            "kind": "dual_backbone",
            "backbone": self.backbone_name,
            "s1_bands": list(self.s1_bands),
            "s2_bands": list(self.s2_bands),
            "img_size": getattr(self, "img_size", None),  # None: unpickled from before it was kept
            "patch_size": getattr(self, "patch_size", None),
            "spectral_adapter": adapters["s1"].out_chans if adapted else None,
            # hidden widths per sensor (each defaults from its own band count)
            "adapter_hidden": {m: int(a.net[0].out_channels) for m, a in adapters.items()} if adapted else None,
        }

    def adapt(self, modality: str, x: Tensor) -> Tensor:
        """Apply the modality's spectral adapter (Identity when none)."""
        adapter = getattr(self, f"{modality}_adapter", None)  # None: unpickled from before adapters existed
        return x if adapter is None else adapter(x)

    def encoder(self, modality: str) -> nn.Module:
        """The timm backbone of ``modality`` (``s1`` or ``s2``)."""
        return self.s1 if modality == "s1" else self.s2

    def features(self, modality: str, x: Tensor) -> Tensor:
        """Pooled features of one modality. Shape: (B, C, H, W) -> (B, d)."""
        return self.encoder(modality)(self.adapt(modality, x))

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Features of both sensors, concatenated. Shape: (B, d1 + d2)."""
        return torch.cat([self.features("s1", s1), self.features("s2", s2)], dim=1)


def build_dual_backbone(
    cfg: ModelConfig, s1_bands: Sequence[str] = S1_BAND_NAMES, s2_bands: Sequence[str] = S2_BAND_NAMES
) -> DualBackbone:
    """Both backbones as ``model:`` configures them (band lists default to the S1/S2 sets)."""
    parts: dict[str, tuple[nn.Module, nn.Module | None]] = {}
    for modality, bands in (("s1", s1_bands), ("s2", s2_bands)):
        adapter = SpectralAdapter(len(bands), cfg.spectral_adapter) if cfg.spectral_adapter else None
        in_chans = cfg.spectral_adapter or len(bands)
        net = create_backbone(
            cfg.backbone, in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size, pretrained=cfg.pretrained
        )
        parts[modality] = (net, adapter)
    return DualBackbone(
        parts["s1"][0],
        parts["s2"][0],
        cfg.backbone,
        s1_bands,
        s2_bands,
        parts["s1"][1],
        parts["s2"][1],
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
    )


def dual_backbone_from_architecture(arch: dict[str, Any]) -> DualBackbone:
    """A :class:`DualBackbone` with random weights, built from :meth:`DualBackbone.architecture`.

    Nothing is downloaded (``pretrained`` is off): the weights come from the registry afterwards.
    """
    parts: dict[str, tuple[nn.Module, nn.Module | None]] = {}
    adapter_chans = arch.get("spectral_adapter")
    for modality in ("s1", "s2"):
        bands = list(arch[f"{modality}_bands"])
        adapter = (
            SpectralAdapter(len(bands), adapter_chans, (arch.get("adapter_hidden") or {}).get(modality))
            if adapter_chans
            else None
        )
        net = create_backbone(
            arch["backbone"],
            adapter_chans or len(bands),
            img_size=arch.get("img_size"),
            patch_size=arch.get("patch_size"),
        )
        parts[modality] = (net, adapter)
    return DualBackbone(
        parts["s1"][0],
        parts["s2"][0],
        arch["backbone"],
        arch["s1_bands"],
        arch["s2_bands"],
        parts["s1"][1],
        parts["s2"][1],
        img_size=arch.get("img_size"),
        patch_size=arch.get("patch_size"),
    )


class DualEncoder(nn.Module):
    """Backbones plus [ISPRS22] heads (kept for code that builds the Dual-SimCLR model directly)."""

    def __init__(self, backbone: str, proj_dim: int = 128, proj_hidden_dim: int | None = None) -> None:
        super().__init__()
        self.backbones = DualBackbone(
            create_backbone(backbone, len(S1_BAND_NAMES)), create_backbone(backbone, len(S2_BAND_NAMES)), backbone
        )
        d1 = self.backbones.s1.num_features
        d2 = self.backbones.s2.num_features
        self.head1 = projection_head(d1, proj_hidden_dim or d1, proj_dim)
        self.head2 = projection_head(d2, proj_hidden_dim or d2, proj_dim)

    def forward(self, s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """Projected embeddings (u, v), each (B, proj_dim)."""
        return self.head1(self.backbones.s1(s1)), self.head2(self.backbones.s2(s2))
