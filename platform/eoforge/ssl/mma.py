"""MMA: multi-modal alignment of S1 and S2 feature maps.

References:
    - [0] Windsor, Jamaludin, Kadir, Zisserman. "Self-Supervised Multi-Modal Alignment for Whole
      Body Medical Imaging", MICCAI 2021, https://arxiv.org/abs/2107.06652
    - [1] Scheibenreif et al., ISPRS Annals V-3-2022 (MMA on SEN12MS; HSG-AIML/SSLTransformerRS
      ``utils.py``: ``get_batch_corrrelations``, ``NCELoss``), ssl-methods.md §1.5.

Each backbone's last feature map is projected to E channels by a 1x1 convolution and every
spatial cell's channel vector is L2-normalised. The similarity of chip i's S1 map a_i and
chip j's S2 map b_j is the maximum over spatial offsets of their cross-correlation (b_j used
as a convolution kernel), divided by h * w. With ``max_shift = 0`` only the aligned offset is
scored (what the repo's ``F.conv2d`` without padding computes for equal-size maps); the
default searches +-1 feature cell, tolerating small co-registration errors. The loss is a
symmetric InfoNCE over the N x N matrix (softmax over rows and over columns of sim / tau, mean
of -log of the diagonal of both): negatives are cross-modal only. N is the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.config.pretrain import MMAConfig, ModelConfig
from eoforge.models.backbones import spatial_features
from eoforge.ssl.base import Objective, register_objective
from eoforge.ssl.gather import gather_cat


def mma_similarity(a: Tensor, b: Tensor, max_shift: int = 0) -> Tensor:
    """Max spatial cross-correlation between every S1 map and every S2 map.

    Args:
        a: S1 feature maps. Shape: (N, E, h, w).
        b: S2 feature maps, same chips in the same order. Shape: (M, E, h, w).
        max_shift: largest offset searched, in feature cells (0: aligned only).

    Returns:
        sim[i, j] = max over offsets of <a_i, b_j shifted> / (h w), channel vectors L2-normalised.
        Shape: (N, M).
    """
    if a.ndim != 4 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mma_similarity: maps must be (N, E, h, w) alike; got {tuple(a.shape)}, {tuple(b.shape)}")
    h, w = b.shape[-2:]
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    corr = F.conv2d(a, b, padding=max_shift) / (h * w)
    return corr.flatten(2).amax(dim=2)


def mma_nce(sim: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE of [1]: -log diag of softmax over rows and over columns, averaged. sim: (N, N)."""
    targets = torch.arange(sim.shape[0], device=sim.device)
    logits = sim / temperature
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@register_objective
class MMA(Objective):
    """MMA with any backbone whose last stage is a feature map (CNN, Swin, ViT tokens on their grid)."""

    name = "mma"
    description = "MMA: symmetric InfoNCE over max spatial cross-correlation of S1/S2 feature maps, cross-modal."

    def __init__(self, cfg: MMAConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        self.proj = nn.ModuleDict({m: nn.Conv2d(self.width(m), cfg.embed_dim, 1) for m in ("s1", "s2")})

    def maps(self, modality: str, x: Tensor) -> Tensor:
        """Projected feature map of one modality. Shape: (B, E, h, w)."""
        net = self.backbones.encoder(modality)
        return self.proj[modality](spatial_features(net, self.backbones.adapt(modality, x)))

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Global-batch MMA loss."""
        a, b = gather_cat(self.maps("s1", s1))[0], gather_cat(self.maps("s2", s2))[0]
        return mma_nce(mma_similarity(a, b, self.cfg.max_shift), self.cfg.temperature)
