"""Dual-SimCLR: NT-Xent across two co-located modalities.

References:
    - [0] Scheibenreif, Hanna, Mommert, Borth. "Contrastive Self-Supervised Data Fusion for
      Satellite Imagery", ISPRS Annals V-3-2022 (HSG-AIML/SSLTransformerRS).
    - [1] Chen et al. "A Simple Framework for Contrastive Learning of Visual
      Representations" (SimCLR), ICML 2020, https://arxiv.org/abs/2002.05709

For N co-located pairs with embeddings u_i = g1(f1(s1_i)) and v_i = g2(f2(s2_i)), stack
F = [u_1..u_N; v_1..v_N] (2N rows), L2-normalise the rows and take S = F F^T / tau with
the diagonal removed. Each of the 2N anchors has exactly one positive, its co-located
partner in the other modality, and 2N - 2 negatives from *both* modalities. The loss is
the mean over all 2N anchors of the cross-entropy of the positive, so it is symmetric in
the two modalities. N is the *global* batch: embeddings are gathered across workers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.config.pretrain import DualSimCLRConfig, ModelConfig
from eoforge.models.projection_heads import projection_head
from eoforge.ssl.base import Objective, register_objective
from eoforge.ssl.gather import gather_cat


def dual_nt_xent(u: Tensor, v: Tensor, temperature: float) -> Tensor:
    """Symmetric NT-Xent with cross-modal positives and negatives from both modalities.

    Args:
        u: S1 embeddings. Shape: (N, D).
        v: S2 embeddings of the same chips in the same order. Shape: (N, D).
        temperature: softmax temperature tau > 0 (0.07 for ResNet + MLP head in [0]).

    Returns:
        Scalar loss, mean over the 2N anchors.

    Raises:
        ValueError: the shapes differ, or N < 2 (no negatives).
    """
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"dual_nt_xent: u and v must both be (N, D); got {tuple(u.shape)} and {tuple(v.shape)}")
    n = u.shape[0]
    if n < 2:
        raise ValueError("dual_nt_xent: needs at least 2 pairs per batch (no negatives otherwise)")
    feats = F.normalize(torch.cat([u, v], dim=0).float(), dim=1)
    logits = feats @ feats.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=logits.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(logits.device)
    return F.cross_entropy(logits, targets)


class DualSimCLRLoss(nn.Module):
    """:func:`dual_nt_xent` as a module with its temperature.

    Examples:
        >>> loss = DualSimCLRLoss(temperature=0.1)
        >>> value = loss(torch.randn(8, 16), torch.randn(8, 16))
        >>> value.ndim
        0
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"DualSimCLRLoss: temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        """Loss of embeddings u (N, D) and v (N, D)."""
        return dual_nt_xent(u, v, self.temperature)


@register_objective
class DualSimCLR(Objective):
    """Dual-SimCLR [0]: one backbone + [ISPRS22] head per modality, global-batch NT-Xent."""

    name = "dual_simclr"
    description = "Dual-SimCLR: NT-Xent over S1/S2 pairs, negatives from both modalities (global batch)."

    def __init__(self, cfg: DualSimCLRConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        d1, d2 = self.width("s1"), self.width("s2")
        hidden = model_cfg.proj_hidden_dim
        # names kept from the first release (DualEncoder): old checkpoints load as they are
        self.head1 = projection_head(d1, hidden or d1, model_cfg.proj_dim)
        self.head2 = projection_head(d2, hidden or d2, model_cfg.proj_dim)

    def embed(self, s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """Projected embeddings (u, v) of this worker's chips, each (B, proj_dim)."""
        return self.head1(self.backbones.features("s1", s1)), self.head2(self.backbones.features("s2", s2))

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Global-batch Dual-SimCLR loss."""
        u, v = self.embed(*self.cross_views(s1, s2))
        return dual_nt_xent(gather_cat(u)[0], gather_cat(v)[0], self.cfg.temperature)
