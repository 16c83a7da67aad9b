"""MoCo v3: momentum encoder, predictor, in-batch negatives from the global batch.

References:
    - [0] Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision Transformers",
      ICCV 2021, https://arxiv.org/abs/2104.02057 (Algorithm 1)

q = predictor(projector(f(x))), k = projector_m(f_m(x')) from the momentum copy. For L2-normalised
q (local rows) and k (gathered over all workers), ctr(q, k) = 2 tau CE(q k^T / tau, labels),
where chip i's positive is its own key (index i + this worker's offset). The loss is
ctr(q1, k2) + ctr(q2, k1); the momentum follows a cosine schedule from ``momentum`` to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.config.pretrain import MoCoV3Config, ModelConfig
from eoforge.models.projection_heads import bn_mlp
from eoforge.ssl.base import Objective, cosine_momentum, ema_update, momentum_copy, register_objective
from eoforge.ssl.gather import gather_cat


def moco_v3_ctr(q: Tensor, k_all: Tensor, offset: int, temperature: float) -> Tensor:
    """ctr(q, k) of [0]: 2 tau CE(q k^T / tau), positives on the (offset) diagonal.

    Args:
        q: this worker's queries. Shape: (N, D) (normalised inside).
        k_all: keys of the global batch. Shape: (M, D) with M >= offset + N (normalised inside).
        offset: index of this worker's first chip in k_all.
        temperature: tau (0.2 in [0] for ViT).
    """
    q = F.normalize(q.float(), dim=1)
    k_all = F.normalize(k_all.float(), dim=1)
    logits = q @ k_all.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


@register_objective
class MoCoV3(Objective):
    """MoCo v3, intra-modal or cross-modal (S1 queries vs S2 keys and the reverse)."""

    name = "moco_v3"
    description = "MoCo v3: momentum encoder + predictor, global-batch negatives, cosine momentum; intra or cross."
    uses_batch_stats = True

    def __init__(self, cfg: MoCoV3Config, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        dim, hid = model_cfg.proj_dim, model_cfg.proj_hidden_dim
        self.heads = nn.ModuleDict(
            {
                m: bn_mlp([self.width(m), hid or self.width(m), dim], last_bn=True, last_bn_affine=False)
                for m in ("s1", "s2")
            }
        )
        self.predictors = nn.ModuleDict(
            {m: bn_mlp([dim, cfg.pred_hidden_dim, dim], last_bn=True, last_bn_affine=False) for m in ("s1", "s2")}
        )
        self.freeze_untrained()
        self.target_backbones = momentum_copy(self.backbones)
        self.target_heads = momentum_copy(self.heads)
        self.momentum = cfg.momentum

    def _query(self, m: str, x: Tensor) -> Tensor:
        return self.predictors[m](self.heads[m](self.backbones.features(m, x)))

    @torch.no_grad()
    def _key(self, m: str, x: Tensor) -> Tensor:
        return self.target_heads[m](self.target_backbones.features(m, x))

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """ctr(q1, k2) + ctr(q2, k1), averaged over view pairs."""
        losses = []
        for ma, xa, mb, xb in self.view_pairs(s1, s2):
            qa, qb = self._query(ma, xa), self._query(mb, xb)
            ka, kb = self._key(ma, xa), self._key(mb, xb)
            (ka_all, offset), (kb_all, _) = gather_cat(ka), gather_cat(kb)
            t = self.cfg.temperature
            losses.append(moco_v3_ctr(qa, kb_all, offset, t) + moco_v3_ctr(qb, ka_all, offset, t))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA update with the cosine momentum schedule."""
        self.momentum = cosine_momentum(self.cfg.momentum, progress)
        ema_update(self.target_backbones, self.backbones, self.momentum)
        ema_update(self.target_heads, self.heads, self.momentum)
