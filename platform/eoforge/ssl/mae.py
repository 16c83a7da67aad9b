"""Masked autoencoder for ViT backbones, one per modality.

References:
    - [0] He et al. "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
      https://arxiv.org/abs/2111.06377 (facebookresearch/mae ``models_mae.py``)

A random ``mask_ratio`` of each chip's patches is dropped; the ViT encoder sees the visible
patches (plus the class token) with their position embeddings; a small Transformer decoder gets
the encoded tokens plus a shared mask token at every masked position and predicts the pixels
of every patch (all bands, p x p). The loss is the mean squared error on the *masked* patches
only; with ``norm_pix_loss`` each target patch is first standardised by its own mean and
(unbiased) variance (+1e-6), as in [0]. SSL4EO-S12 uses mask ratio 0.7.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from eoforge.config.pretrain import MAEConfig, ModelConfig
from eoforge.errors import ConfigError
from eoforge.ssl.base import Objective, register_objective


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p * p * C), patches in row-major grid order, pixels (row, col, band)."""
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    return x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def random_masking(b: int, n: int, ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-chip random mask. Returns (kept token indices (B, n_keep), mask (B, N) with 1 = masked)."""
    n_keep = max(1, round(n * (1 - ratio)))
    order = torch.rand(b, n, device=device).argsort(dim=1)
    keep = order[:, :n_keep]
    mask = torch.ones(b, n, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MSE of [0] on masked patches. pred, target: (B, N, P); mask: (B, N), 1 = masked."""
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class _Decoder(nn.Module):
    def __init__(self, enc_dim: int, n_patches: int, patch_pixels: int, cfg: MAEConfig) -> None:
        super().__init__()
        d = cfg.decoder_dim
        self.embed = nn.Linear(enc_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, n_patches + 1, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(d, cfg.decoder_heads, qkv_bias=True) for _ in range(cfg.decoder_depth)])
        self.norm = nn.LayerNorm(d)
        self.pred = nn.Linear(d, patch_pixels)

    def forward(self, latent: Tensor, keep: Tensor, n: int) -> Tensor:
        x = self.embed(latent)  # (B, 1 + n_keep, d)
        b, d = x.shape[0], x.shape[-1]
        full = self.mask_token.expand(b, n, d).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.pos
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


@register_objective
class MAE(Objective):
    """MAE per modality on ViT backbones (``vit_s16`` or any timm ViT with a class token)."""

    name = "mae"
    description = "MAE: reconstruct masked patches (ratio 0.75, norm-pix MSE) per modality; ViT backbones only."

    def __init__(self, cfg: MAEConfig, model_cfg: ModelConfig) -> None:
        super().__init__(cfg, model_cfg)
        self.decoders = nn.ModuleDict()
        for m in ("s1", "s2"):
            vit = self.backbones.encoder(m)
            if not hasattr(vit, "patch_embed") or getattr(vit, "cls_token", None) is None:
                raise ConfigError(
                    f"objective.kind: mae needs a ViT backbone with a class token, not {model_cfg.backbone!r}"
                )
            if getattr(vit, "reg_token", None) is not None or getattr(vit, "dynamic_img_size", False):
                raise ConfigError(
                    f"objective.kind: mae does not support register tokens / dynamic sizes ({model_cfg.backbone!r})"
                )
            bands = len(getattr(self.backbones, f"{m}_bands"))
            p = vit.patch_embed.patch_size[0]
            self.decoders[m] = _Decoder(vit.embed_dim, vit.patch_embed.num_patches, p * p * bands, cfg)
        self.freeze_untrained()

    def encode_visible(self, m: str, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a random visible subset of patches. Returns (latent (B, 1 + n_keep, D), keep, mask)."""
        vit = self.backbones.encoder(m)
        tokens = vit.patch_embed(self.backbones.adapt(m, x))
        b, n, _ = tokens.shape
        pos = vit.pos_embed
        if getattr(vit, "no_embed_class", False):
            tokens, cls_pos = tokens + pos, 0
        else:
            tokens, cls_pos = tokens + pos[:, 1:], pos[:, :1]
        keep, mask = random_masking(b, n, self.cfg.mask_ratio, x.device)
        visible = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (vit.cls_token + cls_pos).expand(b, -1, -1)
        h = vit.norm(vit.blocks(vit.norm_pre(torch.cat([cls, visible], dim=1))))
        return h, keep, mask

    def _modality_loss(self, m: str, x: Tensor) -> Tensor:
        latent, keep, mask = self.encode_visible(m, x)
        p = self.backbones.encoder(m).patch_embed.patch_size[0]
        pred = self.decoders[m](latent, keep, mask.shape[1])
        return mae_loss(pred, patchify(x, p), mask, self.cfg.norm_pix_loss)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Mean over the trained modalities of the masked-patch loss."""
        x = {"s1": s1, "s2": s2}
        return torch.stack([self._modality_loss(m, x[m]) for m in self.modalities_trained()]).mean()
