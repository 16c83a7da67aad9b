"""Two timm backbones (one per sensor) with projection heads.

The S1 backbone takes 2 channels (VV, VH), the S2 backbone 12 (S2_BAND_NAMES order).
Weights start random: nothing is downloaded at run time. Heads follow [ISPRS22]:
Linear(d, h) -> ReLU -> Linear(h, p).
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from eoforge.catalog.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.errors import ConfigError


def create_backbone(name: str, in_chans: int) -> nn.Module:
    """A timm backbone returning pooled features (num_classes=0). Shape: (B, C, H, W) -> (B, d)."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise ConfigError(f"model.backbone: {name!r} is not a timm model (similar: {close})")
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0)


def projection_head(dim: int, hidden: int, out: int) -> nn.Sequential:
    """MLP head: (B, dim) -> (B, out)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class DualBackbone(nn.Module):
    """The artifact that is registered: both backbones, no heads.

    ``forward(s1, s2)`` takes s1 (B, 2, H, W) and s2 (B, 12, H, W), normalised as in
    :mod:`eoforge.data.normalize`, and returns the concatenated pooled features (B, d1 + d2).
    """

    def __init__(self, s1: nn.Module, s2: nn.Module, backbone: str = "") -> None:
        super().__init__()
        self.s1 = s1
        self.s2 = s2
        self.backbone_name = backbone
        self.s1_bands = list(S1_BAND_NAMES)
        self.s2_bands = list(S2_BAND_NAMES)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Features of both sensors, concatenated. Shape: (B, d1 + d2)."""
        return torch.cat([self.s1(s1), self.s2(s2)], dim=1)


class DualEncoder(nn.Module):
    """Backbones plus heads, trained by a two-modality objective."""

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
