"""DeCUR: decoupling common and unique representations of two modalities.

References:
    - [0] Wang, Albrecht, Ait Ali Braham, Liu, Zhu. "Decoupling Common and Unique Representations
      for Multimodal Self-supervised Learning", ECCV 2024, https://arxiv.org/abs/2309.05300
      (zhu-xlab/DeCUR ``src/pretrain/models/decur.py``), ssl-methods.md §2.1.

Each modality Mk has two augmented views and its own encoder + projector. With C(a, b) the
Barlow Twins cross-correlation of globally standardised embeddings (BatchNorm without affine):
- intra-modal: L_Mk = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 for view 1 vs view 2;
- cross-modal (M1 view 1 vs M2 view 1), the first K of D dims "common", the rest "unique":
  L_com = sum_{i<K} (1 - C_ii)^2 + lambda sum_{i != j < K} C_ij^2,
  L_uni = sum_{i>=K} C_ii^2 + lambda sum_{i != j >= K} C_ij^2 (unique dims decorrelated);
  the common/unique off-diagonal blocks are not penalised; L_cross = (L_com + L_uni) / 2;
- L = (L_M1 + L_M2 + L_cross) / 3.
K = round(common_fraction x D) (7168 / 8192 = 0.875 for SSL4EO-S12 SAR-MS in [0]). Unlike the
authors' code, the two projectors do not share weights (the code shares them by accident).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eoforge.config.pretrain import DeCURConfig, ModelConfig
from eoforge.models.projection_heads import bn_mlp
from eoforge.ssl.augment import augment_view
from eoforge.ssl.barlow_twins import barlow_twins_loss, cross_correlation, off_diagonal
from eoforge.ssl.base import Objective, register_objective
from eoforge.ssl.gather import gather_cat


def decur_cross(z1: Tensor, z2: Tensor, common: int, lambda_offdiag: float) -> Tensor:
    """L_cross of [0]: common dims aligned, unique dims decorrelated. z1, z2: (N, D); common = K."""
    c = cross_correlation(z1, z2)
    cc, cu = c[:common, :common], c[common:, common:]
    l_com = (torch.diagonal(cc) - 1).pow(2).sum() + lambda_offdiag * off_diagonal(cc).pow(2).sum()
    l_uni = (
        torch.diagonal(cu).pow(2).sum() + lambda_offdiag * off_diagonal(cu).pow(2).sum() if cu.numel() else 0 * c.sum()
    )
    return (l_com + l_uni) / 2


def decur_loss(
    z1a: Tensor, z1b: Tensor, z2a: Tensor, z2b: Tensor, common: int, lambda_offdiag: float = 0.0051
) -> Tensor:
    """Total DeCUR loss (L_M1 + L_M2 + L_cross) / 3 for views a, b of modalities 1 and 2, each (N, D)."""
    l_m1 = barlow_twins_loss(z1a, z1b, lambda_offdiag)
    l_m2 = barlow_twins_loss(z2a, z2b, lambda_offdiag)
    return (l_m1 + l_m2 + decur_cross(z1a, z2a, common, lambda_offdiag)) / 3


@register_objective
class DeCUR(Objective):
    """DeCUR with S1 as modality 1 and S2 as modality 2."""

    name = "decur"
    description = "DeCUR: Barlow Twins per modality + common/unique split across S1/S2 (K = 87.5% of dims)."
    uses_batch_stats = True

    def __init__(self, cfg: DeCURConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        dim, hid = model_cfg.proj_dim, model_cfg.proj_hidden_dim
        self.heads = nn.ModuleDict({m: bn_mlp([self.width(m), hid or self.width(m), dim]) for m in ("s1", "s2")})
        self.common = max(1, round(cfg.common_fraction * dim))

    def _z(self, m: str, x: Tensor) -> Tensor:
        view = augment_view(x, self.cfg.augment, m == "s1")
        return gather_cat(self.heads[m](self.backbones.features(m, view)))[0]

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Global-batch DeCUR loss."""
        z1a, z1b, z2a, z2b = self._z("s1", s1), self._z("s1", s1), self._z("s2", s2), self._z("s2", s2)
        return decur_loss(z1a, z1b, z2a, z2b, self.common, self.cfg.lambda_offdiag)
