"""VICReg: variance-invariance-covariance regularisation.

References:
    - [0] Bardes, Ponce, LeCun. "VICReg: Variance-Invariance-Covariance Regularization for
      Self-Supervised Learning", ICLR 2022, https://arxiv.org/abs/2105.04906

For embeddings Z, Z' (N, D) of the global batch:
- invariance s = mean squared error between Z and Z';
- variance v(Z) = mean_j max(0, 1 - sqrt(Var(Z_j) + eps)) (unbiased variance);
- covariance c(Z) = sum_{i != j} Cov(Z)_ij^2 / D with Cov = (Z - mean)^T (Z - mean) / (N - 1).
loss = sim_weight s + var_weight (v(Z) + v(Z')) / 2 + cov_weight (c(Z) + c(Z')), as the authors'
code (facebookresearch/vicreg) weights the terms (25, 25, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.config.pretrain import ModelConfig, VICRegConfig
from eoforge.models.projection_heads import bn_mlp
from eoforge.ssl.barlow_twins import off_diagonal
from eoforge.ssl.base import Objective, mean_over_pairs, register_objective
from eoforge.ssl.gather import gather_cat


def variance_term(z: Tensor, eps: float = 1e-4) -> Tensor:
    """mean_j relu(1 - sqrt(Var(z_j) + eps)). z: (N, D)."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances / D. z: (N, D)."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg loss of [0] for z_a, z_b of shape (N, D), N >= 2."""
    z_a, z_b = z_a.float(), z_b.float()
    inv = F.mse_loss(z_a, z_b)
    var = (variance_term(z_a, eps) + variance_term(z_b, eps)) / 2
    cov = covariance_term(z_a) + covariance_term(z_b)
    return sim_weight * inv + var_weight * var + cov_weight * cov


@register_objective
class VICReg(Objective):
    """VICReg, intra-modal or cross-modal."""

    name = "vicreg"
    description = "VICReg: invariance + variance + covariance terms (25/25/1) over the global batch; intra or cross."
    uses_batch_stats = True

    def __init__(self, cfg: VICRegConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        dim, hid = model_cfg.proj_dim, model_cfg.proj_hidden_dim
        self.heads = nn.ModuleDict({m: bn_mlp([self.width(m), hid or self.width(m), dim]) for m in ("s1", "s2")})
        self.freeze_untrained()

    def _pair_loss(self, ma: str, xa: Tensor, mb: str, xb: Tensor) -> Tensor:
        za = gather_cat(self.heads[ma](self.backbones.features(ma, xa)))[0]
        zb = gather_cat(self.heads[mb](self.backbones.features(mb, xb)))[0]
        c = self.cfg
        return vicreg_loss(za, zb, c.sim_weight, c.var_weight, c.cov_weight, c.eps)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Global-batch VICReg loss, averaged over view pairs."""
        return mean_over_pairs(self.view_pairs(s1, s2), self._pair_loss)
