"""Spectral adapter: a learned projection over the band axis in front of a backbone.

Following the idea of the SpectralEarth spectral adapter (Braham et al., 2024,
https://arxiv.org/abs/2408.08447): hyperspectral (EnMAP, 202 bands) or Landsat inputs are
mapped onto a fixed, small number of channels by layers that act on each pixel's spectrum
only, so a standard backbone can follow. Here: two 1x1 convolutions (a per-pixel MLP over the
bands) with BatchNorm and GELU between them. The exact layer stack of SpectralEarth (1-D
convolutions along the spectrum) is not reproduced.
"""

from __future__ import annotations

from torch import Tensor, nn


class SpectralAdapter(nn.Module):
    """Per-pixel projection of C_in bands onto C_out channels.

    Args:
        in_bands: input bands C_in.
        out_chans: output channels C_out (the backbone's ``in_chans``).
        hidden: hidden width (default max(C_out, min(C_in, 64))).

    Shape: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_bands: int, out_chans: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(out_chans, min(in_bands, 64))
        self.in_bands, self.out_chans = in_bands, out_chans
        self.net = nn.Sequential(
            nn.Conv2d(in_bands, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, out_chans, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Project the bands of ``x`` (B, C_in, H, W)."""
        if x.shape[1] != self.in_bands:
            raise ValueError(f"SpectralAdapter: expected {self.in_bands} bands, got {x.shape[1]}")
        return self.net(x)
