"""How a fine-tuning arm trains: learning rates per part, chip augmentation, and LP-FT's two phases.

The same policy applies to every trained arm of the label-efficiency protocol, so the arms differ
only in where the backbone's weights come from:

- **Learning rates.** The head trains at ``optim.lr``. A *pretrained* backbone trains at
  ``optim.lr * optim.backbone_lr_scale`` (small steps keep what pretraining learned); a backbone
  from ``scratch`` has nothing to keep and trains at ``optim.lr`` like the rest of the model.
- **Augmentation** (``train.augment``): each training chip is flipped and rotated by a multiple of
  90 degrees at random: both sensors, the validity mask and the label map alike, so a chip's class,
  its label set and its per-pixel labels stay true. It is the geometric part of the standard
  fine-tuning recipe of SSL4EO-S12 and Dual-SimCLR (random crops would change a chip's majority
  class, so they are left out). Evaluation chips are never augmented.
- **LP-FT** (``mode: lp_ft``, Kumar et al., "Fine-Tuning can Distort Pretrained Features and
  Underperform Out-of-Distribution", ICLR 2022): the first ``optim.lp_fraction`` of the epochs train
  the head alone on the frozen backbone (its BatchNorm in eval mode); then everything trains, as in
  ``finetune``. The head starts the second phase aligned with the features, so the first full
  steps do not push random-head gradients into them; the paper finds it better than plain
  fine-tuning out of distribution, which is what a test region other than the training regions is.
  The step budget is the same as every other arm's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Batch columns with spatial dimensions last (H, W): flipped and rotated together.
SPATIAL_COLUMNS = ("s1", "s2", "valid", "label")


def param_groups(model: Any, lr: float, backbone_lr_scale: float, pretrained: bool, probe: bool) -> list[dict]:
    """AdamW parameter groups: the head's, then the backbone's (none for a frozen linear probe).

    The head trains at ``lr``; the backbone at ``lr * backbone_lr_scale`` if ``pretrained``, else at ``lr``.
    """
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if not probe:
        scale = backbone_lr_scale if pretrained else 1.0
        groups.append({"params": list(model.backbone.parameters()), "lr": lr * scale})
    return groups


def head_only_epochs(mode: str, lp_fraction: float, epochs: int) -> int:
    """Epochs at the start in which only the head trains (0 unless ``mode`` is ``lp_ft``).

    ``round(lp_fraction * epochs)``, at least 1, and at least one epoch left for the full phase.
    """
    if mode != "lp_ft" or epochs < 2:
        return 0
    return min(max(round(lp_fraction * epochs), 1), epochs - 1)


def set_backbone_trainable(model: Any, trainable: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics kept: see ``FinetuneModel.train``) or unfreeze the backbone."""
    if trainable:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        model._frozen = False
        model.train(model.training)
    else:
        model.freeze_backbone()


def augment_batch(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each chip of ``batch`` flipped and rotated at random, all of its :data:`SPATIAL_COLUMNS` alike.

    A chip is flipped left-right with probability 1/2, then rotated by ``k * 90`` degrees (``k``
    uniform in 0..3): the 8 symmetries of the square, equally likely.

    Args:
        batch: numpy columns; ``s1`` [B, 2, H, W], ``s2`` [B, 12, H, W], ``valid`` [B, 2, H, W] and
            ``label`` [B, H, W] (those present are transformed; square chips, H == W), others kept.
        rng: the draw (seeded by the caller: same seed, same augmentation).

    Returns:
        A new dict; untouched columns are the same arrays.
    """
    n = len(batch["chip_id"])
    ks = rng.integers(0, 4, size=n)
    flips = rng.random(n) < 0.5
    out = dict(batch)
    for col in SPATIAL_COLUMNS:
        if col not in batch:
            continue
        a = np.asarray(batch[col])
        if a.shape[-1] != a.shape[-2]:
            raise ValueError(f"augment_batch: column {col!r} is not square ({a.shape}); rotation needs H == W")
        out[col] = np.stack(
            [np.rot90(a[i][..., ::-1] if flips[i] else a[i], k=int(ks[i]), axes=(-2, -1)) for i in range(n)]
        )
    return out


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The augmentation draw of one training batch (reproducible, distinct per seed, epoch and step)."""
    return np.random.default_rng([seed, epoch, step, 0xA06])
