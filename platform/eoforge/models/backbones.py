"""Backbone registry: eoforge names -> timm models for any band count.

- ``resnet18``, ``resnet50``: timm's, pooled width 512 / 2048.
- ``swin_t_dswin``: timm ``swin_tiny_patch4_window7_224`` in the D-Swin stream configuration of
  [CVPRW22] (ssl-methods.md §1.4): patch 4, embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24),
  window 7, MLP ratio 4, qkv bias, no absolute position embedding, patch norm, drop path 0.1;
  768-d output after LayerNorm + average pool. ``model.img_size`` sets the input size (224 there).
- ``vit_s16``: timm ``vit_small_patch16_224`` (ViT-S/16, 384-d); ``model.img_size`` and
  ``model.patch_size`` from config.

Any other timm model name is accepted as it is (``create_backbone("convnext_tiny", 12)``).

**Band-count rule.** Every backbone is built with ``in_chans`` = the sensor's band count (2, 12,
13, 202, ...). Weights are random unless ``pretrained=True``; then timm loads the 3-channel
ImageNet weights and adapts the first convolution / patch embedding with
``timm.models.adapt_input_conv``: the RGB kernel is repeated ceil(C / 3) times along the input
axis, truncated to C channels and scaled by 3 / C, so a constant input gives the activation it
gave on RGB. (1 channel: the RGB kernels are summed.) For many bands (hyperspectral, 202) a
:class:`~eoforge.models.spectral.SpectralAdapter` in front of the backbone is the alternative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
from torch import Tensor, nn

from eoforge.errors import ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
        name: eoforge name (config ``model.backbone``).
        timm_name: the timm architecture it builds.
        description: one line for ``eoforge list backbones``.
        family: ``cnn``, ``vit`` or ``swin`` (decides which size options apply).
        kwargs: fixed timm keyword arguments.
    """

    name: str
    timm_name: str
    description: str
    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (``eoforge list backbones``)."""
    _BACKBONES[spec.name] = spec
    return spec


register_backbone(BackboneSpec("resnet18", "resnet18", "ResNet-18, 512-d pooled features.", "cnn"))
register_backbone(BackboneSpec("resnet50", "resnet50", "ResNet-50, 2048-d pooled features.", "cnn"))
register_backbone(
    BackboneSpec(
        "swin_t_dswin",
        "swin_tiny_patch4_window7_224",
        "Swin-T in the D-Swin configuration (patch 4, window 7, depths 2-2-6-2, drop path 0.1), 768-d.",
        "swin",
        {
            "embed_dim": 96,
            "depths": (2, 2, 6, 2),
            "num_heads": (3, 6, 12, 24),
            "window_size": 7,
            "mlp_ratio": 4.0,
            "qkv_bias": True,
            "drop_rate": 0.0,
            "drop_path_rate": 0.1,
        },
    )
)
register_backbone(
    BackboneSpec(
        "vit_s16", "vit_small_patch16_224", "ViT-S/16 (384-d, class token); image/patch size from config.", "vit"
    )
)


def list_backbones() -> list[BackboneSpec]:
    """The registered backbones, by name."""
    return [_BACKBONES[k] for k in sorted(_BACKBONES)]


def backbone_family(name: str) -> str:
    """``cnn``, ``vit``, ``swin`` for registered names; guessed from the timm name otherwise."""
    if name in _BACKBONES:
        return _BACKBONES[name].family
    return "vit" if name.startswith(("vit", "deit")) else "swin" if name.startswith("swin") else "cnn"


def create_backbone(
    name: str,
    in_chans: int,
    *,
    img_size: int | None = None,
    patch_size: int | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """A timm backbone returning pooled features (num_classes=0). Shape: (B, C, H, W) -> (B, d).

    Args:
        name: a registered name (:func:`list_backbones`) or any timm model name.
        in_chans: input bands C.
        img_size: input size for ViT/Swin (ignored by CNNs).
        patch_size: ViT patch size (ignored by others).
        pretrained: load timm's 3-channel weights, adapted to ``in_chans`` (see module docstring).

    Raises:
        ConfigError: unknown name, or a size option that the architecture does not take.
    """
    spec = _BACKBONES.get(name)
    timm_name = spec.timm_name if spec else name
    if not timm.is_model(timm_name):
        close = [s for s in _BACKBONES if s.startswith(name[:3])] + timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise ConfigError(
            f"model.backbone: {name!r} is neither an eoforge backbone nor a timm model (similar: {close})"
        )
    kwargs: dict[str, Any] = dict(spec.kwargs) if spec else {}
    family = backbone_family(name)
    if img_size is not None and family in {"vit", "swin"}:
        kwargs["img_size"] = img_size
    if patch_size is not None:
        if family != "vit":
            raise ConfigError(f"model.patch_size: only ViT backbones take a patch size, not {name!r}")
        kwargs["patch_size"] = patch_size
    return timm.create_model(timm_name, pretrained=pretrained, in_chans=in_chans, num_classes=0, **kwargs)


def spatial_features(model: nn.Module, x: Tensor) -> Tensor:
    """The last feature map of a timm backbone as (B, C, h, w), whatever its family.

    CNNs return NCHW already; Swin returns NHWC (permuted); ViTs return tokens, whose prefix
    (class) tokens are dropped and whose patch tokens are laid back on their grid.
    """
    feats = model.forward_features(x)
    if feats.ndim == 4 and feats.shape[1] == getattr(model, "num_features", -1):
        return feats
    if feats.ndim == 4:  # NHWC (Swin)
        return feats.permute(0, 3, 1, 2).contiguous()
    if feats.ndim == 3:  # tokens (ViT)
        tokens = feats[:, getattr(model, "num_prefix_tokens", 0) :]
        grid = model.patch_embed.dynamic_feat_size(x.shape[-2:]) if hasattr(model, "patch_embed") else None
        if grid is None:
            side = int(tokens.shape[1] ** 0.5)
            grid = (side, side)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)
    raise ValueError(f"spatial_features: unexpected feature shape {tuple(feats.shape)}")
