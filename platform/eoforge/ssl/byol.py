"""BYOL: the online network's predictor regresses the EMA target network's projection.

References:
    - [0] Grill et al. "Bootstrap Your Own Latent", NeurIPS 2020, https://arxiv.org/abs/2006.07733

loss(p, z') = 2 - 2 <p / |p|, z' / |z'|>, averaged over the batch, symmetrised over the two views
(p1 vs z2' plus p2 vs z1'). The target follows theta' <- tau theta' + (1 - tau) theta with tau
on a cosine schedule from ``momentum`` to 1. The loss is per chip, so no gathering is needed;
the heads' BatchNorm becomes SyncBatchNorm with several GPU workers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.config.pretrain import BYOLConfig, ModelConfig
from eoforge.models.projection_heads import bn_mlp
from eoforge.ssl.base import Objective, cosine_momentum, ema_update, momentum_copy, register_objective


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """Mean over chips of 2 - 2 cos(p_i, z_i). p, z: (N, D); z carries no gradient."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


@register_objective
class BYOL(Objective):
    """BYOL, intra-modal or cross-modal (S1 predicts the S2 target and the reverse)."""

    name = "byol"
    description = "BYOL: online predictor regresses an EMA target (cosine momentum), no negatives; intra or cross."
    uses_batch_stats = True

    def __init__(self, cfg: BYOLConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        dim, hid = model_cfg.proj_dim, model_cfg.proj_hidden_dim
        self.heads = nn.ModuleDict({m: bn_mlp([self.width(m), hid or self.width(m), dim]) for m in ("s1", "s2")})
        self.predictors = nn.ModuleDict({m: bn_mlp([dim, cfg.pred_hidden_dim, dim]) for m in ("s1", "s2")})
        self.freeze_untrained()
        self.target_backbones = momentum_copy(self.backbones)
        self.target_heads = momentum_copy(self.heads)
        self.momentum = cfg.momentum

    def _online(self, m: str, x: Tensor) -> Tensor:
        return self.predictors[m](self.heads[m](self.backbones.features(m, x)))

    @torch.no_grad()
    def _target(self, m: str, x: Tensor) -> Tensor:
        return self.target_heads[m](self.target_backbones.features(m, x))

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Symmetrised BYOL loss, averaged over view pairs."""
        losses = [
            byol_loss(self._online(ma, xa), self._target(mb, xb))
            + byol_loss(self._online(mb, xb), self._target(ma, xa))
            for ma, xa, mb, xb in self.view_pairs(s1, s2)
        ]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA update of the target with the cosine schedule."""
        self.momentum = cosine_momentum(self.cfg.momentum, progress)
        ema_update(self.target_backbones, self.backbones, self.momentum)
        ema_update(self.target_heads, self.heads, self.momentum)
