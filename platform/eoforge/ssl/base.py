"""The objective interface: one :class:`Objective` subclass per method, found by ``objective.kind``.

An objective owns everything its method trains or tracks: the :class:`DualBackbone` (the
artifact that is registered), heads, predictors, momentum/teacher copies and queues. The loop
only calls ``loss = objective(s1, s2)`` (through DDP), ``backward``, the optimiser step, then
:meth:`Objective.after_step` (momentum updates). Batch-global losses gather embeddings across
workers themselves (:mod:`eoforge.ssl.gather`).

A new method is one file under ``eoforge/ssl/``: a pure loss function with its references, a
subclass decorated with ``@register_objective``, and its config class in
:mod:`eoforge.config.pretrain`; then import it in :mod:`eoforge.ssl.objectives`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eoforge.config.pretrain import ModelConfig, ObjectiveConfig
from eoforge.models.dual import DualBackbone, build_dual_backbone
from eoforge.ssl.augment import augment_pair, augment_view

MODALITIES = ("s1", "s2")
_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register an objective under ``cls.name`` (its config ``kind``)."""
    _OBJECTIVES[cls.name] = cls
    return cls


class Objective(nn.Module):
    """Base class of SSL objectives.

    Attributes:
        name: the config ``objective.kind``.
        description: one line for ``eoforge list objectives``.
        min_batch: fewest valid chips per worker a step needs (BatchNorm, negatives).
        uses_batch_stats: the heads use BatchNorm, so SyncBatchNorm matters with several workers.
        backbones: the registered artifact.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    min_batch: ClassVar[int] = 2
    uses_batch_stats: ClassVar[bool] = False

    def __init__(self, cfg: ObjectiveConfig, model_cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg: Any = cfg
        self.model_cfg = model_cfg
        self.backbones: DualBackbone = build_dual_backbone(model_cfg)

    def width(self, modality: str) -> int:
        """Pooled feature width of a modality's backbone."""
        return int(self.backbones.encoder(modality).num_features)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """The scalar loss of one batch: s1 (B, 2, H, W), s2 (B, C2, H, W)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after every optimiser step; ``progress`` in [0, 1] is the share of training done."""

    # ------------------------------------------------------------------ helpers
    def modalities_trained(self) -> tuple[str, ...]:
        """Modalities whose backbone this objective trains (both unless an intra config picks some)."""
        views = getattr(self.cfg, "views", None)
        if views == "intra" or (views is None and hasattr(self.cfg, "modalities")):
            return tuple(m for m in MODALITIES if m in self.cfg.modalities)
        return MODALITIES

    def freeze_untrained(self) -> None:
        """Freeze the backbones and per-modality heads no loss term reaches (DDP needs every trained param used)."""
        for m in MODALITIES:
            if m in self.modalities_trained():
                continue
            parts = [self.backbones.encoder(m), getattr(self.backbones, f"{m}_adapter")]
            parts += [d[m] for d in self.children() if isinstance(d, nn.ModuleDict) and m in d]
            for part in parts:
                part.requires_grad_(False)

    def cross_views(self, s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        """The S1 and S2 views of a cross-modal step.

        :func:`~eoforge.ssl.augment.augment_pair` while training with ``augment`` set; the chips as
        they are otherwise (eval, or ``augment: null``).
        """
        cfg = getattr(self.cfg, "augment", None)
        if cfg is None or not self.training:
            return s1, s2
        return augment_pair(s1, s2, cfg)

    def view_pairs(self, s1: Tensor, s2: Tensor) -> list[tuple[str, Tensor, str, Tensor]]:
        """The (modality_a, view_a, modality_b, view_b) pairs the loss is averaged over.

        ``views: cross`` gives one pair, (S1, S2) of the same chips; ``views: intra`` gives two
        augmented views of each trained modality (:func:`~eoforge.ssl.augment.augment_view`).
        """
        if getattr(self.cfg, "views", "cross") == "cross":
            a, b = self.cross_views(s1, s2)
            return [("s1", a, "s2", b)]
        x = {"s1": s1, "s2": s2}
        return [
            (m, augment_view(x[m], self.cfg.augment, m == "s1"), m, augment_view(x[m], self.cfg.augment, m == "s1"))
            for m in self.modalities_trained()
        ]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for momentum (EMA) updates."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Target <- m * target + (1 - m) * online, parameters and floating buffers (BN stats) alike."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def cosine_momentum(start: float, progress: float) -> float:
    """BYOL / MoCo v3 schedule: m = 1 - (1 - m0) (cos(pi p) + 1) / 2, from m0 (p = 0) to 1 (p = 1)."""
    p = min(max(progress, 0.0), 1.0)
    return 1 - (1 - start) * (math.cos(math.pi * p) + 1) / 2


def mean_over_pairs(pairs: list[Any], fn: Callable[..., Tensor]) -> Tensor:
    """Mean of ``fn(*pair)`` over the view pairs."""
    return torch.stack([fn(*p) for p in pairs]).mean()
