"""MoCo v2: momentum key encoder and a queue of negatives.

References:
    - [0] He et al. "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
      https://arxiv.org/abs/1911.05722
    - [1] Chen et al. "Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020,
      https://arxiv.org/abs/2003.04297

For L2-normalised queries q (from the online encoder + MLP head) and keys k (from its EMA copy),
loss = CE over the logits [q.k+, q.queue_1..K] / tau with the positive at index 0. Keys of the
global batch (gathered across workers) are enqueued after the step, so every worker holds the
same queue; the key encoder follows theta_k <- m theta_k + (1 - m) theta_q after every
optimiser step. The loss is symmetrised (both views serve as query and key), which also trains
both backbones in the cross-modal form (S1 query vs S2 keys and the reverse; one queue per
modality). Shuffling BN of [0] is not done; with several GPUs, SyncBatchNorm is used instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.config.pretrain import MoCoV2Config, ModelConfig
from eoforge.models.projection_heads import projection_head
from eoforge.ssl.base import Objective, ema_update, momentum_copy, register_objective
from eoforge.ssl.gather import gather_nograd


def moco_infonce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of [0] with one positive key and the queue as negatives.

    Args:
        q: queries. Shape: (N, D), L2-normalised.
        k: positive keys of the same chips. Shape: (N, D), L2-normalised, no gradient.
        queue: negative keys. Shape: (K, D), L2-normalised.
        temperature: tau (0.2 in MoCo v2).

    Returns:
        Mean over the N queries of -log softmax at the positive.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@register_objective
class MoCoV2(Objective):
    """MoCo v2, intra-modal (two augmented views) or cross-modal (S1 vs S2)."""

    name = "moco_v2"
    description = "MoCo v2: momentum key encoder + queue of negatives (tau 0.2, m 0.999); intra or cross-modal."

    def __init__(self, cfg: MoCoV2Config, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        dim = model_cfg.proj_dim
        self.heads = nn.ModuleDict(
            {m: projection_head(self.width(m), model_cfg.proj_hidden_dim or self.width(m), dim) for m in ("s1", "s2")}
        )
        self.freeze_untrained()
        self.target_backbones = momentum_copy(self.backbones)
        self.target_heads = momentum_copy(self.heads)
        for m in ("s1", "s2"):
            self.register_buffer(f"queue_{m}", F.normalize(torch.randn(cfg.queue_size, dim), dim=1))
            self.register_buffer(f"queue_ptr_{m}", torch.zeros((), dtype=torch.long))

    def _query(self, m: str, x: Tensor) -> Tensor:
        return F.normalize(self.heads[m](self.backbones.features(m, x)), dim=1)

    @torch.no_grad()
    def _key(self, m: str, x: Tensor) -> Tensor:
        return F.normalize(self.target_heads[m](self.target_backbones.features(m, x)), dim=1)

    @torch.no_grad()
    def _enqueue(self, m: str, keys: Tensor) -> None:
        queue: Tensor = getattr(self, f"queue_{m}")
        ptr: Tensor = getattr(self, f"queue_ptr_{m}")
        keys = keys[-queue.shape[0] :]
        idx = (ptr + torch.arange(keys.shape[0], device=queue.device)) % queue.shape[0]
        queue[idx] = keys.to(queue.dtype)
        ptr.copy_((ptr + keys.shape[0]) % queue.shape[0])

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Symmetrised MoCo loss, averaged over view pairs; enqueues the global keys."""
        losses, new_keys = [], []
        for ma, xa, mb, xb in self.view_pairs(s1, s2):
            for mq, xq, mk, xk in ((ma, xa, mb, xb), (mb, xb, ma, xa)):
                k = self._key(mk, xk)
                queue = getattr(self, f"queue_{mk}").clone().detach()
                losses.append(moco_infonce(self._query(mq, xq), k, queue, self.cfg.temperature))
                new_keys.append((mk, k))
        for mk, k in new_keys:
            self._enqueue(mk, gather_nograd(k))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA update of the key encoder (constant momentum)."""
        ema_update(self.target_backbones, self.backbones, self.cfg.momentum)
        ema_update(self.target_heads, self.heads, self.cfg.momentum)
