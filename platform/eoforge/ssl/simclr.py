"""SimCLR on one modality at a time: two EO-augmented views of each chip.

References:
    - [0] Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations",
      ICML 2020, https://arxiv.org/abs/2002.05709

NT-Xent over the 2N views of the global batch: the other view of the same chip is the
positive, the 2N - 2 other views are negatives. Views come from
:func:`eoforge.ssl.augment.augment_view` (crop, flips, 90 degree rotations, band dropout,
noise; brightness/contrast only on S2). The cross-modal form is :mod:`eoforge.ssl.dual_simclr`.
"""

from __future__ import annotations

from torch import Tensor, nn

from eoforge.config.pretrain import ModelConfig, SimCLRConfig
from eoforge.models.projection_heads import bn_mlp
from eoforge.ssl.base import Objective, mean_over_pairs, register_objective
from eoforge.ssl.dual_simclr import dual_nt_xent
from eoforge.ssl.gather import gather_cat


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent of [0] for views z1 (N, D) and z2 (N, D): mean over the 2N anchors."""
    return dual_nt_xent(z1, z2, temperature)


@register_objective
class SimCLR(Objective):
    """SimCLR per modality, heads Linear-BN-ReLU-Linear."""

    name = "simclr"
    description = "SimCLR on each modality alone: two EO-augmented views (no colour jitter on SAR), NT-Xent."
    uses_batch_stats = True

    def __init__(self, cfg: SimCLRConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        self.heads = nn.ModuleDict(
            {
                m: bn_mlp([self.width(m), model_cfg.proj_hidden_dim or self.width(m), model_cfg.proj_dim])
                for m in self.modalities_trained()
            }
        )
        self.freeze_untrained()

    def _pair_loss(self, ma: str, xa: Tensor, mb: str, xb: Tensor) -> Tensor:
        za = self.heads[ma](self.backbones.features(ma, xa))
        zb = self.heads[mb](self.backbones.features(mb, xb))
        return nt_xent(gather_cat(za)[0], gather_cat(zb)[0], self.cfg.temperature)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Mean over modalities of the global-batch NT-Xent."""
        return mean_over_pairs(self.view_pairs(s1, s2), self._pair_loss)
