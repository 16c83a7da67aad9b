"""A per-pixel linear classifier over both sensors' bands: the spectral control of segmentation.

Each pixel's logits are a linear map of that pixel's S1 and S2 values alone (a 1 x 1
convolution), so the model sees no texture and no context: what it gets right, the spectrum
alone knows (as :class:`~eoforge.models.band_stats.BandStats` is for per-chip tasks). Its
output at a pixel does not depend on the window around it, which is also what the predict tests
use to see seams. It registers as weights + card like every other model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES


class PixelLinear(nn.Module):
    """``forward(s1, s2)``: s1 (B, C1, H, W), s2 (B, C2, H, W) -> logits (B, K, H, W), pixel by pixel.

    ``classifier.weight`` is (K, C1 + C2, 1, 1), S1 bands first, in ``s1_bands + s2_bands`` order.
    """

    def __init__(
        self, num_classes: int, s1_bands: Sequence[str] = S1_BAND_NAMES, s2_bands: Sequence[str] = S2_BAND_NAMES
    ) -> None:
        super().__init__()
        self.s1_bands, self.s2_bands = list(s1_bands), list(s2_bands)
        self.classifier = nn.Conv2d(len(self.s1_bands) + len(self.s2_bands), num_classes, 1)

    def architecture(self) -> dict[str, Any]:
        """The card's recipe (JSON-able)."""
        return {
            "kind": "pixel_linear",
            "num_classes": int(self.classifier.out_channels),
            "s1_bands": self.s1_bands,
            "s2_bands": self.s2_bands,
        }

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """(B, K, H, W) logits."""
        return self.classifier(torch.cat([s1, s2], dim=1))
