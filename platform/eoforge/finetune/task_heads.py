"""Task heads on a pretrained :class:`~eoforge.models.dual.DualBackbone`.

- classification / multi-label: one ``Linear`` on the concatenated pooled features of both
  sensors (d1 + d2 -> K), as in the seeds' linear evaluation (ssl-methods.md §1.6). A linear
  probe standardises the features first (``BatchNorm1d`` without affine parameters, as MAE's
  linear probing does), so one lr grid fits every backbone whatever its feature scale;
- segmentation: a U-Net-style decoder over the backbones' intermediate feature maps
  (timm ``forward_intermediates``). At each level the S1 and S2 maps are concatenated; from
  the deepest level up, each step upsamples to the next level's size, concatenates the
  skip features and applies conv3x3-BN-ReLU; a 1x1 conv gives K logits, upsampled
  bilinearly to the input size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eoforge.models.dual import DualBackbone


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def intermediate_channels(backbone: nn.Module, in_chans: int, size: int = 64) -> list[int]:
    """Channel count of each map ``forward_intermediates`` returns (probed with one zero input)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        maps = backbone.forward_intermediates(torch.zeros(1, in_chans, size, size), intermediates_only=True)
    backbone.train(was_training)
    return [int(m.shape[1]) for m in maps]


class SegmentationDecoder(nn.Module):
    """Fuse per-level S1+S2 feature maps into per-pixel logits.

    Input: a list of L maps, shallow to deep, map l of shape (B, C_l, H_l, W_l).
    Output: (B, K, H, W) logits for an output size (H, W).
    """

    def __init__(self, channels: list[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.ModuleList(_conv_bn_relu(2 * width, width) for _ in channels[:-1])
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        """Logits (B, K, *out_size)."""
        x = self.lateral[-1](maps[-1])
        for level in range(len(maps) - 2, -1, -1):
            skip = self.lateral[level](maps[level])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[level](torch.cat([x, skip], dim=1))
        return F.interpolate(self.classifier(x), size=out_size, mode="bilinear", align_corners=False)


class FinetuneModel(nn.Module):
    """Backbone plus task head.

    ``forward(s1, s2)`` takes s1 (B, 2, H, W) and s2 (B, 12, H, W) and returns
    (B, K) logits for classification / multi-label, or (B, K, H, W) for segmentation.
    """

    def __init__(
        self, backbone: DualBackbone, task_kind: str, num_classes: int, chip_size: int = 64, probe: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.task_kind = task_kind
        self.chip_size = chip_size  # the size the segmentation decoder's channels were probed at
        if task_kind == "segmentation":
            c1 = intermediate_channels(backbone.s1, len(backbone.s1_bands), chip_size)
            c2 = intermediate_channels(backbone.s2, len(backbone.s2_bands), chip_size)
            if len(c1) != len(c2):
                raise ValueError(f"S1 and S2 backbones give {len(c1)} and {len(c2)} feature levels")
            self.head: nn.Module = SegmentationDecoder([a + b for a, b in zip(c1, c2, strict=True)], num_classes)
        else:
            width = backbone.s1.num_features + backbone.s2.num_features
            linear = nn.Linear(width, num_classes)
            self.head = nn.Sequential(nn.BatchNorm1d(width, affine=False), linear) if probe else linear

    def architecture(self) -> dict[str, Any]:
        """What :func:`eoforge.finetune.registered.build_model` needs to build this module again (JSON-able)."""
        if isinstance(self.head, SegmentationDecoder):
            classes, probe = self.head.classifier.out_channels, False
        else:
            probe = isinstance(self.head, nn.Sequential)  # BatchNorm1d (no affine) + Linear
            classes = (self.head[-1] if probe else self.head).out_features
        return {
            "kind": "finetune",
            "task": self.task_kind,
            "num_classes": int(classes),
            "chip_size": getattr(self, "chip_size", None),  # None: unpickled from before it was kept
            "probe": probe,
            "backbone": self.backbone.architecture(),
        }

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Task logits (see class docstring)."""
        if self.task_kind == "segmentation":
            m1 = self.backbone.s1.forward_intermediates(s1, intermediates_only=True)
            m2 = self.backbone.s2.forward_intermediates(s2, intermediates_only=True)
            maps = [torch.cat([a, b], dim=1) for a, b in zip(m1, m2, strict=True)]
            return self.head(maps, tuple(s2.shape[-2:]))
        return self.head(self.backbone(s1, s2))

    def freeze_backbone(self) -> None:
        """Linear probe: no gradients into the backbone, BatchNorm statistics frozen (see :meth:`train`)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self._frozen = True

    def train(self, mode: bool = True) -> FinetuneModel:
        """Like ``nn.Module.train``, but a frozen backbone stays in eval mode."""
        super().train(mode)
        if getattr(self, "_frozen", False):
            self.backbone.eval()
        return self
