"""Barlow Twins: the cross-correlation of the two views' standardised embeddings pushed to I.

References:
    - [0] Zbontar et al. "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
      ICML 2021, https://arxiv.org/abs/2103.03230

Each embedding dimension is standardised over the *global* batch (BatchNorm without affine:
biased variance, eps 1e-5), C = z_a^T z_b / N, and
loss = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 (lambda = 0.0051 as in [0] and DeCUR).
Embeddings are gathered across workers with gradients, so W workers x B chips give the loss
and gradients of one worker with W x B chips.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eoforge.config.pretrain import BarlowTwinsConfig, ModelConfig
from eoforge.models.projection_heads import bn_mlp
from eoforge.ssl.base import Objective, mean_over_pairs, register_objective
from eoforge.ssl.gather import gather_cat


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension (z - mean) / sqrt(biased var + eps) over the batch. Shape: (N, D)."""
    z = z.float()
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def cross_correlation(z_a: Tensor, z_b: Tensor) -> Tensor:
    """C = standardize(z_a)^T standardize(z_b) / N. Shape: (D, D)."""
    return standardize(z_a).T @ standardize(z_b) / z_a.shape[0]


def off_diagonal(c: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = c.shape[0]
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambda_offdiag: float = 0.0051) -> Tensor:
    """Barlow Twins loss of [0] for embeddings z_a, z_b of shape (N, D), N >= 2."""
    c = cross_correlation(z_a, z_b)
    return (torch.diagonal(c) - 1).pow(2).sum() + lambda_offdiag * off_diagonal(c).pow(2).sum()


@register_objective
class BarlowTwins(Objective):
    """Barlow Twins, intra-modal or cross-modal (S1 and S2 embeddings as the two views)."""

    name = "barlow_twins"
    description = "Barlow Twins: cross-correlation to identity over the global batch (lambda 0.0051); intra or cross."
    uses_batch_stats = True

    def __init__(self, cfg: BarlowTwinsConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        dim, hid = model_cfg.proj_dim, model_cfg.proj_hidden_dim
        self.heads = nn.ModuleDict({m: bn_mlp([self.width(m), hid or self.width(m), dim]) for m in ("s1", "s2")})
        self.freeze_untrained()

    def embed(self, m: str, x: Tensor) -> Tensor:
        """Projector output of one modality. Shape: (B, proj_dim)."""
        return self.heads[m](self.backbones.features(m, x))

    def _pair_loss(self, ma: str, xa: Tensor, mb: str, xb: Tensor) -> Tensor:
        za, zb = gather_cat(self.embed(ma, xa))[0], gather_cat(self.embed(mb, xb))[0]
        return barlow_twins_loss(za, zb, self.cfg.lambda_offdiag)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Global-batch Barlow Twins loss, averaged over view pairs."""
        return mean_over_pairs(self.view_pairs(s1, s2), self._pair_loss)
