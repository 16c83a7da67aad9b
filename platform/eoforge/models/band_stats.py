"""Each band's chip mean and standard deviation: the spectral control of the label-efficiency protocol.

A linear probe on these features shows what the spectrum alone knows about a chip. A learned
backbone is worth its cost only where its features beat this control (texture, context).

:class:`BandStats` has the interface of :class:`~eoforge.models.dual.DualBackbone` that the
fine-tuning heads use (``s1`` / ``s2`` parts with ``num_features``, ``forward(s1, s2)``) and no
parameters. Masked pixels (exactly 0 after normalisation, see
:func:`eoforge.data.normalize.normalize_batch`) are left out of each sensor's statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES


class SensorStats(nn.Module):
    """Mean and std over a sensor's valid pixels, per band: (B, C, H, W) -> (B, 2C)."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.num_features = 2 * bands

    def forward(self, x: Tensor) -> Tensor:
        """Features (B, 2C): the C band means, then the C band standard deviations (normalised units)."""
        valid = (x != 0).any(dim=1, keepdim=True).to(x.dtype)  # (B, 1, H, W)
        n = valid.sum(dim=(2, 3)).clamp_min(1.0)  # (B, 1)
        mean = (x * valid).sum(dim=(2, 3)) / n
        var = ((x - mean[..., None, None]) ** 2 * valid).sum(dim=(2, 3)) / n
        return torch.cat([mean, var.clamp_min(0).sqrt()], dim=1)


class BandStats(nn.Module):
    """Both sensors' :class:`SensorStats`, concatenated: ``forward(s1, s2)`` -> (B, 2 * (2 + 12))."""

    def __init__(self) -> None:
        super().__init__()
        self.s1 = SensorStats(len(S1_BAND_NAMES))
        self.s2 = SensorStats(len(S2_BAND_NAMES))
        self.s1_bands, self.s2_bands = list(S1_BAND_NAMES), list(S2_BAND_NAMES)
        self.name = "band_stats"

    def architecture(self) -> dict[str, str]:
        """The card's recipe: no parameters, nothing else to record."""
        return {"kind": "band_stats"}

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Features (B, 28) of s1 (B, 2, H, W) and s2 (B, 12, H, W)."""
        return torch.cat([self.s1(s1), self.s2(s2)], dim=1)
